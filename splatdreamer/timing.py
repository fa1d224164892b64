"""Per-part timing of a generation step, for `scripts/bench_step.py`.

`Generation.train_step(timer)` wraps each part of a step in `timer.part(name)`. The loop itself passes
`NO_TIMER`, whose parts cost nothing. `PartTimer` records CUDA events on a GPU, so timing adds no
host-device synchronisation inside the step; `read()` synchronises once and returns the milliseconds.
On a CPU it uses `time.perf_counter`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import ContextManager, Protocol

import torch


class Timer(Protocol):
    """What `train_step` and `score_distillation` need of a timer."""

    def part(self, name: str) -> ContextManager[None]: ...


class NoTimer:
    """The timer the generation loop uses: every part is a no-op."""

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        yield


NO_TIMER = NoTimer()


class PartTimer:
    """Accumulates wall time per named part over one or more steps; parts may repeat within a step."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._events: list[tuple[str, object, object]] = []

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._events.append((name, start, end))

    def read(self) -> dict[str, float]:
        """Milliseconds per part since the last `read` (synchronises the GPU once), in first-seen order."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for name, start, end in self._events:
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1e3
            totals[name] = totals.get(name, 0.0) + ms
        self._events.clear()
        return totals
