"""`splatdreamer batch`: prompt files, the plan, the manifest and gallery (fast), and whole batches on a local
Ray instance of 2 CPU slots with the toy preset at a few steps (slow): reruns, a killed worker, Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
import torch

from splatdreamer.batch import (
    GALLERY,
    MANIFEST,
    BatchItem,
    RunEntry,
    continue_or_start,
    plan,
    read_manifest,
    read_prompts,
    write_gallery,
    write_manifest,
)
from splatdreamer.cli import main
from splatdreamer.config import prompt_slug, save_json
from splatdreamer.errors import ConfigError
from splatdreamer.io.lock import RunLock
from splatdreamer.io.ply import load_ply
from splatdreamer.presets import toy

ROOT = Path(__file__).resolve().parents[1]
# The toy preset at a run of seconds, on the 2 CPU slots of a local Ray instance.
TINY = ["--preset", "toy", "--steps", "4", "--particles", "1", "--splats.num-init", "128", "--output.preview-every",
        "0", "--output.turntable-frames", "2", "--output.preview-size", "16", "--num-cpus", "2"]  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- prompt files


def test_prompt_file_skips_blank_lines_and_comments(tmp_path):
    path = write(tmp_path / "prompts.txt", "# animals\na red ball\n\n   \n  a blue cube  \n# end\n")
    assert [(i.prompt, i.seed, i.source) for i in read_prompts(path)] == [
        ("a red ball", None, f"{path}:2"), ("a blue cube", None, f"{path}:5")]  # fmt: skip


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    """Found by a hostile-input pass: a file saved with a BOM (Windows editors) gave the prompt '\\ufeffa red ball'
    in a text file, and 'Unexpected UTF-8 BOM' for JSONL."""
    bom = "\ufeff".encode()
    (tmp_path / "p.txt").write_bytes(bom + b"a red ball\r\na blue cube\r\n")
    (tmp_path / "p.jsonl").write_bytes(bom + b'{"prompt": "a red ball"}\n')
    assert [i.prompt for i in read_prompts(tmp_path / "p.txt")] == ["a red ball", "a blue cube"]
    assert [i.prompt for i in read_prompts(tmp_path / "p.jsonl")] == ["a red ball"]


def test_jsonl_lines_give_their_own_seed_and_negative_prompt(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a red ball", "seed": 7, "negative_prompt": "blue"}\n'
                                       '# a comment\n{"prompt": "a cube"}\n')  # fmt: skip
    items = read_prompts(path)
    assert [(i.prompt, i.seed, i.negative_prompt) for i in items] == [("a red ball", 7, "blue"), ("a cube", None, None)]
    configs = plan(items, [0, 1], toy(), tmp_path / "out")
    assert [(c.output.out_dir.name, c.prompt, c.seed, c.negative_prompt) for c in configs] == [
        ("a_red_ball-s7", "a red ball", 7, "blue"), ("a_cube-s0", "a cube", 0, ""), ("a_cube-s1", "a cube", 1, "")
    ]


@pytest.mark.parametrize("prompt", ["", "   ", "\t"])
def test_a_blank_jsonl_prompt_is_refused_naming_its_line(tmp_path, capsys, prompt):
    """Found by a hostile-input pass: {"prompt": "   "} was planned as the run run-s0 and failed only there."""
    path = write(tmp_path / "p.jsonl", '{"prompt": "a red ball"}\n' + json.dumps({"prompt": prompt}) + "\n")
    assert batch_cli(tmp_path, "--prompts-file", str(path), *TINY) == 2
    err = capsys.readouterr().err
    assert f"splatdreamer: error: {path}:2: the prompt is blank; write one there" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^prompts\[0\] \('   '\): the prompt is blank"):
        plan([BatchItem("   ")], [0], toy(), tmp_path / "out")


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a", "seeds": 3}\n', "p.jsonl:1: unknown keys ['seeds']"),
        ('{"prompt": "a"}\n{"prompt": "b", \n', "p.jsonl:2 is not JSON"),
        ('["a red ball"]\n', 'p.jsonl:1 must be an object with a "prompt"'),
        ('{"prompt": "a", "seed": -1}\n', 'p.jsonl:1: "seed" must be a whole number'),
        ('{"prompt": "a", "seed": 1.5}\n', 'p.jsonl:1: "seed" must be a whole number'),
        ('{"prompt": 3}\n', '"prompt" must be a string'),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        read_prompts(write(tmp_path / "p.jsonl", text))
    assert message in str(info.value)


def test_two_lines_that_make_the_same_run_are_refused(tmp_path):
    path = write(tmp_path / "p.txt", "a red ball\nA red ball!\n")
    with pytest.raises(ConfigError) as info:
        plan(read_prompts(path), [0], toy(), tmp_path / "out")
    assert str(info.value) == (f"{path}:1 and {path}:2 both make the run a_red_ball-s0: a run folder's name keeps "
                               "only the prompt's letters and digits, lower-cased; give them different prompts or seeds")
    with pytest.raises(ConfigError, match=r"p.txt:2 both make the run a_red_ball-s0: the same prompt at the same seed"):
        plan(read_prompts(write(tmp_path / "p.txt", "a red ball\na red ball\n")), [0], toy(), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"^prompts\[0\] \('a red ball'\) and prompts\[2\] \('A red ball!'\) both "
                                          "make the run a_red_ball-s0: a run folder's name keeps only"):  # fmt: skip
        plan([BatchItem("a red ball"), BatchItem("a cube"), BatchItem("A red ball!")], [0], toy(), tmp_path / "out")


def test_the_messages_of_a_duplicate_run_say_its_true_cause(tmp_path):
    """Found by a hostile-input pass: --seeds 0 0 named the same line twice, and two long prompts that differ only
    after the folder name's 60-character cut were blamed on the prompts."""
    path = write(tmp_path / "p.txt", "a red ball\n")
    with pytest.raises(ConfigError, match="^--seeds names 0 more than once; give each seed once$"):
        plan(read_prompts(path), [0, 1, 0], toy(), tmp_path / "out")
    start = "a very detailed photograph of a ceramic mug on a wooden table, "
    path = write(tmp_path / "p.txt", f"{start}in the morning\n{start}at night\n")
    with pytest.raises(ConfigError) as info:
        plan(read_prompts(path), [0], toy(), tmp_path / "out")
    name = prompt_slug(start)[:60] + "-s0"
    assert str(info.value) == (
        f"{path}:1 and {path}:2 both make the run {name}: a run folder's name keeps the first 60 characters of the "
        "prompt, and these prompts differ only after that; make them differ earlier, e.g. by putting the words that "
        "tell them apart first"
    )


