"""What every summary.md says besides its tables: a reading generated from
the numbers, the model's size, and where the numbers came from.

`reading` compares two methods cell by cell against the seed spread;
`fit_table` and `cutoff_sensitivity` show what the Koopman results depend
on (the rank cutoff, the energy it keeps, λ₁'s separation and residual);
`shift_section` reports accuracy under input shifts and the prune
potential; `provenance` records the commit, package versions, CPU model, cores and
times, since bits depend on the CPU and the core count (BUILD_NOTES,
"Reproducibility").

May import: numpy, experiments.results, kpjax.data.shifts, kpjax.pruning.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import time
from collections.abc import Sequence

import numpy as np

from experiments.results import COMMIT, Row, at_cutoff, fmt_pm, group_mean_std, markdown_table
from kpjax import pruning
from kpjax.data import shifts

_START = time.time()
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_LABELS = {"compression": "c", "prune_epoch": "epoch"}


def name(method: str) -> str:
    """A method's name in prose: its registered label (KMP, gradient pruning, ...)."""
    if method in pruning.METHODS:
        return pruning.get_method(method).label or method
    return method  # the references and controls ("dense", ...) by their row name


def data_line(name: str, source: str) -> list[str]:
    """Markdown lines naming the data when it is not the dataset's original files."""
    if not source:
        return []
    note = (" These are not the original CIFAR-10 files (e.g. a JPEG re-encoding): accuracies "
            "compare with each other, not with published CIFAR-10 numbers."
            if name == "cifar10" else "")
    return [f"Data: {name} from the {source}.{note}", ""]


def sci(stats: tuple[float, float, int] | None) -> str:
    """mean ± std in scientific notation (the std only when n > 1)."""
    if stats is None:
        return "–"
    mean, std, n = stats
    return f"{mean:.2e} ± {std:.1e}" if n > 1 else f"{mean:.2e}"


def _groups(rows: Sequence[Row], by: Sequence[str]) -> list[tuple]:
    return sorted({tuple(r[k] for k in by) for r in rows})


def fit_table(window_rows: Sequence[Row], rcond: Sequence[float], cluster_tol: float,
              by: Sequence[str] = ()) -> list[str]:
    """Markdown lines: the Koopman fit at every cutoff (the run's first), mean ±
    std over seeds: rank, the energy of X left out, λ₁'s separation from the
    rest of the spectrum, its mode's residual, and how many modes lie within
    the cluster tolerance of 1 (what subspace KMP sums). `window_rows`: one
    row per fit, its cutoff in column rcond (`experiments.cell.window_rows`)."""
    if not window_rows:
        return []
    body = []
    for g in _groups(window_rows, by):
        for i, r in enumerate(rcond):
            rows = [w for w in window_rows if tuple(w[k] for k in by) == g and w["rcond"] == r]
            st = lambda key: group_mean_std(rows, (), key).get(())
            lost = group_mean_std([{"x": 1.0 - float(w["energy_kept"])} for w in rows
                                   if w.get("energy_kept") is not None], (), "x").get(())
            body.append([*g, f"{r:g}" + (" (run's)" if i == 0 else ""), fmt_pm(st("rank"), 1.0, 1),
                         sci(lost), sci(st("lambda1_separation")), sci(st("lambda1_residual")),
                         fmt_pm(st("cluster_size"), 1.0, 1)])
    header = [_LABELS.get(k, k) for k in by] + [
        "rcond", "rank", "energy left out", "separation of λ₁", "residual of φ₁", "modes near 1"]
    return ["## The Koopman fit at each rank cutoff", "",
            "Mean ± std over seeds. Energy left out: Σ of the dropped σᵢ² over ‖X‖²_F. "
            "Separation: min |λᵢ − λ₁| (a small one makes φ₁ ill-determined). Residual: "
            "‖Yv − λ₁Xv‖/‖Xv‖ of φ₁ (0 for an exact eigen-direction of the data). Modes near 1: "
            f"|λᵢ − 1| ≤ {cluster_tol:g}, the cluster subspace KMP sums.", "",
            markdown_table(header, body), ""]


