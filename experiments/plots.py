"""Figures of the experiments (matplotlib, Agg backend, PNG, atomic writes).

May import: matplotlib, numpy, experiments.report, experiments.results, kpjax.pruning.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from experiments.report import name  # noqa: E402
from experiments.results import Row, atomic_write_bytes, group_mean_std  # noqa: E402
from kpjax import pruning  # noqa: E402

# Distinguishable at a glance and when lines coincide (KMP ≈ GMP): hollow
# large markers over small filled ones, solid over dashed.
def _style(method: str) -> dict:
    """A method's registered line style (a marker only when it has none)."""
    known = method in pruning.METHODS and pruning.get_method(method).style
    return dict(known) if known else dict(marker="o")


def save_figure(fig, path: str) -> None:
    """`fig` as a PNG at `path`, written atomically (and closed)."""
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


def _n_seeds(rows: Sequence[Row]) -> int:
    return len({r["seed"] for r in rows})


def _line(ax, x, stats, label, style, scale=100.0) -> None:
    """A mean line with std error bars, only where there is a spread (n > 1)."""
    y = [scale * s[0] for s in stats]
    if any(s[2] > 1 for s in stats):
        ax.errorbar(x, y, yerr=[scale * s[1] for s in stats], capsize=3, label=label, **style)
    else:
        ax.plot(x, y, label=label, **style)


_PHASE_TITLES = {"pruned": "immediately after pruning", "finetuned": "after refinement",
                 "init": "pruned at initialization", "trained": "after training"}


