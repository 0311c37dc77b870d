"""Paired timing for the benchmarks: seconds per call, alternating rounds,
measurements run as fresh subprocesses, and the load line they report.

May import: jax.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
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


def load_average() -> str:
    """The machine's load, printed beside every measurement."""
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def write_json(path: str, obj) -> None:
    """Writes a benchmark's results for `benchmarks.suite` (whole or not at all)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_json(cmd: list[str], env: dict[str, str], cwd) -> dict:
    """Runs one measurement subprocess; returns the JSON of its last stdout line."""
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
