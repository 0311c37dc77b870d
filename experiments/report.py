"""What every summary.md says besides its tables: a reading generated from
the numbers, the model's size, and where the numbers came from.

`reading` compares two methods cell by cell against the seed spread;
`provenance` records the commit, package versions, CPU model, cores and
times, since bits depend on the CPU and the core count (BUILD_NOTES,
"Reproducibility").

May import: experiments.results.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import time
from collections.abc import Sequence

from experiments.results import Row, group_mean_std

_START = time.time()
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_NAMES = {"kmp": "KMP", "gmp": "GMP", "kgp": "KGP", "grad": "gradient pruning", "dense": "dense"}


def name(method: str) -> str:
    """A method's name in prose (KMP, gradient pruning, ...)."""
    return _NAMES.get(method, method)


def _cs(values: Sequence[float]) -> str:
    return ", ".join(f"{c:g}" for c in values)


def compare(rows: Sequence[Row], a: str, b: str, phase: str, by: Sequence[str] = ("compression",)
            ) -> str | None:
    """One sentence: where `a` is ahead of or behind `b` in top-1 (phase), by how
    much, and whether the gap exceeds the seed spread (the larger std of the
    two; with one seed there is none to compare with)."""
    stats = group_mean_std([r for r in rows if r["phase"] == phase], ("method", *by), "top1")
    keys = sorted({k[1:] for k in stats if k[0] == a} & {k[1:] for k in stats if k[0] == b})
    if not keys:
        return None
    ahead, behind, tied, beyond, n = [], [], [], [], None
    largest = 0.0
    for k in keys:
        (ma, sa, na), (mb, sb, nb) = stats[(a, *k)], stats[(b, *k)]
        n = min(na, nb) if n is None else min(n, na, nb)
        gap = 100 * (ma - mb)
        (ahead if gap > 0 else behind if gap < 0 else tied).append(k[-1])
        largest = max(largest, abs(gap))
        if min(na, nb) > 1 and abs(gap) > 100 * max(sa, sb):
            beyond.append(k[-1])
    label = {"compression": "c", "prune_epoch": "epoch"}.get(by[-1], by[-1])
    parts = []
    if ahead:
        parts.append(f"leads {name(b)} at {label} = {_cs(ahead)}")
    if behind:
        parts.append(f"trails {'it' if parts else name(b)} at {label} = {_cs(behind)}")
    if tied:
        parts.append(f"ties {'it' if parts else name(b)} at {label} = {_cs(tied)}")
    spread = ("with one seed there is no spread to compare the gaps with" if n == 1 else
              f"the gap exceeds the seed spread (n = {n}) at {label} = {_cs(beyond)}" if beyond else
              f"no gap exceeds the seed spread (n = {n})")
    return (f"{name(a)} {' and '.join(parts)} (top-1 gaps up to {largest:.2f} points); "
            f"{spread}.")


def reading(rows: Sequence[Row], pairs: Sequence[tuple[str, str]], by: Sequence[str] = ("compression",)
            ) -> str:
    """The summary's opening paragraph, generated from the rows."""
    out = []
    for phase, when in (("pruned", "Immediately after pruning"), ("finetuned", "After refinement")):
        sentences = [s for a, b in pairs if (s := compare(rows, a, b, phase, by))]
        if sentences:
            out.append(f"{when}, " + " ".join(sentences))
    dense = group_mean_std([r for r in rows if r["method"] == "dense"], ("phase",), "top1")
    if ("finetuned",) in dense:
        m, s, n = dense[("finetuned",)]
        out.append(f"The unpruned network fine-tuned for the same steps reaches "
                   f"{100 * m:.2f}{f' ± {100 * s:.2f}' if n > 1 else ''} % (the reference for "
                   "the refined numbers).")
    return " ".join(out)


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return (commit + (" (with uncommitted changes)" if dirty else "")) if commit else "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(timings: Sequence[Row] = ()) -> list[str]:
    """Markdown lines: commit, versions, CPU, cores, this invocation's times and
    the cells' wall times summed over every invocation (`timings` rows)."""
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        "## Provenance", "",
        f"- commit: {_git_commit()}",
        f"- Python {platform.python_version()}; {', '.join(versions)}",
        f"- CPU: {cpu_model()}; {cores} cores available to the run (of {os.cpu_count()})",
        f"- this invocation: {time.time() - _START:.0f} s wall, "
        f"{usage.ru_utime + usage.ru_stime:.0f} s CPU (a resumed or summarize-only run counts only "
        "its own part)",
        f"- the cells' wall times summed over every invocation (timings.csv): "
        f"{sum(float(r.get('seconds') or 0) for r in timings):.0f} s",
        "- bit-identical reruns need the same CPU model and core count (BUILD_NOTES, "
        "\"Reproducibility\")", ""]
