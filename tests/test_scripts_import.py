"""Every script in scripts/ imports: a measurement script whose sibling import or library name went stale fails
here, not the next time someone runs it (measure_high_t_pull.py imported a helper that had moved)."""

import pytest
from script_loader import SCRIPTS, load_script

NAMES = sorted(p.stem for p in SCRIPTS.glob("*.py"))


def test_the_scripts_are_found():
    assert {"bench_step", "bench_job", "measure_face_pull", "measure_high_t_pull"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # as when the script runs: its siblings are importable
    module = load_script(name)
    assert callable(getattr(module, "main", None)), f"scripts/{name}.py has no main()"