def cutoff_sensitivity(rows: Sequence[Row], overlap_rows: Sequence[Row],
                       pairs: Sequence[tuple[str, str]], compressions: Sequence[float],
                       rcond: Sequence[float], by: Sequence[str] = ()) -> list[str]:
    """Markdown lines: each Koopman method of `pairs` immediately after pruning,
    with its kept-set overlap with the baseline, at every cutoff (all from one
    Gram matrix; the rows' rcond column), and the baseline; ends with where
    the sign against the baseline flips with the cutoff."""
    if len(rcond) < 2:
        return []
    pruned = [r for r in rows if r["phase"] == "pruned"]
    stats = group_mean_std(pruned, (*by, "method", "rcond", "compression"), "top1")
    # The baselines at the run's cutoff (those that read no fit have rcond None).
    base = group_mean_std(at_cutoff(pruned, rcond[0]), (*by, "method", "compression"), "top1")
    ov = group_mean_std(overlap_rows, (*by, "method", "rcond", "other", "compression"), "jaccard")
    groups = sorted({k[:len(by)] for k in stats})
    out = ["## Sensitivity to the rank cutoff (immediately after pruning)", "",
           "Top-1 % (Jaccard overlap of kept sets with the baseline) at every cutoff of --rcond; "
           f"the run's cutoff is {rcond[0]:g}. Refined cells use the run's cutoff only.", ""]
    flips = []
    for m, baseline in pairs:
        if not any(k[len(by)] == m for k in stats) or not any(k[len(by)] == baseline for k in base):
            continue
        body, signs = [], {}
        for g in groups:
            for i, r in enumerate(rcond):
                cells = []
                for c in compressions:
                    s, b = stats.get((*g, m, r, c)), base.get((*g, baseline, c))
                    if s is not None and b is not None:
                        signs.setdefault((*g, c), set()).add(_sign(100 * (s[0] - b[0])))
                    cells.append(f"{fmt_pm(s)} ({fmt_pm(ov.get((*g, m, r, baseline, c)), 1.0, 4)})")
                body.append([*g, f"{r:g}" + (" (run's)" if i == 0 else "")] + cells)
            body.append([*g, f"{name(baseline)} (baseline)"]
                        + [fmt_pm(base.get((*g, baseline, c))) for c in compressions])
        header = [_LABELS.get(k, k) for k in by] + ["rcond"] + [f"c = {c:g}" for c in compressions]
        out += [f"{name(m)} vs {name(baseline)}:", "", markdown_table(header, body), ""]
        flipped = [k for k, s in signs.items() if {1, -1} <= s]
        if flipped:
            where = ", ".join(" ".join(f"{_LABELS.get(key, key)} = {v:g}"
                                       for key, v in zip((*by, "compression"), k)) for k in flipped)
            flips.append(f"{name(m)} − {name(baseline)} changes sign with the cutoff at {where}")
    out += [("Where the conclusion depends on the cutoff: " + "; ".join(flips) + ".") if flips else
            "At these cutoffs no Koopman method changes sign against its baseline.", ""]
    return out


def _sign(gap: float) -> int:
    """The sign of a top-1 gap in points, as shown (two decimals): 0.004 is a tie."""
    rounded = round(gap, 2)
    return (rounded > 0) - (rounded < 0)


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
    label = _LABELS.get(by[-1], by[-1])
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


