"""Time the reference rasterizer on the CPU: forward, and forward + backward, as a markdown table.

    python scripts/bench_render.py                 # the default sizes, 1 thread and all threads
    python scripts/bench_render.py --repeats 9

Scenes are `splats.random_ball` particles (generation's initial state: a ball of radius 0.5, opacity
0.1 unless stated, SH degree 0) seen from `cameras.sample` with the default ranges, so the numbers are
those of a generation step. Each time is the fastest of `repeats` runs after one warm-up run (the
fastest, not the mean: other processes on a shared machine only ever add time).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch
import tyro

from splatdreamer import cameras as cams
from splatdreamer import splats as S
from splatdreamer.render import render


@dataclass(frozen=True)
class Scene:
    size: int
    num: int
    cameras: int
    opacity: float = 0.1


DEFAULT_SCENES = (
    Scene(64, 1_000, 1),
    Scene(64, 10_000, 1),
    Scene(64, 10_000, 1, opacity=0.9),
    Scene(64, 10_000, 4),
    Scene(64, 20_000, 8),
    Scene(128, 10_000, 1),
    Scene(256, 10_000, 1),
)


@dataclass
class BenchConfig:
    repeats: int = 5
    """Timed runs per entry (the fastest is reported)."""
    threads: tuple[int, ...] = ()
    """torch thread counts to time; empty = 1 and all of this machine's cores."""
    seed: int = 0
    """Seed of the particles and cameras."""


def time_scene(scene: Scene, repeats: int, seed: int) -> tuple[float, float]:
    """Fastest forward and fastest forward + backward, in seconds."""
    g = torch.Generator().manual_seed(seed)
    splats = S.random_ball(scene.num, init_opacity=scene.opacity, generator=g)
    views = cams.sample(scene.cameras, cams.DEFAULT_RANGES, scene.size, scene.size, g)
    background = torch.ones(3)
    forward, both = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.no_grad():
            render(splats, views, background, backend="reference")
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        out = render(splats, views, background, backend="reference")
        (out.rgb.sum() + out.alpha.sum()).backward()
        both.append(time.perf_counter() - start)
    return min(forward[1:]), min(both[1:])


def main(config: BenchConfig) -> None:
    threads = config.threads or (1, os.cpu_count() or 1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print()
    print("| image | Gaussians | cameras | opacity | threads | forward (no grad) | forward + backward |")
    print("|---|---|---|---|---|---|---|")
    for scene in DEFAULT_SCENES:
        for n in threads:
            torch.set_num_threads(n)
            fwd, both = time_scene(scene, config.repeats, config.seed)
            print(
                f"| {scene.size}x{scene.size} | {scene.num:,} | {scene.cameras} | {scene.opacity} | {n} "
                f"| {fwd * 1000:.0f} ms | {both * 1000:.0f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
