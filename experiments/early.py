r"""Koopman pruning early in training: how do KMP and GMP compare before convergence?

For each seed the model is trained from scratch (--train_lr, ...; the
defaults live in `experiments.config.EarlyConfig`). For every
epoch e in --prune_epochs, a window of --window_steps training steps starting
at epoch e (step e·S, S steps an epoch) is recorded with the training
optimizer; the Koopman operator is fitted on it, and θ(t₂), the params at the
window's end, are pruned with every method at every compression, evaluated,
fine-tuned (ShrinkBench's optimizer) and evaluated again. The window is a
branch of the training run: the main run continues from step e·S, and
because batches are a function of (seed, step) the branch follows it exactly.

  python -m experiments.early --prune_epochs=0,1,2,4,8   # defaults: kmp,gmp at 4 and 16

Writes to --workdir: results.csv/json (rows with prune_epoch), overlap.csv/json
(Jaccard of KMP/GMP kept sets per epoch), windows.csv/json (the Koopman fit
of each window at every cutoff), mask_distance.csv/json (each method's masks
between consecutive windows: the early-bird distance), summary.md (with the
epoch each early-bird ticket is drawn), fig_accuracy_vs_epoch.png, fig_overlap_vs_epoch.png,
fig_lambda_vs_epoch.png, fig_spectra.png. Reruns resume.

May import: absl, jax, experiments, kpjax.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import logging

from experiments import cli, common, pipeline, plots, report
from experiments.config import EarlyConfig
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from experiments.workdir import claim
from kpjax import koopman, loop, models, pruning, train

_CELL = ("model", "prune_epoch", "method", "compression", "seed")


def _copy(state: train.TrainState) -> train.TrainState:
    # Train steps donate their state: a branch needs buffers of its own.
    return jax.tree_util.tree_map(jnp.copy, state)


class MainRun:
    """One seed's training from scratch, advanced to a step on demand and
    checkpointed at every window start so that a rerun resumes there."""

    def __init__(self, setup: pipeline.Setup, seed: int, workdir: str):
        self.setup, self.seed = setup, seed
        self.tx = setup.config.train.optimizer(setup.steps_per_epoch)
        self.step_fn = setup.train_step(self.tx)
        self.checkpointing = loop.Checkpointing(
            os.path.abspath(os.path.join(workdir, f"seed{seed}", "main")),
            metadata={"model": setup.spec.name, "seed": seed}, max_to_keep=None)
        self.state = setup.state(models.init_variables(setup.spec, seed), seed, tx=self.tx)

    def at(self, step: int) -> train.TrainState:
        """A copy of the training state after `step` steps (steps only increase)."""
        current = int(self.state.step)
        if step < current:
            raise ValueError(f"main run is at step {current}, cannot go back to {step}")
        if step > current:
            self.state = loop.restore_latest(self.checkpointing, self.state, step)
            todo = step - int(self.state.step)
            if todo:
                self.state = common.run_steps(
                    self.step_fn, self.state, self.setup.stream(self.seed, pipeline.PRETRAIN),
                    todo, f"seed {self.seed} train to step {step}", self.checkpointing,
                    job=self.setup.job)
        return _copy(self.state)


def _summary(setup, epochs, rows, overlap_rows, window_rows, timings=(), distance_rows=()) -> str:
    config = setup.config
    stats = group_mean_std(rows, ("prune_epoch", "method", "compression", "phase"), "top1")
    ov = group_mean_std(overlap_rows, ("prune_epoch", "pair", "compression"), "jaccard")
    lam = group_mean_std(window_rows, ("prune_epoch",), "lambda1_distance")
    pairs_run = [p for p in pipeline.PAIRS if p[0] in setup.methods and p[1] in setup.methods]
    readings = []
    for c in setup.compressions:
        text = report.reading([r for r in rows if r["compression"] == c], pairs_run, by=("prune_epoch",))
        if text:
            readings += [f"At c = {c:g}: {text}", ""]
    out = [f"# Early pruning of {setup.spec.name} on {setup.dataset.name}", "",
           *readings,
           f"Seeds {setup.seeds} (n = {len(setup.seeds)}); windows of "
           f"{config.window_steps or setup.steps_per_epoch} steps starting at epochs {epochs}; "
           f"rank cutoff rcond = {config.rcond[0]:g}; top-1 % mean ± std over seeds.", "",
           *report.data_line(setup.dataset.name, setup.dataset.source)]
    for phase, title in (("pruned", "Immediately after pruning"), ("finetuned", "After refinement")):
        dense_phase = "dense" if phase == "pruned" else "finetuned"
        body = []
        for e in epochs:
            for c in setup.compressions:
                cells = [fmt_pm(stats.get((e, m, c, phase))) for m in setup.methods]
                if any(x != "–" for x in cells):
                    body.append([e, f"{c:g}"] + cells + [fmt_pm(stats.get((e, "dense", 1.0, dense_phase)))])
        if body:
            control = "dense θ(t₂)" if phase == "pruned" else "dense, fine-tuned alike"
            out += [f"## {title}", "",
                    markdown_table(["epoch", "compression"] + setup.methods + [control], body), ""]
    speed = group_mean_std([r for r in rows if r["phase"] == "pruned"], ("method", "compression"), "speedup")
    body = [[f"{c:g}"] + [f"{speed[(m, c)][0]:.2f}×" if (m, c) in speed else "–" for m in setup.methods]
            for c in setup.compressions]
    out += ["## Theoretical speedup of each method's masks", "",
            "Dense FLOPs over those left (ShrinkBench's definition), mean over seeds and epochs.", "",
            markdown_table(["compression"] + setup.methods, body), ""]
    pairs = sorted({r["pair"] for r in overlap_rows if "@" not in r["pair"]})
    if pairs:
        body = [[e, f"{c:g}"] + [fmt_pm(ov.get((e, p, c)), 1.0, 4) for p in pairs]
                for e in epochs for c in setup.compressions]
        out += ["## Jaccard overlap of kept parameters", "",
                markdown_table(["epoch", "compression"] + pairs, body), ""]
    body = [[e, report.sci(lam.get((e,)))] for e in epochs]
    out += ["## Eigenvalue closest to 1", "", markdown_table(["epoch", "|λ₁ − 1|"], body), ""]
    out += report.fit_table(window_rows, config.rcond, koopman.DEFAULT_CLUSTER_TOL, by=("prune_epoch",))
    out += report.cutoff_sensitivity(rows, overlap_rows, pipeline.PAIRS, setup.compressions,
                                     config.rcond, by=("prune_epoch",))
    out += _early_bird(setup, epochs, distance_rows)
    return "\n".join(out + report.provenance(timings))


def run(config: EarlyConfig, workdir: str) -> str:
    """Runs (or resumes) the early-training study in `workdir`; returns summary.md.

    With `config.summarize_only`, trains nothing: rewrites summary.md and the
    figures from the workdir's result files.
    """
    epochs = list(config.prune_epochs)
    setup = pipeline.Setup(config)
    if config.summarize_only:
        pipeline.check_workdir(workdir, config, write=False)
        spectra = {}
        table, overlap, windows, distances = _tables(workdir)
        for seed in setup.seeds:
            previous = None
            for e in epochs:
                window = pipeline.cached_window(
                    setup, os.path.join(workdir, f"seed{seed}", f"window_epoch{e}.npz"))
                if window is None:
                    continue
                if seed == setup.seeds[0]:
                    spectra[e] = window.eigenvalues
                # Distances of a run that predates them, from its cached windows (not saved).
                if previous is not None and not distances.done(
                        model=setup.spec.name, prune_epoch=e, method=setup.methods[0],
                        compression=setup.compressions[0], seed=seed):
                    distances.rows.extend(_distance_rows(setup, previous, window, e, seed))
                previous = (e, window)
        return _write_outputs(setup, epochs, workdir, table, overlap, windows, distances, spectra)
    with claim(workdir):
        pipeline.check_workdir(workdir, config)
        return _run(setup, epochs, workdir)


def _tables(workdir: str) -> tuple[ResultTable, ...]:
    return (ResultTable(workdir, _CELL, timing_columns=("seconds",)),
            ResultTable(workdir, ("model", "prune_epoch", "pair", "compression", "seed"), stem="overlap"),
            ResultTable(workdir, ("model", "prune_epoch", "seed"), stem="windows"),
            ResultTable(workdir, ("model", "prune_epoch", "method", "compression", "seed"),
                        stem="mask_distance"))


def _distance_rows(setup, previous: tuple[int, pipeline.Window], window, epoch: int, seed: int):
    """Normalized Hamming distance of each method's masks between the previous
    window and this one (You et al.'s early-bird distance), per compression."""
    before, old = previous
    return [{"model": setup.spec.name, "prune_epoch": epoch, "previous_epoch": before,
             "method": m, "compression": c, "seed": seed,
             "distance": pruning.mask_distance(old.mask(setup, m, c), window.mask(setup, m, c),
                                               setup.select)}
            for m in setup.methods for c in setup.compressions]


def _early_bird(setup, epochs, distance_rows) -> list[str]:
    """The epoch at which each method's early-bird ticket is drawn, per seed."""
    config = setup.config
    if not distance_rows:
        return []
    body = []
    for m in setup.methods:
        for c in setup.compressions:
            cells = []
            for seed in setup.seeds:
                rows = sorted((r for r in distance_rows if (r["method"], r["compression"], r["seed"])
                               == (m, c, seed)), key=lambda r: r["prune_epoch"])
                i = pruning.early_bird_index([r["distance"] for r in rows],
                                             config.early_bird_patience, config.early_bird_eps)
                cells.append("–" if not rows else f"epoch {rows[i]['prune_epoch']}" if i is not None
                             else f"not drawn (last {rows[-1]['distance']:.3f})")
            body.append([m, f"{c:g}"] + cells)
    dist = group_mean_std(distance_rows, ("prune_epoch", "method", "compression"), "distance")
    table = [[e, f"{c:g}"] + [fmt_pm(dist.get((e, m, c)), 1.0, 4) for m in setup.methods]
             for e in epochs[1:] for c in setup.compressions]
    return ["## Early-bird tickets", "",
            f"Mask distance (normalized Hamming) between the windows of consecutive --prune_epochs, "
            f"mean ± std over seeds; a ticket is drawn at the window that ends "
            f"{config.early_bird_patience} consecutive distances below {config.early_bird_eps:g} "
            "(You et al. 2020; with windows at sparse epochs the distances span several epochs). "
            "Its accuracy after refinement is the cell of that epoch above.", "",
            markdown_table(["epoch", "compression"] + setup.methods, table), "",
            markdown_table(["method", "compression"] + [f"seed {s}" for s in setup.seeds], body), ""]


def _run(setup: pipeline.Setup, epochs: list[int], workdir: str) -> str:
    config = setup.config
    steps = config.window_steps or setup.steps_per_epoch
    model = setup.spec.name
    table, overlap, windows, distances = _tables(workdir)
    cells = [(s, e, m, c) for s in setup.seeds for e in epochs for m in setup.score_names
             for c in setup.compressions]
    todo = [x for x in cells if not table.done(model=model, seed=x[0], prune_epoch=x[1],
                                               method=x[2], compression=x[3])]
    logging.info("%s: %d cells, %d to do; workdir %s", model, len(cells), len(todo), workdir)
    for seed in setup.seeds:  # the job clock's plan: what is not cached yet
        missing = [e for e in epochs
                   if not os.path.exists(os.path.join(workdir, f"seed{seed}", f"window_epoch{e}.npz"))]
        if missing:
            setup.job.plan(max(missing) * setup.steps_per_epoch + len(missing) * steps)
        setup.plan_cells(sum(not table.done(model=model, prune_epoch=e, method="dense",
                                            compression=1.0, seed=seed) for e in epochs))
    setup.plan_cells(sum("@" not in x[2] for x in todo), sum("@" in x[2] for x in todo))
    progress = common.Progress(len(todo), "cells", every_s=0.0)
    spectra = {}
    for seed in setup.seeds:
        main_run = MainRun(setup, seed, workdir)
        previous = None
        for e in epochs:
            path = os.path.join(workdir, f"seed{seed}", f"window_epoch{e}.npz")
            window = pipeline.cached_window(setup, path)
            if window is None:
                start = e * setup.steps_per_epoch
                window = pipeline.record_window(
                    setup, main_run.at(start), main_run.step_fn,
                    setup.stream(seed, pipeline.PRETRAIN)(start), steps, seed,
                    path, f"seed {seed} epoch {e}")
            if seed == setup.seeds[0]:
                spectra[e] = window.eigenvalues
            if not windows.done(model=model, prune_epoch=e, seed=seed):
                windows.add([pipeline.window_row(setup, window, seed, prune_epoch=e)])
            if previous is not None and not distances.done(
                    model=model, prune_epoch=e, method=setup.methods[0],
                    compression=setup.compressions[0], seed=seed):
                distances.add(_distance_rows(setup, previous, window, e, seed))
            previous = (e, window)
            if not table.done(model=model, prune_epoch=e, method="dense", compression=1.0, seed=seed):
                pipeline.add_cell(table, setup, window, workdir,
                                  pipeline.dense_cell(setup, window, seed, prune_epoch=e))
            new = [r for r in pipeline.overlap_rows(setup, window, seed, prune_epoch=e)
                   if not overlap.done(**{k: r[k] for k in overlap.key})]
            if new:
                overlap.add(new)
            for _, _, method, c in [x for x in todo if x[0] == seed and x[1] == e]:
                pipeline.add_cell(table, setup, window, workdir,
                                  pipeline.run_cell(setup, window, method, c, seed, prune_epoch=e))
                progress.update(1)

    return _write_outputs(setup, epochs, workdir, table, overlap, windows, distances, spectra)


def _write_outputs(setup, epochs, workdir, table, overlap, windows, distances, spectra) -> str:
    summary = _summary(setup, epochs, table.rows, overlap.rows, windows.rows,
                       table.timings.rows if table.timings else (), distances.rows)
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    out = lambda name: os.path.join(workdir, name)
    if table.rows:
        plots.accuracy_vs_epoch(table.rows, out("fig_accuracy_vs_epoch.png"),
                                "finetuned" if setup.config.finetune_epochs else "pruned",
                                f"{setup.spec.name} on {setup.dataset.name}")
    if overlap.rows:
        plots.overlap_vs(overlap.rows, "prune_epoch", out("fig_overlap_vs_epoch.png"), "epoch of the window",
                         title=f"{setup.spec.name} on {setup.dataset.name}")
    if windows.rows:
        plots.lambda_vs_epoch(windows.rows, out("fig_lambda_vs_epoch.png"),
                              f"{setup.spec.name} on {setup.dataset.name}")
    if spectra:
        plots.spectra_by(spectra, out("fig_spectra.png"), "epoch",
                         f"Koopman spectra, {setup.spec.name} on {setup.dataset.name}, seed {setup.seeds[0]}")
    return summary


main = cli.summary_main(EarlyConfig, run)


if __name__ == "__main__":
    cli.define_flags(EarlyConfig, default_workdir="runs/early")
    cli.run_main(main)
