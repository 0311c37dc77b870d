"""One cell of a pruning run: prune θ(t₂), evaluate, refine, evaluate; and the rows.

A cell is (method, compression, seed) on one recorded `experiments.koopman_window.Window`:
its mask (`Window.mask`) applied to θ(t₂), evaluated, fine-tuned for
--finetune_epochs (the shrunk network with --granularity=filter) and
evaluated again (`run_cell`); beside it the dense references (`dense_cell`)
and the controls (`reinit_cell`, `small_dense_cell`). The rest are the rows
of the result tables: a cell's (`row`, and ShrinkBench's metrics.json), a
window's fit (`window_row`), the overlaps of kept sets (`overlap_rows`,
`seed_agreement`).

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import common
from experiments.pipeline import BASELINE, FINETUNE, OVERLAPS, REINIT, Setup
from experiments.results import atomic_write_json
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


def row(setup: Setup, method: str, c: float, seed: int, phase: str, ev, params, mask,
        seconds: float, **extra) -> dict:
    speedup = metrics.theoretical_speedup(setup.flops, params, mask)
    if setup.filter_granularity and method != "dense":  # the shrunk network's FLOPs
        speedup = structured.theoretical_speedup(setup.spec, setup.variables0,
                                                 structured.kept_units(setup.spec, mask))
    return {
        "model": setup.spec.name, "data": setup.dataset.name, **extra, "method": method,
        "compression": c, "seed": seed, "phase": phase,
        "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
        "compression_achieved": pruning.compression_ratio(params, mask),
        "speedup": speedup,
        "seconds": round(seconds, 2), "finetune_epochs": setup.config.finetune_epochs,
    }


def write_cell_metrics(setup: Setup, window: Window, workdir: str, rows: list[dict]) -> None:
    """ShrinkBench's metrics.json for one cell (its keys, after pruning, before
    refinement; the refined numbers under "finetuned"), in
    cells/<method>-c<c>-seed<s>[-epoch<e>]/, so that ShrinkBench's analysis
    scripts read kpjax results."""
    first = rows[0]
    method, c = first["method"], first["compression"]
    params = window.variables["params"]
    mask = train.full_mask(params) if method == "dense" else window.mask(setup, method, c)
    size, size_nz = metrics.model_size(params, mask)
    dense_flops, flops_nz = metrics.flops(setup.flops, params, mask)
    out = {"size": size, "size_nz": size_nz, "compression_ratio": size / size_nz,
           "flops": dense_flops, "flops_nz": flops_nz,
           "theoretical_speedup": dense_flops / flops_nz if flops_nz else float("inf"),
           "loss": first["loss"], "val_acc1": first["top1"], "val_acc5": first["top5"]}
    for r in rows[1:]:
        out[r["phase"]] = {"loss": r["loss"], "val_acc1": r["top1"], "val_acc5": r["top5"]}
    name = f"{method}-c{c:g}-seed{first['seed']}" + (
        f"-epoch{first['prune_epoch']}" if "prune_epoch" in first else "")
    atomic_write_json(os.path.join(workdir, "cells", name, "metrics.json"), out)


def add_cell(table, setup: Setup, window: Window, workdir: str, rows: list[dict]) -> None:
    """Records a finished cell: its metrics.json first, then its rows (the
    table marks the cell done, so a kill in between only redoes the cell)."""
    write_cell_metrics(setup, window, workdir, rows)
    table.add(rows)


def dense_cell(setup: Setup, window: Window, seed: int, **extra) -> list[dict]:
    """The dense references: θ(t₂) unpruned (phase "dense", what every method
    starts from) and, with refinement, θ(t₂) fine-tuned unpruned for the same
    steps, learning rate and batch order as every pruned cell (phase
    "finetuned"): the fair reference for the refined accuracies, since the
    pruned networks get those steps too."""
    return run_cell(setup, window, "dense", 1.0, seed, **extra)


def run_cell(setup: Setup, window: Window, method: str, c: float, seed: int, **extra) -> list[dict]:
    """Prune θ(t₂) with `method` at compression c, evaluate, refine, evaluate.

    method "dense" (c = 1) is the unpruned control (`dense_cell`); a method
    scored at an extra cutoff ('kmp@rcond=1e-07') is evaluated before
    refinement only (the sensitivity table).
    """
    start = time.time()
    dense = method == "dense"
    params = window.variables["params"]
    mask = train.full_mask(params) if dense else window.mask(setup, method, c)
    state = setup.state(window.variables, seed, mask=mask)
    # Every row's sizes and FLOPs: θ(t₂) under the mask (the steps donate the state).
    rows = [row(setup, method, c, seed, "dense" if dense else "pruned", setup.evaluate(state),
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
    if setup.config.finetune_epochs and "@" not in method:
        steps = setup.config.finetune_epochs * setup.steps_per_epoch
        state = common.run_steps(step, state, setup.stream(seed, FINETUNE), steps,
                                 f"seed {seed} {method} c={c:g} fine-tune", job=setup.job)
        rows.append(row(setup, method, c, seed, "finetuned", setup.evaluate(state, eval_step),
                        params, mask, time.time() - start, **extra))
    if "@" not in method:  # the final phase under input shifts (--eval_shifts)
        rows[-1].update(setup.evaluate_shifts(state, eval_step))
    logging.info("seed %d %s c=%g %s: %s", seed, method, c, extra or "",
                 "  ".join(f"{r['phase']} top-1 {100 * r['top1']:.2f}%" for r in rows))
    return rows


def reinit_state(setup: Setup, window: Window, method: str, c: float, seed: int):
    """A pruned cell's mask on freshly initialized weights (init seed
    seed·1000 + REINIT, not the seed's pretraining init), with the training
    optimizer (--train_*): the start of the retrain-from-scratch control."""
    variables = models.init_variables(setup.spec, seed * 1000 + REINIT)
    tx = setup.config.train.optimizer(setup.steps_per_epoch)
    return setup.state(variables, seed, tx=tx, mask=window.mask(setup, method, c)), tx


def reinit_cell(setup: Setup, window: Window, method: str, c: float, seed: int, **extra) -> list[dict]:
    """The retrain-from-scratch control (Liu et al., "Rethinking the value of
    network pruning"; Crowley et al.): the cell's mask, weights re-initialized,
    trained for as many steps as pretraining + refinement (--pretrain_epochs +
    --finetune_epochs epochs; with --init_checkpoint the imported network's
    training is unknown, so --pretrain_epochs stands for it) and evaluated
    (phase "reinit")."""
    start = time.time()
    state, tx = reinit_state(setup, window, method, c, seed)
    epochs = setup.config.pretrain_epochs + setup.config.finetune_epochs
    state = common.run_steps(setup.train_step(tx), state, setup.stream(seed, REINIT),
                             epochs * setup.steps_per_epoch,
                             f"seed {seed} {method} c={c:g} retrain from scratch", job=setup.job)
    rows = [row(setup, method, c, seed, "reinit", setup.evaluate(state), state.params,
                window.mask(setup, method, c), time.time() - start, **extra)]
    logging.info("seed %d %s c=%g retrained from scratch: top-1 %.2f%%", seed, method, c,
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
              "compression": c, "seed": seed, "phase": "small_dense",
              "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
              "compression_achieved": count_params(full) / count_params(variables["params"]),
              "speedup": dense_flops / small_flops, "width_factor": factor,
              "seconds": round(time.time() - start, 2)}
    logging.info("seed %d small dense c=%g (width ×%.3f): top-1 %.2f%%", seed, c, factor,
                 100 * ev["top1"])
    return [result]


def window_row(setup: Setup, window: Window, seed: int, **extra) -> dict:
    """What the Koopman fit of a window says: λ₁ (the eigenvalue closest to
    1) and its distance to 1, rcond, and `fit_diagnostics` at every cutoff
    (the extra ones suffixed '@rcond=1e-07')."""
    return {"model": setup.spec.name, **extra, "seed": seed,
            "lambda1_real": window.lambda1.real, "lambda1_imag": window.lambda1.imag,
            "lambda1_distance": abs(window.lambda1 - 1.0), "rcond": setup.config.rcond[0],
            **window.diagnostics}


def overlap_rows(setup: Setup, window: Window, seed: int, **extra) -> list[dict]:
    """Jaccard overlap of the kept sets of each Koopman method and its baseline
    (at every cutoff) and of subspace and single-mode KMP, at every compression."""
    rows = []
    pairs = list(OVERLAPS) + [(name, BASELINE[m]) for name, m, _ in setup.sensitivity]
    for a, b in pairs:
        if a in window.scores and b in window.scores:
            for c in setup.compressions:
                rows.append({"model": setup.spec.name, **extra, "pair": f"{a}~{b}",
                             "compression": c, "seed": seed,
                             "jaccard": pruning.mask_jaccard(window.mask(setup, a, c),
                                                             window.mask(setup, b, c), setup.select)})
    return rows


def seed_agreement(setup: Setup, windows: dict[int, Window], **extra) -> list[dict]:
    """Jaccard overlap of each method's kept sets between every two seeds, at
    every compression. With one dense model for all seeds (--init_checkpoint)
    the seeds differ only in the window's batches: a method whose masks
    agree across seeds does not hinge on them."""
    rows, seeds = [], sorted(windows)
    for method in setup.score_names:
        for c in setup.compressions:
            for i, a in enumerate(seeds):
                for b in seeds[i + 1:]:
                    rows.append({"model": setup.spec.name, **extra, "method": method,
                                 "compression": c, "seeds": f"{a}~{b}",
                                 "jaccard": pruning.mask_jaccard(windows[a].mask(setup, method, c),
                                                                 windows[b].mask(setup, method, c),
                                                                 setup.select)})
    return rows