# ---------------------------------------------------------------- the command's bad input (no Ray started)


def batch_cli(tmp_path, *args: str) -> int:
    return main(["batch", "--out-dir", str(tmp_path / "out"), *args])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "none.txt does not exist; give a text file with one prompt per line"),
        ("", "holds no prompts (blank lines and # comments are skipped)"),
        ("# only a comment\n\n", "holds no prompts"),
    ],
)
def test_missing_or_empty_prompt_file_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "none.txt" if content is None else write(tmp_path / "empty.txt", content)
    assert batch_cli(tmp_path, "--prompts-file", str(path), *TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("splatdreamer: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_flag_exits_2_naming_it(tmp_path, capsys):
    path = write(tmp_path / "p.txt", "a red ball\n")
    with pytest.raises(SystemExit) as info:
        batch_cli(tmp_path, "--prompts-file", str(path), "--no-such-flag", "3")
    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "3"], "--seed names one run; a batch takes --seeds instead"),
        (["--output.out-dir", "x"], "--output.out-dir names one run; a batch takes --out-dir instead"),
        (["--out-dir", ""], "--out-dir is blank, which would be the current folder; give a folder, e.g. --out-dir "
                            "batches/first"),  # fmt: skip
        (["--steps", "0"], "--steps must be positive, got 0"),
        (["--seeds", "-1"], "--seeds must be whole numbers in [0, 9223372036854775806], got -1"),
        (["--cpus-per-run", "0"], "--cpus-per-run must be positive, got 0"),
        (["--address", "auto"], "--num-cpus sizes the local Ray instance"),
    ],
)
def test_bad_settings_exit_2_before_anything_is_written(tmp_path, capsys, flags, message):
    path = write(tmp_path / "p.txt", "a red ball\n")
    assert batch_cli(tmp_path, "--prompts-file", str(path), *TINY, *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_ray_batch_names_the_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    path = write(tmp_path / "p.txt", "a red ball\n")
    assert batch_cli(tmp_path, "--prompts-file", str(path), *TINY) == 2
    err = capsys.readouterr().err
    assert 'pip install "splatdreamer[ray]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


class FakeRay:
    """What `batch` asks of Ray before its runs start: a local instance of 2 CPU slots, or a cluster it cannot reach."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        if not self.reachable:
            raise ConnectionError("Failed to connect to the Ray cluster")

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize(
    "flags, reachable, message",
    [
        (["--num-cpus", "2", "--cpus-per-run", "64"], True, "--cpus-per-run 64: no Ray node has that many CPU slots"),
        (["--address", "ray://nowhere:10001"], False, "cannot start or reach the Ray cluster at --address ray://"),
    ],
)
def test_a_batch_ray_refuses_leaves_nothing_behind(tmp_path, capsys, monkeypatch, flags, reachable, message):
    """Found by a hostile-input pass: a refused batch left batch.jsonl and index.html in a new --out-dir."""
    import importlib

    monkeypatch.setattr(importlib.import_module("splatdreamer.batch"), "_import_ray", lambda: FakeRay(reachable))
    path = write(tmp_path / "p.txt", "a red ball\n")
    assert batch_cli(tmp_path, "--prompts-file", str(path), *TINY[:-2], *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_from_splatdreamer_import_batch_gives_the_function():
    code = ("import splatdreamer.batch\nfrom splatdreamer import batch, BatchItem, RunEntry\n"
            "assert callable(batch) and batch.__module__ == 'splatdreamer.batch', batch\nprint('ok')")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]


# ---------------------------------------------------------------- run folders, manifest, gallery


def test_a_folder_with_other_settings_is_refused_unless_overwrite(tmp_path):
    (run,) = plan([BatchItem("a red ball")], [0], toy(), tmp_path)
    assert continue_or_start(run, overwrite=False) is run  # nothing there yet: a new run
    save_json(run, run.output.out_dir / "config.json")
    assert continue_or_start(run, overwrite=False).resume == run.output.out_dir  # the same settings: continue
    longer = dataclasses.replace(run, steps=run.steps + 1)
    with pytest.raises(ConfigError) as info:
        continue_or_start(longer, overwrite=False)
    assert "holds a run with other settings (--steps 300 there, 301 now)" in str(info.value)
    assert "pass --overwrite to replace it" in str(info.value)
    replaced = continue_or_start(longer, overwrite=True)
    assert replaced.output.overwrite and replaced.resume is None and replaced.steps == 301


def test_manifest_round_trips_and_the_gallery_links_relative_files(tmp_path):
    for name in ("a_red_ball-s0/particle_0.ply", "a_red_ball-s0/particle_0.png", "a_red_ball-s0/particle_0.gif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    entries = [
        RunEntry("a_red_ball-s0", "a red ball", 0, "", status="done", seconds=12.3, files=["a_red_ball-s0/particle_0.ply"],
                 previews=["a_red_ball-s0/particle_0.png"], turntables=["a_red_ball-s0/particle_0.gif"]),
        RunEntry("a_b_c-s1", "a <b> & c", 1, "", status="failed", error="the prompt is <odd>"),
    ]  # fmt: skip
    write_manifest(tmp_path, entries)
    assert read_manifest(tmp_path) == {e.name: e for e in entries}
    assert [json.loads(line)["status"] for line in (tmp_path / MANIFEST).read_text().splitlines()] == ["done", "failed"]
    write_gallery(tmp_path, entries)
    page = (tmp_path / GALLERY).read_text()
    assert "a red ball" in page and "a &lt;b&gt; &amp; c" in page and "the prompt is &lt;odd&gt;" in page
    assert "seed 0 &middot; 12 s" in page and "1 of 2 runs done" in page
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(set(links)) == sorted(["a_red_ball-s0/particle_0.ply", "a_red_ball-s0/particle_0.png",
                                         "a_red_ball-s0/particle_0.gif"])  # fmt: skip
    assert all((tmp_path / link).is_file() for link in links)  # relative to the page
    assert not list(tmp_path.glob(".*.tmp"))  # written through atomic_write


def test_a_damaged_manifest_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    write(tmp_path / "out" / MANIFEST, '{"name": "a_red_ball-s0", "prompt"\n')
    assert batch_cli(tmp_path, "--prompts-file", str(write(tmp_path / "p.txt", "a red ball\n")), *TINY) == 2
    assert f"the manifest {tmp_path / 'out' / MANIFEST} cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("files", "abc", "line 1: \"files\" must be a list, got 'abc' (str)"),
        ("files", [1], "line 1: \"files\"[0] must be a string, got 1 (int)"),
        ("seed", "0", "line 1: \"seed\" must be a whole number, got '0' (str)"),
        ("attempts", None, "line 1: \"attempts\" must be a whole number, got None (NoneType)"),
        ("seconds", "12", "line 1: \"seconds\" must be a number, got '12' (str)"),
    ],
)
def test_a_manifest_value_of_the_wrong_type_is_named(tmp_path, capsys, key, value, message):
    """Found by a hostile-input pass: `"files": "abc"` in batch.jsonl gave a TypeError traceback, and other wrong
    types were written back as they were."""
    (tmp_path / "out").mkdir()
    line = {**dataclasses.asdict(RunEntry("a_red_ball-s0", "a red ball", 0, "", status="done")), key: value}
    before = write(tmp_path / "out" / MANIFEST, json.dumps(line) + "\n").read_text()
    with pytest.raises(ConfigError) as info:
        read_manifest(tmp_path / "out")
    assert f"the manifest {tmp_path / 'out' / MANIFEST} cannot be read ({message}); correct it, or delete it" in str(
        info.value)  # fmt: skip
    assert batch_cli(tmp_path, "--prompts-file", str(write(tmp_path / "p.txt", "a red ball\n")), *TINY) == 2
    err = capsys.readouterr().err
    assert f"({message}); correct it" in err and "Traceback" not in err
    assert (tmp_path / "out" / MANIFEST).read_text() == before


@pytest.mark.parametrize(
    "key, path",
    [("files", "../../etc/passwd"), ("previews", "/etc/passwd"), ("turntables", "a_red_ball-s0/../../x.gif")],
)
def test_a_manifest_path_outside_the_batch_folder_is_refused(tmp_path, capsys, key, path):
    """Found by a hostile-input pass: a hand-edited batch.jsonl could name any file on the machine in "files",
    "previews" or "turntables"; the batch checked it with is_file() and the gallery linked it."""
    (tmp_path / "out").mkdir()
    entry = RunEntry("a_red_ball-s0", "a red ball", 0, "", status="done", files=["a_red_ball-s0/particle_0.ply"])
    line = {**dataclasses.asdict(entry), key: ["a_red_ball-s0/particle_0.ply", path]}
    before = write(tmp_path / "out" / MANIFEST, json.dumps(line) + "\n").read_text()
    message = (f'line 1: "{key}"[1] must be a relative path inside the batch folder (RUN/FILE, without .. or a '
               f"leading /), got {path!r}); correct it, or delete it")  # fmt: skip
    with pytest.raises(ConfigError) as info:
        read_manifest(tmp_path / "out")
    assert message in str(info.value)
    assert batch_cli(tmp_path, "--prompts-file", str(write(tmp_path / "p.txt", "a red ball\n")), *TINY) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (tmp_path / "out" / MANIFEST).read_text() == before and not (tmp_path / "out" / GALLERY).exists()


def test_a_manifest_path_that_a_symbolic_link_leads_out_is_refused(tmp_path, capsys):
    """Found by a hostile-input pass: the check above reads the path's text, so a link inside the batch folder (a
    run's file, or a run folder, pointing elsewhere) passed it; is_file() followed it and the gallery linked it.
    Links that stay inside, a batch folder reached through a link, and a loop of links are no escape."""
    secret = write(tmp_path / "secret.txt", "mine")
    out = tmp_path / "out"
    (out / "a_red_ball-s0").mkdir(parents=True)
    (out / "a_red_ball-s0" / "particle_0.ply").symlink_to(secret)
    (out / "other-s0").symlink_to(tmp_path, target_is_directory=True)
    for file in ("a_red_ball-s0/particle_0.ply", "other-s0/secret.txt"):
        write_manifest(out, [RunEntry("a_red_ball-s0", "a red ball", 0, "", status="done", files=[file])])
        message = (f'line 1: "files"[0] must lie inside the batch folder, but {file!r} leads to {secret} through a '
                   "symbolic link); correct it, or delete it")  # fmt: skip
        with pytest.raises(ConfigError) as info:
            read_manifest(out)
        assert message in str(info.value)
    before = (out / MANIFEST).read_text()
    assert batch_cli(tmp_path, "--prompts-file", str(write(tmp_path / "p.txt", "a red ball\n")), *TINY) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (out / MANIFEST).read_text() == before and not (out / GALLERY).exists() and secret.read_text() == "mine"
    (out / "a_red_ball-s0" / "particle_0.ply").unlink()
    write(out / "a_red_ball-s0" / "particle_0.ply", "ply")
    (out / "a_red_ball-s0" / "copy.ply").symlink_to("particle_0.ply")
    (out / "a_red_ball-s0" / "loop.ply").symlink_to("loop.ply")
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)
    files = ["a_red_ball-s0/particle_0.ply", "a_red_ball-s0/copy.ply", "a_red_ball-s0/loop.ply"]
    write_manifest(out, [RunEntry("a_red_ball-s0", "a red ball", 0, "", status="done", files=files)])
    assert read_manifest(tmp_path / "alias")["a_red_ball-s0"].files == files


# ---------------------------------------------------------------- whole batches on a local Ray instance


@pytest.fixture
def ray_env(monkeypatch):
    """Ray's session files under a short temporary folder (its sockets' paths must stay under ~107 characters),
    and workers at the driver's priority: Ray starts them at nice 15, which on a machine busy with other
    jobs starves them (measured: 6 toy steps took 24 s instead of 2 s)."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    monkeypatch.setenv("RAY_worker_niceness", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    yield {**os.environ}
    import ray

    if ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def manifest(out: Path) -> dict[str, dict]:
    return {e["name"]: e for e in map(json.loads, (out / MANIFEST).read_text().splitlines())}