def shift_section(rows: Sequence[Row], shift_rows: Sequence[Row], methods: Sequence[str],
                  compressions: Sequence[float], phase: str, delta_points: float, examples: int,
                  reference_phase: str | None = None) -> list[str]:
    """Accuracy under input shifts and each method's prune potential
    (Liebenwein et al. 2021) from the `shift_rows` of `phase` (one per cell,
    shift and severity; `Setup.evaluate_shifts`); [] when there are none.

    The clean column is the full test set's top-1 of `rows`. The reference
    is the unpruned network (method 'dense') of `reference_phase` (default:
    `phase`); on a shift, a method's accuracy and the reference's are means
    over the severities, each a mean over seeds.
    """
    shifted = [r for r in shift_rows if r["shift"] != "clean"]
    final = [r for r in shifted if r["phase"] == phase]
    reference = [r for r in shifted if r["method"] == "dense"
                 and r["phase"] == (reference_phase or phase)]
    if not final or not reference:
        return []
    kinds = list(dict.fromkeys(r["shift"] for r in shifted))
    clean = [r for r in rows if r["phase"] == phase]
    clean_reference = [r for r in rows if r["method"] == "dense"
                       and r["phase"] == (reference_phase or phase)]

    def mean_of(group: Sequence[Row], kind: str | None) -> float:
        """Top-1 of `group` on `kind` (None: the clean test set): the mean over
        severities of the means over seeds."""
        if kind is None:
            return float(np.mean([r["top1"] for r in group]))
        severities = sorted({r["severity"] for r in group if r["shift"] == kind})
        return float(np.mean([np.mean([r["top1"] for r in group
                                       if r["shift"] == kind and r["severity"] == s])
                              for s in severities]))

    def cells(m: str, group: Sequence[Row], kinds_: Sequence[str | None]) -> list[tuple[float, float]]:
        out = []
        for c in compressions:
            mine = [r for r in group if r["method"] == m and r["compression"] == c]
            if mine:
                out.append((c, float(np.mean([mean_of(mine, k) for k in kinds_]))))
        return out

    columns = [("clean (full test set)", None)] + [(kind, kind) for kind in kinds]
    body = []
    for m in methods:
        row = [m]
        for _, kind in columns:
            points = cells(m, clean if kind is None else final, [kind])
            ref = mean_of(clean_reference if kind is None else reference, kind)
            potential = shifts.prune_potential([c for c, _ in points], [a for _, a in points],
                                               ref, delta_points / 100)
            row.append(f"{potential:g}")
        body.append(row)
    acc = [[f"{c:g}"] + [f"{100 * a:.2f}" if (a := dict(cells(m, final, kinds)).get(c)) is not None
                         else "–" for m in methods] for c in compressions]
    reference_shifted = float(np.mean([mean_of(reference, k) for k in kinds]))
    return ["## Beyond accuracy: input shifts and prune potential (--eval_shifts)", "",
            f"Prune potential (Liebenwein et al. 2021): the largest compression whose top-1 is "
            f"within {delta_points:g} points of the unpruned network's, on the clean test set and "
            "under each shift (kpjax.data.shifts, mean over severities 1–5, on the first "
            f"{examples:,} test images; shifts.csv); 1 = no compression qualifies. "
            f"Unpruned reference: the dense network (phase {reference_phase or phase}). Means over seeds.", "",
            markdown_table(["method"] + [name for name, _ in columns], body), "",
            "Top-1 % under shift (mean over the five shifts and five severities); the unpruned "
            f"network: {100 * reference_shifted:.2f} %.", "",
            markdown_table(["compression"] + list(methods), acc), ""]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cell_commits(timings: Sequence[Row]) -> list[str]:
    """A line naming the commits that computed the cells (timings rows;
    a resumed run's cells may come from several invocations)."""
    cells: dict[str, set] = {}
    for r in timings:
        key = tuple(v for k, v in r.items() if k not in ("phase", "seconds", "commit"))
        cells.setdefault(r.get("commit", "not recorded"), set()).add(key)
    if not cells:
        return []
    return ["- the cells were computed at: " + "; ".join(
        f"{commit} ({len(keys)} cell{'s' if len(keys) != 1 else ''})"
        for commit, keys in sorted(cells.items(), key=lambda kv: -len(kv[1])))]


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
        f"- commit: {COMMIT} (this invocation's, read when it started)",
        *_cell_commits(timings),
        f"- Python {platform.python_version()}; {', '.join(versions)}",
        f"- CPU: {cpu_model()}; {cores} cores available to the run (of {os.cpu_count()})",
        f"- this invocation: {time.time() - _START:.0f} s wall, "
        f"{usage.ru_utime + usage.ru_stime:.0f} s CPU (a resumed or summarize-only run counts only "
        "its own part)",
        f"- the cells' wall times summed over every invocation (timings.csv): "
        f"{sum(float(r.get('seconds') or 0) for r in timings):.0f} s",
        "- bit-identical reruns need the same CPU model and core count (BUILD_NOTES, "
        "\"Reproducibility\")", ""]
