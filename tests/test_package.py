"""The package's front door: the names `from splatdreamer import ...` gives, and the README's Python example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Makes the toy preset a run of seconds; the README's code runs after it exactly as written.
SHRINK_TOY = """
import splatdreamer.presets as presets
_toy = presets.toy
def _small_toy():
    config = _toy()
    config.steps, config.particles, config.splats.num_init = 2, 1, 64
    config.output.preview_every, config.output.preview_size, config.output.turntable_frames = 0, 16, 2
    return config
presets.toy = _small_toy
"""
CHECK = """
assert callable(generate) and callable(render), (generate, render)
assert [p.name for p in result.files] == ["particle_0.ply"] and result.files[0].exists(), result.files
print("README OK", result.run_dir)
"""


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README holds one Python example"
    return blocks[0]


def run_python(code: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_readme_python_example_runs_as_written(tmp_path):
    """A fresh interpreter, as a user's: the import order there is what used to make `generate` a module."""
    snippet = readme_python()
    assert "from splatdreamer import GenerateConfig, generate, load_ply, save_ply, render" in snippet
    done = run_python(SHRINK_TOY + snippet + CHECK, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "README OK runs/a_blue_cube" in done.stdout
    assert (tmp_path / "runs" / "a_blue_cube" / "particle_0.ply").is_file()


@pytest.mark.slow
def test_readme_python_example_runs_unchanged(tmp_path):
    done = run_python(readme_python() + CHECK.replace('["particle_0.ply"]', '[f"particle_{k}.ply" for k in range(4)]'),
                      tmp_path, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_public_names_are_the_functions_whatever_was_imported_first():
    """Importing the submodules `splatdreamer.generate` / `splatdreamer.render` first must not hide the functions."""
    code = (
        "from splatdreamer.generate import Generation\n"
        "from splatdreamer.render import resolve_backend\n"
        "import splatdreamer\n"
        "from splatdreamer import generate, render, GenerateConfig\n"
        "assert callable(generate) and generate.__module__ == 'splatdreamer.generate', generate\n"
        "assert callable(render) and render.__module__ == 'splatdreamer.render', render\n"
        "assert splatdreamer.generate is generate and splatdreamer.render is render\n"
    )
    done = run_python(code, ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