def run_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*-s*/**/*") if p.is_file()}


@pytest.mark.slow
def test_three_prompts_make_three_runs_and_a_rerun_does_nothing(tmp_path, ray_env, capsys):
    prompts = write(tmp_path / "prompts.txt", "a red ball\n# skipped\na blue cube\n\na green cone\n")
    out = tmp_path / "out"
    assert main(["batch", "--prompts-file", str(prompts), "--out-dir", str(out), *TINY]) == 0
    names = ["a_red_ball-s0", "a_blue_cube-s0", "a_green_cone-s0"]
    entries = manifest(out)
    assert list(entries) == names and {e["status"] for e in entries.values()} == {"done"}
    for name in names:
        assert entries[name]["files"] == [f"{name}/particle_0.ply"] and entries[name]["attempts"] == 1
        assert load_ply(out / name / "particle_0.ply")["means"].shape == (128, 3)
    page = (out / GALLERY).read_text()
    assert all(p in page for p in ("a red ball", "a blue cube", "a green cone")) and "3 of 3 runs done" in page
    text = capsys.readouterr().out
    assert "batch of 3 runs" in text and "3 done, 0 failed" in text and "done a_blue_cube-s0 in" in text
    # 2 CPU slots, 1 per run: never 3 runs at once (a task that waited on Ray once gave its slot away, and the
    # third run started beside the first two). Each run's span: from its start in a worker to its end.
    spans = [(e["queued_seconds"], e["queued_seconds"] + e["seconds"]) for e in entries.values()]
    assert all(start >= 0 and end > start for start, end in spans), spans
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2, spans

    before = run_files(out)
    assert len(before) >= 3 * 5  # .ply .png .gif config.json metrics.jsonl checkpoint.pt per run
    assert main(["batch", "--prompts-file", str(prompts), "--out-dir", str(out), *TINY]) == 0
    assert run_files(out) == before  # nothing was run again: no finished file rewritten
    assert "3 done, 0 failed" in capsys.readouterr().out
    assert {e["attempts"] for e in manifest(out).values()} == {1}