def accuracy_vs_compression(rows: Sequence[Row], path: str, title: str = "",
                            collapse: dict[str, float] | None = None,
                            start: float | None = None,
                            start_label: str = "unpruned θ(t₁), the window's start") -> None:
    """Top-1 vs compression, pruned and after refinement (the paper's Fig. 1).

    One shared y-axis; the dense reference of each panel as a horizontal line
    (θ(t₂) before, θ(t₂) fine-tuned for the same steps after refinement);
    `start` (the mean top-1 of θ(t₁), e.g. an imported network before the
    recorded window) as a second line on the pruned panel, so the window's
    own gain is visible beside what pruning costs;
    error bars (std over seeds) only when there are several seeds.
    `collapse` ({method: compression}) marks where each method first cuts a
    layer (Synaptic-Flow's layer collapse) with a triangle on every panel's
    bottom edge, in the method's colour.
    """
    phases = [p for p in _PHASE_TITLES if any(r["phase"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4.2), squeeze=False,
                             sharey=True)
    stats = group_mean_std(rows, ("phase", "method", "compression"), "top1")
    dense = group_mean_std([r for r in rows if r["method"] == "dense"], ("phase",), "top1")
    for ax, phase in zip(axes[0], phases):
        for method in _methods(rows):
            pts = sorted((c, s) for (p, m, c), s in stats.items() if p == phase and m == method)
            if pts:
                _line(ax, [c for c, _ in pts], [s for _, s in pts], name(method), _style(method))
                if collapse and method in collapse:  # stacked below 0, one row per method
                    color = ax.get_lines()[-1].get_color() if ax.get_lines() else None
                    row = list(collapse).index(method)
                    ax.plot([collapse[method]], [-2.0 - 3.0 * row], marker="v", ms=7, color=color,
                            ls="none", label="first layer collapse" if row == 0 else None)
        reference = ("dense", "unpruned θ(t₂)") if phase == "pruned" else (
            "finetuned", "unpruned, fine-tuned alike")
        if phase in ("pruned", "finetuned") and (reference[0],) in dense:
            ax.axhline(100 * dense[(reference[0],)][0], color="k", lw=0.9, ls=":",
                       label=reference[1])
        if phase == "pruned" and start is not None:
            ax.axhline(100 * start, color="0.45", lw=0.9, ls="-.", label=start_label)
        _compression_axis(ax, [r["compression"] for r in rows if r["method"] != "dense"])
        ax.set_xlabel("compression ratio (total / nonzero parameters)")
        ax.set_title(_PHASE_TITLES[phase])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    n = _n_seeds([r for r in rows if r["method"] != "dense"])
    fig.suptitle(f"{title}, n = {n} seed{'s' if n > 1 else ''}" + (" (mean ± std)" if n > 1 else ""))
    save_figure(fig, path)


def accuracy_vs_sparsity(rows: Sequence[Row], path: str, title: str = "") -> None:
    """Top-1 after training vs final sparsity, one line per (schedule,
    method) of experiments.gradual; the dense run as a horizontal line; the
    x-axis in −log10(1 − s), so 0.8, 0.9, 0.95, 0.98 are spread out."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    stats = group_mean_std(rows, ("schedule", "method", "sparsity"), "top1")
    for kind, method in dict.fromkeys((r["schedule"], r["method"]) for r in rows if r["schedule"] != "dense"):
        pts = sorted((sp, st) for (k, m, sp), st in stats.items() if (k, m) == (kind, method))
        style = dict(_style(method), linestyle={"oneshot": ":", "gradual": "-", "imp": "--"}.get(kind, "-."))
        if kind in ("rigl", "set"):
            style = dict(marker="D", linestyle="-.")
        label = kind if kind in ("rigl", "set") else f"{kind} {name(method)}"
        _line(ax, [-np.log10(1 - sp) for sp, _ in pts], [st for _, st in pts], label, style)
    dense = stats.get(("dense", "dense", 0.0))
    if dense:
        ax.axhline(100 * dense[0], color="k", lw=0.9, ls=":", label="dense")
    ticks = sorted({r["sparsity"] for r in rows if r["schedule"] != "dense"})
    ax.set_xticks([-np.log10(1 - t) for t in ticks], [f"{t:g}" for t in ticks])
    ax.set_xlabel("final sparsity (pruned fraction of the prunable parameters)")
    ax.set_ylabel("test top-1 after training (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    n = _n_seeds(rows)
    ax.set_title(f"{title}, n = {n} seed{'s' if n > 1 else ''}" + (" (mean ± std)" if n > 1 else ""))
    save_figure(fig, path)


def _compression_axis(ax, values) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{c:g}" for c in ticks])
    ax.minorticks_off()


def overlap_vs(rows: Sequence[Row], x: str, path: str, xlabel: str, log2: bool = False,
               title: str = "") -> None:
    """Jaccard overlap of two methods' kept sets vs `x`: one panel per pair,
    each zoomed on its own range (KMP vs GMP sits near 1, KGP vs grad far below);
    one line per compression unless x is the compression; error bars: std
    over seeds, when there are several. `rows`: overlap rows, the pair in
    columns method and other."""
    pairs = sorted({(r["method"], r["other"]) for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.0 * len(pairs), 4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        pair = f"{a} vs {b}"
        mine = [r for r in rows if (r["method"], r["other"]) == (a, b)]
        for c in sorted({None if x == "compression" else r["compression"] for r in mine},
                        key=lambda v: v or 0):
            sel = [r for r in mine if c is None or r["compression"] == c]
            pts = sorted(group_mean_std(sel, (x,), "jaccard").items())
            _line(ax, [k[0] for k, _ in pts], [s for _, s in pts], pair if c is None else f"c={c:g}",
                  dict(marker="o"), scale=1.0)
        if log2:
            _compression_axis(ax, [r[x] for r in mine])
        if x == "prune_epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        low = min(r["jaccard"] for r in mine)
        ax.set_ylim(max(0.0, low - 0.1 * (1.0 - low) - 0.002), 1.0 + 0.05 * (1.0 - low) + 0.001)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{pair}, n = {_n_seeds(mine)} seed"
                     f"{'s' if _n_seeds(mine) > 1 else ''}")
        ax.grid(alpha=0.3)
        if x != "compression":
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel("Jaccard overlap of kept parameters")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def spectrum(eigenvalues: np.ndarray, path: str, title: str = "") -> None:
    """Koopman eigenvalues in the complex plane with the unit circle, and a
    second panel zoomed on the eigenvalues nearest 1 (where KMP's mode and
    the ones that can be confused with it sit); λ₁, the closest to 1, is
    marked with |λ₁ − 1| in scientific notation."""
    lam = np.asarray(eigenvalues)
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(9.6, 4.8))
    t = np.linspace(0, 2 * np.pi, 2000)
    for a in (ax, zoom):
        a.plot(np.cos(t), np.sin(t), color="k", lw=0.8)
        a.scatter(lam.real, lam.imag, s=12, alpha=0.7, label=f"λ ({lam.size} modes)")
        a.set_aspect("equal")
        a.set_xlabel("Re λ")
        a.grid(alpha=0.3)
    if lam.size:
        i = int(np.argmin(np.abs(lam - 1)))
        label = f"λ₁: |λ₁ − 1| = {abs(lam[i] - 1):.2e}"
        for a in (ax, zoom):
            a.scatter([lam[i].real], [lam[i].imag], s=90, facecolors="none", edgecolors="r",
                      linewidths=1.5, label=label)
        distances = np.sort(np.abs(lam - 1))
        half = max(1.3 * float(distances[min(8, distances.size - 1)]), 1e-4)
        zoom.set_xlim(1 - half, 1 + half)
        zoom.set_ylim(-half, half)
    ax.set_ylabel("Im λ")
    ax.legend(loc="lower left", fontsize=8)
    zoom.set_title("the eigenvalues nearest 1", fontsize=10)
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def accuracy_vs_epoch(rows: Sequence[Row], path: str, phase: str = "finetuned", title: str = "") -> None:
    """Top-1 vs the epoch at which the network was pruned, per method and
    compression, with the dense reference (fine-tuned alike after refinement)."""
    dense_phase = "dense" if phase == "pruned" else "finetuned"
    dense = group_mean_std([r for r in rows if r["method"] == "dense" and r["phase"] == dense_phase],
                           ("prune_epoch",), "top1")
    rows = [r for r in rows if r["phase"] == phase and r["method"] != "dense"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    stats = group_mean_std(rows, ("method", "compression", "prune_epoch"), "top1")
    dashes = ["-", "--", "-.", ":"]
    for method in _methods(rows):
        for j, c in enumerate(sorted({k[1] for k in stats if k[0] == method})):
            pts = sorted((k[2], s) for k, s in stats.items() if k[0] == method and k[1] == c)
            style = dict(_style(method), linestyle=dashes[j % len(dashes)])
            _line(ax, [p for p, _ in pts], [s for _, s in pts], f"{name(method)} c={c:g}", style)
    if dense:
        pts = sorted(dense.items())
        _line(ax, [k[0] for k, _ in pts], [s for _, s in pts],
              "unpruned" + (", fine-tuned alike" if phase == "finetuned" else ""),
              dict(color="k", marker=".", linestyle=":"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch at which the Koopman window starts")
    ax.set_ylabel("top-1 accuracy (%)")
    n = _n_seeds(rows)
    when = "after refinement" if phase == "finetuned" else "immediately after pruning"
    ax.set_title(f"{title + ': ' if title else ''}{when}, n = {n} seed{'s' if n > 1 else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def lambda_vs_epoch(rows: Sequence[Row], path: str, title: str = "") -> None:
    """The eigenvalue closest to 1 (|λ₁ − 1|) vs the epoch of the window."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    stats = group_mean_std(rows, ("prune_epoch",), "lambda1_distance")
    pts = sorted((k[0], s) for k, s in stats.items())
    _line(ax, [p for p, _ in pts], [s for _, s in pts], "|λ₁ − 1|", dict(marker="o"), scale=1.0)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n = _n_seeds(rows)
    ax.set_title(f"{title + ': ' if title else ''}eigenvalue closest to 1, n = {n} seed{'s' if n > 1 else ''}")
    ax.set_xlabel("epoch of the Koopman window")
    ax.set_ylabel("|λ₁ − 1|, eigenvalue closest to 1")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def sliding_windows(rows: Sequence[Row], distance_rows: Sequence[Row], path: str,
                    title: str = "") -> None:
    """Sliding windows: |λ₁ − 1| (`rows`) and the KMP / GMP masks' distance to
    the previous window's (`distance_rows`, one per window, method and
    compression) vs the window's end step (mean over seeds)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6), sharex=True)
    lam = group_mean_std(rows, ("end_step",), "lambda1_distance")
    pts = sorted((k[0], v) for k, v in lam.items())
    _line(top, [p for p, _ in pts], [v for _, v in pts], "|λ₁ − 1|", dict(marker="."), scale=1.0)
    top.set_yscale("log")
    top.set_ylabel("|λ₁ − 1|")
    for m, c in sorted({(r["method"], r["compression"]) for r in distance_rows}):
        stats = group_mean_std([r for r in distance_rows if (r["method"], r["compression"]) == (m, c)
                                and np.isfinite(r["distance"])], ("end_step",), "distance")
        pts = sorted((k[0], v) for k, v in stats.items())
        if pts:
            _line(bottom, [p for p, _ in pts], [v for _, v in pts], f"{m.upper()} c={c:g}",
                  dict(marker="."), scale=1.0)
    bottom.set_ylabel("mask distance to the previous window")
    bottom.set_xlabel("end step of the window")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    n = _n_seeds(rows)
    top.set_title(f"{title + ': ' if title else ''}sliding Koopman windows, n = {n} seed{'s' if n > 1 else ''}")
    save_figure(fig, path)


def spectra_by(groups: dict[Any, np.ndarray], path: str, label: str, title: str = "") -> None:
    """Several spectra (e.g. one per pruning epoch) in the complex plane, and
    zoomed on the eigenvalues nearest 1."""
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(9.6, 4.8))
    t = np.linspace(0, 2 * np.pi, 2000)
    half = 1e-4
    for a in (ax, zoom):
        a.plot(np.cos(t), np.sin(t), color="k", lw=0.8)
    for key, lam in groups.items():
        lam = np.asarray(lam)
        for a in (ax, zoom):
            a.scatter(lam.real, lam.imag, s=10, alpha=0.6, label=f"{label} {key}")
        if lam.size:
            distances = np.sort(np.abs(lam - 1))
            half = max(half, 1.3 * float(distances[min(4, distances.size - 1)]))
    zoom.set_xlim(1 - half, 1 + half)
    zoom.set_ylim(-half, half)
    for a in (ax, zoom):
        a.set_aspect("equal")
        a.set_xlabel("Re λ")
        a.grid(alpha=0.3)
    ax.set_ylabel("Im λ")
    ax.legend(fontsize=8)
    zoom.set_title("the eigenvalues nearest 1", fontsize=10)
    ax.set_title(title or "Koopman spectra", fontsize=10)
    save_figure(fig, path)


def loss_curves(rows: Sequence[Row], path: str, title: str = "") -> None:
    """The training loss after pruning (experiments.gradient_flow's curves),
    one panel per prune epoch and compression, one line per method (mean over
    seeds; x: steps since the prune point, `since`: KMP's line starts after its window)."""
    panels = sorted({(r["prune_epoch"], r["compression"]) for r in rows if r["method"] != "dense"})
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False,
                             sharey=True)
    for ax, (e, c) in zip(axes[0], panels):
        mine = [r for r in rows if r["prune_epoch"] == e and r["compression"] in (c, 1.0)]
        stats = group_mean_std(mine, ("method", "since"), "loss")
        for method in ["dense"] + _methods(mine):
            pts = sorted((k[1], s) for k, s in stats.items() if k[0] == method)
            if pts:
                style = dict(color="k", linestyle=":") if method == "dense" else dict(_style(method), marker=None)
                ax.plot([p for p, _ in pts], [s[0] for _, s in pts], label=name(method), **style)
        ax.set_yscale("log")
        ax.set_xlabel("steps after the prune point")
        ax.set_title(f"epoch {e:g}, c = {c:g}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[0][-1].legend(fontsize=7)
    n = _n_seeds(rows)
    fig.suptitle(f"{title + ', ' if title else ''}n = {n} seed{'s' if n > 1 else ''}", fontsize=10)
    save_figure(fig, path)


def distance_map(d: np.ndarray, epochs: Sequence[int], path: str, title: str = "") -> None:
    """An epoch × epoch distance matrix as an image (Spline-EB's Fig. 4)."""
    fig, ax = plt.subplots(figsize=(4.8, 4))
    image = ax.imshow(d, cmap="viridis", origin="lower")
    ticks = range(len(epochs))
    ax.set_xticks(ticks, [str(e) for e in epochs])
    ax.set_yticks(ticks, [str(e) for e in epochs])
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch")
    fig.colorbar(image, ax=ax, label="code distance")
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)
