"""`splatdreamer batch` on one machine: 4 toy prompts one run at a time against two at a time, and Ray's overhead.

    python scripts/bench_batch.py                                   # the measurement (about 15 min on 2 cores)
    python scripts/bench_batch.py --steps 3 --particles 1 --repeats 1 --overhead-runs 2   # a smoke run, ~1 min

(a) Concurrency: the toy preset on "a red ball", "a blue cube", "a green cone" and "a two-tone cube", as one
batch on a local Ray instance of `--slots` CPU slots (default 2), once with `--cpus-per-run` = all slots
(one run at a time, each with that many torch threads) and once with 1 (as many runs at a time as slots, one
thread each). The batches alternate (ABBA over `--repeats`) in one process on one Ray instance, which is
started before the first and is not timed; each batch is timed from the call of `batch()` to its return.

(b) Overhead per run, measured first: single-run batches one after another on the same instance, so no run waits
for a slot; the first starts a new worker process, the later ones reuse it.
From each run's manifest entry: `queued_seconds` (submission -> the task starting in a worker: Ray's
scheduling and, for the first, the worker process's start) and `startup_seconds` (submission -> the start of
the first step: the same plus importing splatdreamer in the worker, loading the prior and building the run).
The same run made twice in this process by `generate()` (cold: the first prior load here; then warm) gives the
part that is not Ray's.

Ray starts its workers at nice 15; this script gives them nice 0 (RAY_worker_niceness), as a `generate` has,
so that on a machine with other work the comparison is between runs, not between priorities. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red ball", "a blue cube", "a green cone", "a two-tone cube"]


def toy_config(steps: int, particles: int):
    from splatdreamer.presets import toy

    config = toy()
    config.steps = steps
    config.particles = particles
    config.output.preview_every = 0
    config.output.checkpoint_every = 0
    return config


def concurrency(args, folder: Path) -> dict[int, list[float]]:
    from splatdreamer.batch import batch

    config = toy_config(args.steps, args.particles)
    walls: dict[int, list[float]] = {1: [], args.slots: []}
    for i in range(args.repeats):
        for cpus in (args.slots, 1) if i % 2 == 0 else (1, args.slots):  # ABBA: a drift in load hits both
            start = time.perf_counter()
            entries = batch(PROMPTS, config, folder / f"c{cpus}-{i}", cpus_per_run=cpus, gpus_per_run=0)
            wall = time.perf_counter() - start
            assert all(e.status == "done" for e in entries), [(e.name, e.error) for e in entries]
            at_once = args.slots // cpus
            walls[at_once].append(wall)
            print(f"{at_once} at a time ({cpus} thread(s) each): {wall:.1f} s; per run "
                  + ", ".join(f"{e.seconds:.1f}" for e in entries), flush=True)  # fmt: skip
    return walls


def overhead(args, folder: Path) -> None:
    from splatdreamer.batch import BatchItem, batch
    from splatdreamer.generate import generate

    config = toy_config(args.steps, args.particles)
    rows = []
    for i in range(args.overhead_runs):
        (entry,) = batch([BatchItem("a red ball", seed=100 + i)], config, folder / f"o{i}", cpus_per_run=1,
                         gpus_per_run=0)  # fmt: skip
        rows.append((entry.queued_seconds, entry.startup_seconds))
        print(f"run {i + 1}: submission -> task start {entry.queued_seconds:.2f} s, -> first step "
              f"{entry.startup_seconds:.2f} s", flush=True)  # fmt: skip
    in_process = []  # generate() -> first step in this process: cold (first prior load here), then warm
    for i in range(2):
        first: list[float] = []  # when the first step started

        def callback(progress, first=first) -> None:
            if not first:
                first.append(time.time() - progress.seconds)

        called = time.time()
        generate(local_config(config, folder / f"local{i}"), callback=callback)
        in_process.append(first[0] - called)
    print(f"in this process (no Ray): generate() -> first step {in_process[0]:.2f} s cold, {in_process[1]:.2f} s warm")
    print("\n| run | submission -> task start | submission -> first step | the same in-process, no Ray |")
    print("|---|---|---|---|")
    print(f"| first (a new worker process) | {rows[0][0]:.2f} s | {rows[0][1]:.2f} s | {in_process[0]:.2f} s (cold) |")
    if len(rows) > 1:
        queued = statistics.median(r[0] for r in rows[1:])
        startup = statistics.median(r[1] for r in rows[1:])
        print(f"| later (the worker reused), median of {len(rows) - 1} | {queued:.2f} s | {startup:.2f} s | "
              f"{in_process[1]:.2f} s (warm) |")


def local_config(config, out_dir: Path):
    import copy

    local = copy.deepcopy(config)
    local.prompt, local.seed, local.output.out_dir = "a red ball", 99, out_dir
    return local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per run (the toy preset has 300)")
    parser.add_argument("--particles", type=int, default=4, help="particles per run (the toy preset's 4)")
    parser.add_argument("--slots", type=int, default=2, help="CPU slots of the local Ray instance")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of batches (ABBA order)")
    parser.add_argument("--overhead-runs", type=int, default=5, help="single-run batches for (b)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray
    import torch

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, ray "
          f"{ray.__version__}; toy preset, {args.steps} steps, {args.particles} particle(s)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ray.init(num_cpus=args.slots, include_dashboard=False, log_to_driver=False)
        print(f"Ray's local instance started in {time.perf_counter() - started:.1f} s (not in the times below)")
        try:
            overhead(args, Path(tmp))  # first, so that its first run starts a new worker process
            walls = concurrency(args, Path(tmp))
            one, many = statistics.mean(walls[1]), statistics.mean(walls[args.slots])
            print(f"\n(a) 4 runs: 1 at a time {one:.1f} s, {args.slots} at a time {many:.1f} s (means of "
                  f"{args.repeats}); wall-time ratio {many / one:.3f}", flush=True)  # fmt: skip
        finally:
            ray.shutdown()
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