@pytest.mark.slow
def test_a_failing_run_fails_alone_and_the_exit_code_says_so(tmp_path, ray_env, capsys):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "a blue cube"}\n{"prompt": "a red ball", "seed": 2}\n')
    out = tmp_path / "out"
    (out / "a_blue_cube-s0").mkdir(parents=True)
    write(out / MANIFEST, "")  # an earlier batch's folder, which may hold a run folder of any state
    with RunLock(out / "a_blue_cube-s0"):  # a `generate` in this process uses that run's folder
        assert main(["batch", "--prompts-file", str(prompts), "--out-dir", str(out), *TINY]) == 1
    entries = manifest(out)
    failed = entries["a_blue_cube-s0"]
    assert failed["status"] == "failed" and "is in use by another splatdreamer run" in failed["error"]
    assert failed["attempts"] == 1  # an error of the run itself is not retried
    assert entries["a_red_ball-s2"]["status"] == "done"
    assert load_ply(out / "a_red_ball-s2" / "particle_0.ply")["means"].shape == (128, 3)
    text = capsys.readouterr().out
    assert "1 done, 1 failed" in text and "failed runs:\n  a_blue_cube-s0: " in text


def start_batch(tmp_path: Path, env: dict, steps: int) -> tuple[subprocess.Popen, Path]:
    """`splatdreamer batch` in its own process, as a user starts it, on one prompt of `steps` steps."""
    prompts = write(tmp_path / "p.txt", "a red ball\n")
    out = tmp_path / "out"
    args = [str(Path(sys.executable).parent / "splatdreamer"), "batch", "--prompts-file", str(prompts), "--out-dir", str(out),
            *TINY, "--steps", str(steps), "--output.checkpoint-every", "5"]  # fmt: skip
    # Ctrl-C must reach it even when pytest runs as a background job (CI), whose shell ignores SIGINT: an
    # ignored SIGINT is inherited, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    return proc, out


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 240) -> tuple[int, int]:
    """(the worker's pid, the step of a checkpoint it saved) once the run has saved one after step 0."""
    checkpoint = out / "a_red_ball-s0" / "checkpoint.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if checkpoint.exists() and (out / MANIFEST).exists():
            pid = manifest(out)["a_red_ball-s0"]["pid"]
            step = torch.load(checkpoint, weights_only=True)["step"]
            if pid is not None and step > 0:
                return pid, step
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint in {timeout} s: {proc.communicate()}")


