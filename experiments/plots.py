"""Figures of the experiments (matplotlib, Agg backend, PNG, atomic writes).

May import: matplotlib, numpy, experiments.results.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.results import Row, atomic_write_bytes, group_mean_std  # noqa: E402

_METHOD_STYLE = {
    "kmp": dict(color="tab:red", marker="o"),
    "gmp": dict(color="tab:blue", marker="s", linestyle="--"),
    "kgp": dict(color="tab:orange", marker="^"),
    "grad": dict(color="tab:green", marker="v", linestyle="--"),
    "random": dict(color="tab:gray", marker="x", linestyle=":"),
}


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _methods(rows: Sequence[Row]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["method"] not in seen and r["method"] != "dense":
            seen.append(r["method"])
    return seen


def accuracy_vs_compression(rows: Sequence[Row], path: str, title: str = "") -> None:
    """Top-1 vs compression, pruned and after refinement (the paper's Fig. 1)."""
    phases = [p for p in ("pruned", "finetuned") if any(r["phase"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4), squeeze=False)
    stats = group_mean_std(rows, ("phase", "method", "compression"), "top1")
    dense = group_mean_std([r for r in rows if r["method"] == "dense"], ("phase",), "top1")
    for ax, phase in zip(axes[0], phases):
        for method in _methods(rows):
            pts = sorted((c, s) for (p, m, c), s in stats.items() if p == phase and m == method)
            if not pts:
                continue
            x = [c for c, _ in pts]
            y = [100 * s[0] for _, s in pts]
            e = [100 * s[1] for _, s in pts]
            ax.errorbar(x, y, yerr=e, label=method, capsize=3, **_METHOD_STYLE.get(method, {}))
        if ("dense",) in dense:
            ax.axhline(100 * dense[("dense",)][0], color="k", lw=0.8, label="dense")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression ratio")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title({"pruned": "immediately after pruning", "finetuned": "after refinement"}[phase])
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def overlap_vs(rows: Sequence[Row], x: str, path: str, xlabel: str, log2: bool = False) -> None:
    """Jaccard overlap of two methods' kept sets vs `x`, one line per pair (and per
    compression unless x is the compression); error bars: std over seeds."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    lines = sorted({(r["pair"], None if x == "compression" else r["compression"]) for r in rows},
                   key=lambda k: (k[0], k[1] or 0))
    for pair, c in lines:
        sel = [r for r in rows if r["pair"] == pair and (c is None or r["compression"] == c)]
        stats = group_mean_std(sel, (x,), "jaccard")
        pts = sorted((k[0], s) for k, s in stats.items())
        ax.errorbar([p for p, _ in pts], [s[0] for _, s in pts], yerr=[s[1] for _, s in pts],
                    marker="o", capsize=3, label=pair if c is None else f"{pair} c={c:g}")
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Jaccard overlap of kept parameters")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def spectrum(eigenvalues: np.ndarray, path: str, title: str = "") -> None:
    """Koopman eigenvalues in the complex plane with the unit circle; λ≈1 marked."""
    lam = np.asarray(eigenvalues)
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="k", lw=0.8)
    ax.scatter(lam.real, lam.imag, s=12, alpha=0.7, label=f"λ ({lam.size} modes)")
    if lam.size:
        i = int(np.argmin(np.abs(lam - 1)))
        ax.scatter([lam[i].real], [lam[i].imag], s=90, facecolors="none", edgecolors="r",
                   linewidths=1.5, label=f"λ₁ = {lam[i].real:.6f}{lam[i].imag:+.1e}i")
    ax.set_aspect("equal")
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)


def accuracy_vs_epoch(rows: Sequence[Row], path: str, phase: str = "finetuned") -> None:
    """Top-1 vs the epoch at which the network was pruned, per method and compression."""
    rows = [r for r in rows if r["phase"] == phase]
    fig, ax = plt.subplots(figsize=(6, 4))
    stats = group_mean_std(rows, ("method", "compression", "prune_epoch"), "top1")
    for method in _methods(rows):
        for c in sorted({k[1] for k in stats if k[0] == method}):
            pts = sorted((k[2], s) for k, s in stats.items() if k[0] == method and k[1] == c)
            style = dict(_METHOD_STYLE.get(method, {}))
            ax.errorbar([p for p, _ in pts], [100 * s[0] for _, s in pts],
                        yerr=[100 * s[1] for _, s in pts], capsize=3,
                        label=f"{method} c={c:g}", **style)
    ax.set_xlabel("epoch at which the Koopman window starts")
    ax.set_ylabel(f"top-1 accuracy (%), {phase}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def lambda_vs_epoch(rows: Sequence[Row], path: str) -> None:
    """The eigenvalue closest to 1 (|λ₁ − 1|) vs the epoch of the window."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    stats = group_mean_std(rows, ("prune_epoch",), "lambda1_distance")
    pts = sorted((k[0], s) for k, s in stats.items())
    ax.errorbar([p for p, _ in pts], [s[0] for _, s in pts], yerr=[s[1] for _, s in pts],
                marker="o", capsize=3)
    ax.set_yscale("log")
    ax.set_xlabel("epoch of the Koopman window")
    ax.set_ylabel("|λ₁ − 1|, eigenvalue closest to 1")
    ax.grid(alpha=0.3)
    _save(fig, path)


def spectra_by(groups: dict[Any, np.ndarray], path: str, label: str) -> None:
    """Several spectra in one complex plane (e.g. one per pruning epoch)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="k", lw=0.8)
    for key, lam in groups.items():
        lam = np.asarray(lam)
        ax.scatter(lam.real, lam.imag, s=10, alpha=0.6, label=f"{label} {key}")
    ax.set_aspect("equal")
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
