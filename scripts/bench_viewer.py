"""The live viewer's cost on the toy preset: the same run with and without `LiveViewer`, alternating, in one process.

    OMP_NUM_THREADS=1 python scripts/bench_viewer.py --steps 100 --repeats 2

Each run is the toy preset ("a red ball", 4 particles) for `--steps` steps with its own fresh folder; the time
is the loop's (Progress.seconds at the last step: the viewer's server start at the first step is included,
the prior's loading and the final files are not). Runs alternate without / with the viewer so a change in the
machine's load hits both alike (in ABBA order). On a loaded machine the wall time swings with the other jobs,
so it also prints what depends less on them: the process's CPU time over the loop (all threads: the training,
the viewer's thread, viser's server), the seconds the run spent in the callback (the training thread's share)
and the CPU seconds of the viewer's own thread. No browser is connected: the cost measured is the run's side
of the viewer (copying the particles, activating them and handing them to viser on the viewer's thread).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from splatdreamer.generate import generate
from splatdreamer.presets import PRESETS
from splatdreamer.viewer import LiveViewer


def run(steps: int, folder: Path, viewer: LiveViewer | None) -> tuple[float, float]:
    """(loop seconds, CPU seconds of the whole process, all threads, from step 1 to the last step)."""
    config = PRESETS["toy"]()
    config.prompt = "a red ball"
    config.steps = steps
    config.output.out_dir = folder
    config.output.preview_every = 0
    config.output.checkpoint_every = 0
    config.output.turntable_frames = 2
    seen = []  # (Progress, process CPU seconds), taken before the viewer's callback runs

    def callback(progress) -> None:
        seen.append((progress, time.process_time()))
        if viewer is not None:
            viewer(progress)

    generate(config, callback=callback)
    return seen[-1][0].seconds, seen[-1][1] - seen[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--every", type=int, default=10, help="the viewer's update interval (its default)")
    parser.add_argument("--port", type=int, default=8321)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"without": [], "with": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for kind in ("without", "with") if i % 2 == 0 else ("with", "without"):  # ABBA: drifts cancel
                live = LiveViewer(port=args.port, every=args.every) if kind == "with" else None
                try:
                    seconds, cpu_seconds = run(args.steps, Path(tmp) / f"{kind}_{i}", live)
                finally:
                    if live is not None:
                        live.close()
                times[kind].append(seconds)
                cpu[kind].append(cpu_seconds)
                if live is not None:
                    print(f"repeat {i}: the viewer sent {live.updates} particle updates; "
                          f"{live.callback_seconds * 1000:.0f} ms in its callback on the training thread, "
                          f"{live.worker_seconds * 1000:.0f} ms CPU on its own thread", flush=True)  # fmt: skip
            print(f"repeat {i}: loop without {times['without'][-1]:.2f} s ({cpu['without'][-1]:.2f} s CPU), "
                  f"with {times['with'][-1]:.2f} s ({cpu['with'][-1]:.2f} s CPU)", flush=True)  # fmt: skip

    def summary(what: dict[str, list[float]]) -> str:
        pairs = [w / o for w, o in zip(what["with"], what["without"])]
        return (f"without {sum(what['without']):.1f} s, with {sum(what['with']):.1f} s: ratio of the sums "
                f"{sum(what['with']) / sum(what['without']):.3f}, median of the pairs' ratios "
                f"{statistics.median(pairs):.3f} (pairs: {', '.join(f'{r:.3f}' for r in pairs)})")

    print(f"{args.steps} steps x {args.repeats} pairs, wall: {summary(times)}")
    print(f"{args.steps} steps x {args.repeats} pairs, process CPU: {summary(cpu)}")


if __name__ == "__main__":
    main()