def steps_in_metrics(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "a_red_ball-s0" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_continues_from_its_checkpoint(tmp_path, ray_env):
    proc, out = start_batch(tmp_path, ray_env, steps=40)
    pid, step = wait_for_checkpoint(proc, out)
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    entry = manifest(out)["a_red_ball-s0"]
    assert entry["status"] == "done" and entry["attempts"] == 2 and entry["pid"] != pid
    assert entry["resumed_from"] >= step > 0 and entry["resumed_from"] % 5 == 0  # from a checkpoint, not step 0
    assert "continued from step" in stdout
    assert steps_in_metrics(out) == list(range(1, 41))  # the steps after the checkpoint were run once more
    assert load_ply(out / "a_red_ball-s0" / "particle_0.ply")["means"].shape[0] > 0


@pytest.mark.slow
def test_ctrl_c_leaves_a_manifest_the_same_command_continues(tmp_path, ray_env):
    proc, out = start_batch(tmp_path, ray_env, steps=40)
    _, step = wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-3000:]
    assert "1 run(s) stopped" in stderr and "Run the same command again to continue them" in stderr
    stopped = manifest(out)["a_red_ball-s0"]
    assert stopped["status"] == "pending"
    saved = torch.load(out / "a_red_ball-s0" / "checkpoint.pt", weights_only=True)["step"]
    assert saved >= step and not (out / "a_red_ball-s0" / "particle_0.ply").exists()

    proc, _ = start_batch(tmp_path, ray_env, steps=40)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    entry = manifest(out)["a_red_ball-s0"]
    assert entry["status"] == "done" and entry["attempts"] == 2 and entry["resumed_from"] == saved
    assert steps_in_metrics(out) == list(range(1, 41))


