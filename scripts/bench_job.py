"""Time the README's job on this working tree against another revision, side by side, alternating.

    python scripts/bench_job.py --against HEAD~1                     # the README's red ball, 2 rounds
    python scripts/bench_job.py --against 4cea207 --prompt "a ball" --steps 1000 --rounds 1

The other revision is checked out into a temporary git worktree; each round runs `splatdreamer generate --preset
toy` once from it and once from this tree (in that order), each process importing the package from its own tree,
with the same thread count. The table gives each run's wall time (the process, prior loading included) and its
loop time (the last `seconds` of its metrics.jsonl), then the ratio of the means. Run it alone on the machine:
both trees share its cores in turn, never at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = (
    "import sys, splatdreamer; from pathlib import Path; "
    "assert Path(splatdreamer.__file__).is_relative_to(Path.cwd()), splatdreamer.__file__; "
    "from splatdreamer.cli import main; sys.exit(main())"
)


def run_job(tree: Path, out_dir: Path, prompt: str, steps: int | None, threads: int) -> tuple[float, float]:
    """Run the toy preset's job from `tree` -> (wall seconds, loop seconds)."""
    args = ["generate", "--preset", "toy", "--prompt", prompt, "--output.out-dir", str(out_dir)]
    if steps is not None:
        args += ["--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, *args], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the job failed in {tree}:\n{done.stderr[-2000:]}")
    loop = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])["seconds"]
    return wall, loop


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the revision to compare with (a commit, tag or branch)")
    ap.add_argument("--prompt", default="a red ball")
    ap.add_argument("--steps", type=int, default=None, help="the preset's own 300 unless given")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for name in ("rounds", "threads", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    known = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", f"{args.against}^{{commit}}"],
                           capture_output=True)  # fmt: skip
    if known.returncode != 0:
        ap.error(f"git knows no commit {args.against!r} in {ROOT}; give a commit, tag or branch of this repository")

    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), args.against],
                       check=True)  # fmt: skip
        try:
            times: dict[str, list[tuple[float, float]]] = {args.against: [], "this tree": []}
            for r in range(args.rounds):
                for name, tree in ((args.against, other), ("this tree", ROOT)):
                    out = Path(tmp) / f"{len(times[name])}-{name.replace('/', '_')}"
                    times[name].append(run_job(tree, out, args.prompt, args.steps, args.threads))
                    wall, loop = times[name][-1]
                    print(f"round {r + 1}, {name}: wall {wall:.1f} s, loop {loop:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    (base_wall, base_loop), (ours_wall, ours_loop) = (
        (statistics.mean(w for w, _ in t), statistics.mean(lp for _, lp in t)) for t in times.values()
    )
    print(f"| tree | wall s (mean of {args.rounds}) | loop s |\n|---|---|---|")
    print(f"| {args.against} | {base_wall:.1f} | {base_loop:.1f} |\n| this tree | {ours_wall:.1f} | {ours_loop:.1f} |")
    print(f"this tree is {base_wall / ours_wall:.2f}x as fast in wall time, {base_loop / ours_loop:.2f}x in the loop")


if __name__ == "__main__":
    main()
