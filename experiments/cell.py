"""One cell of a pruning run: prune θ(t₂), evaluate, refine, evaluate; and the rows.

A cell is (method, compression, seed) on one recorded `experiments.koopman_window.Window`:
its mask (`Window.mask`) applied to θ(t₂), evaluated, fine-tuned for
--finetune_epochs (the shrunk network with --granularity=filter) and
evaluated again (`run_cell`); beside it the dense references (`dense_cell`)
and the controls (`reinit_cell`, `small_dense_cell`). The rest are the rows
of the result tables: a cell's (`row`, and ShrinkBench's metrics.json), a
window's fits (`window_rows`), the overlaps of kept sets (`overlap_rows`,
`seed_agreement`). Every row names its variant in typed columns: `method`
and `rcond` (`experiments.pipeline.Variant`).

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import common
from experiments.pipeline import BASELINE, FINETUNE, OVERLAPS, REINIT, Setup, Variant
from experiments.results import atomic_write_json, read_json
from experiments.koopman_window import Window
from kpjax import metrics, models, parallel, pruning, train
from kpjax.flatten import count_params
from kpjax.pruning import structured


def measured_speedup(setup: Setup, variables, small_spec: models.ModelSpec, small,
                     rounds: int = 3, calls: int = 5) -> float:
    """Inference time at batch --batch_size of the dense network (`variables`)
    over the shrunk one (`structured.shrink`'s `small_spec`, `small`): medians
    of `rounds` alternating rounds of `calls` timed calls after one untimed
    call, on this process's cores."""
    x = jnp.asarray(setup.normalize(setup.dataset.test_images[:setup.config.batch_size]))
    timers = []
    for spec, v in ((setup.spec, variables), (small_spec, small)):
        apply = jax.jit(lambda v, x, spec=spec: spec.module.apply(v, x))

        def timed(apply=apply, v=v):
            jax.block_until_ready(apply(v, x))
            start = time.perf_counter()
            for _ in range(calls):
                out = apply(v, x)
            jax.block_until_ready(out)
            return time.perf_counter() - start
        timers.append(timed)
    times = [[], []]
    for _ in range(rounds):
        for i, timed in enumerate(timers):
            times[i].append(timed())
    return float(np.median(times[0]) / np.median(times[1]))


class CellRows(NamedTuple):
    """A cell's rows: results (one per phase) and, with --eval_shifts, its last
    phase's top-1 under every input shift and severity (`shift_rows`)."""
    rows: list[dict]
    shifts: list[dict]


DENSE = Variant("dense")


def row(setup: Setup, variant: Variant, c: float, seed: int, phase: str, ev, params, mask,
        seconds: float, **extra) -> dict:
    speedup = metrics.theoretical_speedup(setup.flops, params, mask)
    if setup.filter_granularity and variant != DENSE:  # the shrunk network's FLOPs
        speedup = structured.theoretical_speedup(setup.spec, setup.variables0,
                                                 structured.kept_units(setup.spec, mask))
    return {
        "model": setup.spec.name, "data": setup.dataset.name, **extra, "method": variant.method,
        "rcond": variant.rcond, "compression": c, "seed": seed, "phase": phase,
        "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
        "compression_achieved": pruning.compression_ratio(params, mask),
        "speedup": speedup,
        "seconds": round(seconds, 2), "finetune_epochs": setup.config.finetune_epochs,
    }


def shift_rows(result: dict, top1: dict[tuple[str, int], float]) -> list[dict]:
    """One row per (shift, severity) of `Setup.evaluate_shifts`, keyed by the
    result row's cell and phase (shift "clean", severity 0: unshifted)."""
    cell = {k: v for k, v in result.items() if k in
            ("model", "data", "prune_epoch", "method", "rcond", "compression", "seed", "phase")}
    return [{**cell, "shift": shift, "severity": severity, "top1": value}
            for (shift, severity), value in top1.items()]


def write_cell_metrics(setup: Setup, window: Window, workdir: str, rows: list[dict]) -> None:
    """ShrinkBench's metrics.json for one cell (its keys, after pruning, before
    refinement; the refined numbers under "finetuned"), in
    cells/<method>[-rcond<r>]-c<c>-seed<s>[-epoch<e>]/ (rcond for the
    sensitivity cells at the extra cutoffs), so that ShrinkBench's analysis
    scripts read kpjax results."""
    first = rows[0]
    variant, c = Variant(first["method"], first["rcond"]), first["compression"]
    params = window.variables["params"]
    mask = train.full_mask(params) if variant == DENSE else window.mask(setup, variant, c)
    size, size_nz = metrics.model_size(params, mask)
    dense_flops, flops_nz = metrics.flops(setup.flops, params, mask)
    out = {"size": size, "size_nz": size_nz, "compression_ratio": size / size_nz,
           "flops": dense_flops, "flops_nz": flops_nz,
           "theoretical_speedup": dense_flops / flops_nz if flops_nz else float("inf"),
           "loss": first["loss"], "val_acc1": first["top1"], "val_acc5": first["top5"]}
    for r in rows[1:]:
        out[r["phase"]] = {"loss": r["loss"], "val_acc1": r["top1"], "val_acc5": r["top5"]}
    atomic_write_json(cell_metrics_path(setup, workdir, first), out)


def cell_metrics_path(setup: Setup, workdir: str, first: dict) -> str:
    """Where `write_cell_metrics` puts the metrics.json of the cell whose
    first result row is `first`."""
    variant = Variant(first["method"], first["rcond"])
    at = f"-rcond{variant.rcond:g}" if variant in setup.sensitivity else ""
    name = f"{variant.method}{at}-c{first['compression']:g}-seed{first['seed']}" + (
        f"-epoch{first['prune_epoch']}" if "prune_epoch" in first else "")
    return os.path.join(workdir, "cells", name, "metrics.json")


def damaged_cell_metrics(setup: Setup, workdir: str, table, **where) -> list[list[dict]]:
    """The rows (all phases) of each finished cell of `table` matching `where`
    (e.g. seed=0) whose metrics.json is missing or unreadable: results.json,
    the source of truth, says the cell is done, so its metrics.json is
    rebuilt from those rows (`write_cell_metrics`), as results.csv is."""
    cells: dict[tuple, list[dict]] = {}
    for r in table.rows:
        if all(r.get(k) == v for k, v in where.items()):
            cells.setdefault(table.cell(r), []).append(r)
    damaged = []
    for rows in cells.values():
        try:
            ok = isinstance(read_json(cell_metrics_path(setup, workdir, rows[0]), "a cell's metrics"), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            damaged.append(rows)
    return damaged


def repair_cell_metrics(setup: Setup, load_window, workdir: str, table, **where) -> int:
    """Rewrites the damaged metrics.json of the cells matching `where`, all
    pruned from the window `load_window()` returns (called only if some are
    damaged; None: no window at hand, the damage is reported with its fix);
    returns how many were rebuilt."""
    damaged = damaged_cell_metrics(setup, workdir, table, **where)
    window = load_window() if damaged else None
    if damaged and window is None:
        logging.warning("%d cells/*/metrics.json of %s are damaged or missing; rerun without "
                        "--summarize_only to rebuild them from results.json", len(damaged), where)
        return 0
    for rows in damaged:
        write_cell_metrics(setup, window, workdir, rows)
    if damaged:
        logging.warning("rebuilt %d damaged or missing cells/*/metrics.json from results.json", len(damaged))
    return len(damaged)


def add_cell(table, setup: Setup, window: Window, workdir: str, cell: CellRows,
             shifts=None) -> None:
    """Records a finished cell: its metrics.json and shift rows (to the
    `shifts` table) first, then its rows (the results table marks the cell
    done, so a kill in between only redoes the cell; its shift rows are not
    added twice)."""
    write_cell_metrics(setup, window, workdir, cell.rows)
    if shifts is not None:
        shifts.add_missing(cell.shifts)
    table.add(cell.rows)


def dense_cell(setup: Setup, window: Window, seed: int, **extra) -> CellRows:
    """The dense references: θ(t₂) unpruned (phase "dense", what every method
    starts from) and, with refinement, θ(t₂) fine-tuned unpruned for the same
    steps, learning rate and batch order as every pruned cell (phase
    "finetuned"): the fair reference for the refined accuracies, since the
    pruned networks get those steps too."""
    return run_cell(setup, window, DENSE, 1.0, seed, **extra)


def run_cell(setup: Setup, window: Window, variant: Variant, c: float, seed: int,
             **extra) -> CellRows:
    """Prune θ(t₂) with `variant` at compression c, evaluate, refine, evaluate.

    `DENSE` (c = 1) is the unpruned control (`dense_cell`); a variant of
    `setup.sensitivity` (a method at an extra cutoff) is evaluated before
    refinement only (the sensitivity table).
    """
    start = time.time()
    dense = variant == DENSE
    main = variant not in setup.sensitivity
    method = variant.method
    params = window.variables["params"]
    mask = train.full_mask(params) if dense else window.mask(setup, variant, c)
    state = setup.state(window.variables, seed, mask=mask)
    # Every row's sizes and FLOPs: θ(t₂) under the mask (the steps donate the state).
    rows = [row(setup, variant, c, seed, "dense" if dense else "pruned", setup.evaluate(state),
                params, mask, time.time() - start, **extra)]
    step, eval_step = setup.finetune_step, None
    if setup.filter_granularity and not dense:
        # Refine the shrunk network: it computes what the masked one does
        # (structured.shrink; the optimizer keeps removed weights at 0), and
        # each of its steps costs less.
        small_spec, small = structured.shrink(setup.spec, window.variables,
                                              structured.kept_units(setup.spec, mask))
        rows[0]["measured_speedup"] = measured_speedup(setup, window.variables, small_spec, small)
        state = setup.state(small, seed)
        step, eval_step = setup.train_step(setup.finetune_tx, small_spec), setup.make_eval_step(small_spec)
    shifted = []
    if main:
        if setup.config.finetune_epochs:
            steps = setup.config.finetune_epochs * setup.steps_per_epoch
            state = common.run_steps(step, state, setup.stream(seed, FINETUNE), steps,
                                     f"seed {seed} {method} c={c:g} fine-tune", job=setup.job)
            rows.append(row(setup, variant, c, seed, "finetuned", setup.evaluate(state, eval_step),
                            params, mask, time.time() - start, **extra))
        # The final phase under input shifts (--eval_shifts).
        shifted = shift_rows(rows[-1], setup.evaluate_shifts(state, eval_step))
    logging.info("seed %d %s c=%g %s: %s", seed, method if main else f"{method} (rcond {variant.rcond:g})",
                 c, extra or "", "  ".join(f"{r['phase']} top-1 {100 * r['top1']:.2f}%" for r in rows))
    return CellRows(rows, shifted)


def reinit_state(setup: Setup, window: Window, variant: Variant, c: float, seed: int):
    """A pruned cell's mask on freshly initialized weights (init seed
    seed·1000 + REINIT, not the seed's pretraining init), with the training
    optimizer (--train_*): the start of the retrain-from-scratch control."""
    variables = models.init_variables(setup.spec, seed * 1000 + REINIT)
    tx = setup.config.train.optimizer(setup.steps_per_epoch)
    return setup.state(variables, seed, tx=tx, mask=window.mask(setup, variant, c)), tx


def reinit_cell(setup: Setup, window: Window, variant: Variant, c: float, seed: int,
                **extra) -> list[dict]:
    """The retrain-from-scratch control (Liu et al., "Rethinking the value of
    network pruning"; Crowley et al.): the cell's mask, weights re-initialized,
    trained for as many steps as pretraining + refinement (--pretrain_epochs +
    --finetune_epochs epochs; with --init_checkpoint the imported network's
    training is unknown, so --pretrain_epochs stands for it) and evaluated
    (phase "reinit")."""
    start = time.time()
    state, tx = reinit_state(setup, window, variant, c, seed)
    epochs = setup.config.pretrain_epochs + setup.config.finetune_epochs
    state = common.run_steps(setup.train_step(tx), state, setup.stream(seed, REINIT),
                             epochs * setup.steps_per_epoch,
                             f"seed {seed} {variant.method} c={c:g} retrain from scratch",
                             job=setup.job)
    rows = [row(setup, variant, c, seed, "reinit", setup.evaluate(state), state.params,
                window.mask(setup, variant, c), time.time() - start, **extra)]
    logging.info("seed %d %s c=%g retrained from scratch: top-1 %.2f%%", seed, variant.method, c,
                 100 * rows[0]["top1"])
    return rows


def small_dense_cell(setup: Setup, c: float, seed: int, **extra) -> list[dict]:
    """The small-dense control (Liu et al. 2019; Crowley et al.): a dense network
    with at most as many parameters as the cells at compression c keep (total/c),
    every hidden width scaled down (`models.width_for_params`), initialized with
    seed·1000 + REINIT and trained like the reinit control (--pretrain_epochs +
    --finetune_epochs epochs, the training optimizer, the REINIT batch order).
    One row, method and phase "small_dense"; its compression_achieved and
    speedup are the full model's parameters and multiply-adds over its own."""
    start = time.time()
    full = setup.variables0["params"]
    spec, factor = models.width_for_params(setup.spec, int(count_params(full) // c))
    variables = models.init_variables(spec, seed * 1000 + REINIT)
    tx = setup.config.train.optimizer(setup.steps_per_epoch)
    state = train.create_train_state(variables["params"], tx, jax.random.PRNGKey(seed),
                                     batch_stats=variables.get("batch_stats"))
    if setup.mesh is not None:
        state = parallel.replicate(state, setup.mesh)
    step = train.make_train_step(spec.module.apply, tx, augment_fn=setup.augment,
                                 normalize_fn=setup.normalize)
    epochs = setup.config.pretrain_epochs + setup.config.finetune_epochs
    state = common.run_steps(step, state, setup.stream(seed, REINIT), epochs * setup.steps_per_epoch,
                             f"seed {seed} small dense c={c:g}", job=setup.job)
    ev = common.evaluate(train.make_eval_step(spec.module.apply, normalize_fn=setup.normalize),
                         state, setup.dataset, setup.config.eval_batch_size)
    setup.job.tick(setup.eval_units)
    small_flops = metrics.flops(metrics.layer_flops(spec.module, variables, spec.input_shape),
                                variables["params"])[0]
    dense_flops = metrics.flops(setup.flops, full)[0]
    result = {"model": setup.spec.name, "data": setup.dataset.name, **extra, "method": "small_dense",
              "rcond": None, "compression": c, "seed": seed, "phase": "small_dense",
              "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
              "compression_achieved": count_params(full) / count_params(variables["params"]),
              "speedup": dense_flops / small_flops, "width_factor": factor,
              "seconds": round(time.time() - start, 2)}
    logging.info("seed %d small dense c=%g (width ×%.3f): top-1 %.2f%%", seed, c, factor,
                 100 * ev["top1"])
    return [result]


_LAMBDA1 = ("lambda1_real", "lambda1_imag", "lambda1_distance")


def window_rows(setup: Setup, window: Window, seed: int, **extra) -> list[dict]:
    """What the Koopman fits of a window say, one row per cutoff (the run's
    first): λ₁ (the eigenvalue closest to 1) and its distance to 1, rcond,
    the recording's facts (top1_start) and `fit_diagnostics`."""
    rows = []
    for rcond, diagnostics in window.diagnostics.items():
        rows.append({"model": setup.spec.name, **extra, "seed": seed,
                     **{k: diagnostics[k] for k in _LAMBDA1}, "rcond": rcond, **window.facts,
                     **{k: v for k, v in diagnostics.items() if k not in _LAMBDA1}})
    return rows


def overlap_rows(setup: Setup, window: Window, seed: int, **extra) -> list[dict]:
    """Jaccard overlap of the kept sets of each Koopman method (`method` at
    `rcond`, every cutoff) and its baseline, and of subspace and single-mode
    KMP (`other`, at the run's cutoff), at every compression."""
    rows = []
    pairs = [(setup.variant(a), setup.variant(b)) for a, b in OVERLAPS] + [
        (v, setup.variant(BASELINE[v.method])) for v in setup.sensitivity]
    for a, b in pairs:
        if a in window.scores and b in window.scores:
            for c in setup.compressions:
                rows.append({"model": setup.spec.name, **extra, "method": a.method, "rcond": a.rcond,
                             "other": b.method, "compression": c, "seed": seed,
                             "jaccard": pruning.mask_jaccard(window.mask(setup, a, c),
                                                             window.mask(setup, b, c), setup.select)})
    return rows


def seed_agreement(setup: Setup, windows: dict[int, Window], **extra) -> list[dict]:
    """Jaccard overlap of each method's kept sets between every two seeds, at
    every compression. With one dense model for all seeds (--init_checkpoint)
    the seeds differ only in the window's batches: a method whose masks
    agree across seeds does not hinge on them."""
    rows, seeds = [], sorted(windows)
    for v in setup.scored:
        for c in setup.compressions:
            for i, a in enumerate(seeds):
                for b in seeds[i + 1:]:
                    rows.append({"model": setup.spec.name, **extra, "method": v.method,
                                 "rcond": v.rcond, "compression": c, "seed_a": a, "seed_b": b,
                                 "jaccard": pruning.mask_jaccard(windows[a].mask(setup, v, c),
                                                                 windows[b].mask(setup, v, c),
                                                                 setup.select)})
    return rows