def test_init_ray_keeps_the_clis_sigterm_handler(monkeypatch):
    """ray.init installs a SIGTERM handler that exits at once; batch restores the CLI's, which turns SIGTERM into
    an interrupt so the driver stops the runs with checkpoints (found by a hostile-input pass: `timeout` left
    every run 'running', without a checkpoint)."""
    import signal
    import types

    from splatdreamer.batch import _init_ray

    def ours(signum, frame):
        raise KeyboardInterrupt

    def rays(signum, frame):
        raise SystemExit(signum)

    fake = types.SimpleNamespace(init=lambda **kwargs: signal.signal(signal.SIGTERM, rays))
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        _init_ray(fake, None, 1)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    "limit, address, ray_variable, expected",
    [
        (8 * 1024**3, None, None, 1024**3),  # an eighth of an 8 GiB address space
        (512 * 1024**2, None, None, 100 * 1024**2),  # never under the floor Ray accepts
        (8 * 1024**3, None, "2000000000", None),  # Ray's own variable decides
        (8 * 1024**3, "ray://head:10001", None, None),  # a cluster's store is the cluster's
        (None, None, None, None),  # no limit: Ray's default
    ],
)
def test_a_local_object_store_is_sized_to_an_address_space_limit(monkeypatch, limit, address, ray_variable, expected):
    """Under `ulimit -v` Ray's default store (30 % of the machine's memory, mapped into every worker) cannot be
    mapped, workers die as they start and the batch waited silently (the end-to-end test below)."""
    import resource

    from splatdreamer.batch import _init_ray

    soft = resource.RLIM_INFINITY if limit is None else limit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    monkeypatch.delenv("RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES", raising=False)
    if ray_variable is not None:
        monkeypatch.setenv("RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES", ray_variable)
    seen = {}
    _init_ray(types.SimpleNamespace(init=lambda **kwargs: seen.update(kwargs)), address, 2)
    assert seen.get("object_store_memory") == expected


