"""scripts/bench_job.py: the README's job timed on this tree against another revision, alternating."""

import re
import subprocess
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0,
    reason="needs the git repository (not an unpacked source archive)",
)
def test_bench_job_runs_both_trees_and_reports_their_times(capsys):
    load_script("bench_job").main(["--against", "HEAD", "--rounds", "1", "--steps", "2", "--threads", "1"])
    out = capsys.readouterr().out
    runs = re.findall(r"round 1, (HEAD|this tree): wall ([\d.]+) s, loop ([\d.]+) s", out)
    assert [r[0] for r in runs] == ["HEAD", "this tree"], out
    assert all(float(wall) > float(loop) > 0 for _, wall, loop in runs), out  # the process outlasts its loop
    assert re.search(r"this tree is [\d.]+x as fast in wall time, [\d.]+x in the loop", out), out
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "/tree " not in worktrees  # the temporary checkout is gone


def test_bench_job_names_a_revision_git_does_not_know(capsys):
    with pytest.raises(SystemExit):
        load_script("bench_job").main(["--against", "no-such-revision-here", "--rounds", "1", "--steps", "2"])
    assert "git knows no commit 'no-such-revision-here'" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--rounds", "0"), ("--threads", "-1"), ("--steps", "0")])
def test_bench_job_refuses_counts_below_one(flag, value, capsys):
    with pytest.raises(SystemExit):
        load_script("bench_job").main(["--against", "HEAD", flag, value])
    assert f"{flag} must be 1 or more, not {value}" in capsys.readouterr().err
