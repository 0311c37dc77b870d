"""Paired timing for the benchmarks: seconds per call, alternating rounds.

May import: jax.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax


def call_timer(fn: Callable, *args, warmup: int, steps: int) -> Callable[[], float]:
    """A function timing one round: `warmup` untimed calls of fn(*args), then
    the mean seconds of `steps` timed ones (results awaited once at the end)."""
    def run() -> float:
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        for _ in range(steps):
            out = fn(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / steps
    return run


def alternating_medians(timers: Sequence[Callable[[], float]], repeats: int) -> list[float]:
    """Median seconds per call of each timer over `repeats` rounds that run
    the timers in turn (a, b, a, b, …), so that load drifts hit both alike."""
    times: list[list[float]] = [[] for _ in timers]
    for _ in range(repeats):
        for t, timer in zip(times, timers):
            t.append(timer())
    return [statistics.median(t) for t in times]