@pytest.mark.slow
def test_a_batch_under_an_address_space_limit_runs(tmp_path, ray_env):
    """Before the store was sized to the limit, this batch printed nothing and waited until it was killed."""
    prompts = write(tmp_path / "prompts.txt", "a red ball\n")
    out = tmp_path / "out"
    cli = Path(sys.executable).parent / "splatdreamer"
    command = shlex.join([str(cli), "batch", "--prompts-file", str(prompts), "--out-dir", str(out), *TINY])
    env = {**ray_env, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES", None)
    done = subprocess.run(["bash", "-c", f"ulimit -v 8000000 && exec {command}"], env=env, capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest(out)["a_red_ball-s0"]["status"] == "done"
    assert load_ply(out / "a_red_ball-s0" / "particle_0.ply")["means"].shape[0] > 0


def test_batch_refuses_wrong_python_arguments_before_ray_starts(tmp_path, monkeypatch):
    """Found by a hostile-input pass: batch("ab", ...) ran one generation per character, seeds=3 and a seed of -1
    failed late or deep inside."""
    import importlib

    B = importlib.import_module("splatdreamer.batch")
    monkeypatch.setattr(B, "_import_ray", lambda: pytest.fail("Ray was started"))
    config = toy()
    cases = [
        (("a red ball", config), {}, "prompts must be a list of prompts \\(str or BatchItem\\), got str"),
        (([None], config), {}, "prompts must be str or BatchItem, got NoneType"),
        ((["a red ball"], {"steps": 2}), {}, "batch\\(\\) takes a GenerateConfig, got dict"),
        ((["a red ball"], config), {"seeds": 3}, "seeds must be a list of whole numbers, got 3"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            B.batch(*args, tmp_path / "out", **kwargs)
    with pytest.raises(ConfigError, match=r"^prompts\[0\] \('a red ball'\): the seed must be a whole number in \[0, "):
        plan([BatchItem("a red ball", seed=-1)], (0,), config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "item, message",
    [
        (BatchItem(3), "prompts[1] (3): BatchItem.prompt must be a string, got 3 (int)"),
        (BatchItem("a red ball", seed="x"), "prompts[1] ('a red ball'): BatchItem.seed must be a whole number, got 'x'"),
        (BatchItem("a red ball", negative_prompt=5),
         "prompts[1] ('a red ball'): BatchItem.negative_prompt must be a string, got 5"),
    ],
)
def test_a_batch_item_of_the_wrong_type_is_named(tmp_path, monkeypatch, item, message):
    """Found by a hostile-input pass: BatchItem(prompt=3) failed with an AttributeError inside plan(), and a
    negative_prompt of 5 was planned into a run."""
    import importlib

    B = importlib.import_module("splatdreamer.batch")
    monkeypatch.setattr(B, "_import_ray", lambda: None)  # plan() refuses it before Ray is asked for anything
    items = [BatchItem("a blue cube"), item]
    with pytest.raises(ConfigError) as info:
        plan(items, [0], toy(), tmp_path / "out")
    assert str(info.value).startswith(message)
    with pytest.raises(ConfigError) as info:
        B.batch(items, toy(), tmp_path / "out")
    assert str(info.value).startswith(message)
    assert not (tmp_path / "out").exists()


def test_batch_refuses_a_folder_of_someone_elses_files(tmp_path, monkeypatch):
    """Found by a hostile-input pass: a batch into a folder holding the user's index.html replaced it with the
    gallery. A folder without a manifest may hold only what a batch writes (run folders, its gallery)."""
    import importlib

    from splatdreamer.errors import RunFolderError

    B = importlib.import_module("splatdreamer.batch")
    monkeypatch.setattr(B, "_import_ray", lambda: None)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my homepage</h1>")
    with pytest.raises(RunFolderError, match=f"--out-dir {site} holds files that are not a batch's \\(index.html\\)"):
        B.batch(["a red ball"], toy(), site)
    assert (site / "index.html").read_text() == "<h1>my homepage</h1>" and len(list(site.iterdir())) == 1
    # What a batch whose manifest was deleted leaves behind is its own: it continues there.
    ours = tmp_path / "ours"
    (ours / "a_red_ball-s0").mkdir(parents=True)
    save_json(toy(), ours / "a_red_ball-s0" / "config.json")
    write_gallery(ours, [RunEntry("a_red_ball-s0", "a red ball", 0, "")])
    (ours / ".splatdreamer.lock").write_text("")
    B._check_foreign_files(ours)
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="\\(notes.txt\\)"):
        B._check_foreign_files(ours)
