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

With --window_stride=s the run is recorded once instead, from the first
window's start to the last one's end, into a trajectory store in the
workdir (deleted when the seed is done): one banded Gram ΘΘᵀ, every
--prune_epochs window fitted and scored from its diagonal block (the same
windows as the branches, without training their steps twice), and sliding
windows every s steps: λ₁, its separation, the rank, and each window's KMP
and GMP masks with their distance to the previous window's (sliding.csv;
sliding_distance.csv; the early-bird ticket at window resolution). A kill during the recording
redoes it from the first window's start.

  python -m experiments.early --prune_epochs=0,1,2,4,8   # defaults: kmp,gmp at 4 and 16

Writes to --workdir: results.csv/json (rows with prune_epoch), overlap.csv/json
(Jaccard of KMP/GMP kept sets per epoch), windows.csv/json (the Koopman fit
of each window at every cutoff), mask_distance.csv/json (each method's masks
between consecutive windows: the early-bird distance), spline_distance.csv/json
(the region-code distance between the states at every two window ends, on
Spline-EB's canvas: `experiments.spline_eb`), summary.md (with the
epoch each early-bird ticket is drawn, by masks and by codes), fig_accuracy_vs_epoch.png, fig_overlap_vs_epoch.png,
fig_lambda_vs_epoch.png, fig_spectra.png, fig_spline_distance.png; with --window_stride also
sliding.csv/json, sliding_distance.csv/json (each window's mask distances,
per method and compression), seed<s>/sliding_spectra.npz (every window's eigenvalues)
and fig_sliding.png. Reruns resume.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import io
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import cell, cli, common, koopman_window, pipeline, plots, report, resources, spline_eb
from experiments.config import EarlyConfig
from experiments.results import (ResultTable, at_cutoff, atomic_write_bytes, atomic_write_text, fmt_pm,
                                 group_mean_std, markdown_table)
from experiments.workdir import claim
from kpjax import koopman, models, pruning, train
from kpjax.train import loop, recording
from kpjax.io import trajectory_store
from kpjax.flatten import count_params

_CELL = ("model", "prune_epoch", "method", "rcond", "compression", "seed")


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


def _summary(setup, epochs, all_rows, all_overlap, all_windows, timings=(), distance_rows=(),
             sliding_rows=(), sliding_distances=(), spline_rows=()) -> str:
    config = setup.config
    # The tables at the run's cutoff; the other cutoffs feed the sensitivity sections only.
    rows, overlap_rows, window_rows = (at_cutoff(t, config.rcond[0])
                                       for t in (all_rows, all_overlap, all_windows))
    stats = group_mean_std(rows, ("prune_epoch", "method", "compression", "phase"), "top1")
    ov = group_mean_std(overlap_rows, ("prune_epoch", "method", "other", "compression"), "jaccard")
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
    pairs = sorted({(r["method"], r["other"]) for r in overlap_rows})
    if pairs:
        body = [[e, f"{c:g}"] + [fmt_pm(ov.get((e, *p, c)), 1.0, 4) for p in pairs]
                for e in epochs for c in setup.compressions]
        out += ["## Jaccard overlap of kept parameters", "",
                markdown_table(["epoch", "compression"] + [f"{a} vs {b}" for a, b in pairs], body), ""]
    body = [[e, report.sci(lam.get((e,)))] for e in epochs]
    out += ["## Eigenvalue closest to 1", "", markdown_table(["epoch", "|λ₁ − 1|"], body), ""]
    out += report.fit_table(all_windows, config.rcond, koopman.DEFAULT_CLUSTER_TOL, by=("prune_epoch",))
    out += report.cutoff_sensitivity(all_rows, all_overlap, pipeline.PAIRS, setup.compressions,
                                     config.rcond, by=("prune_epoch",))
    out += _early_bird(setup, epochs, distance_rows)
    out += spline_eb.section(setup, epochs, spline_rows)
    out += _sliding_section(setup, sliding_rows, sliding_distances)
    return "\n".join(out + report.provenance(timings))


def run(config: EarlyConfig, workdir: str) -> str:
    """Runs (or resumes) the early-training study in `workdir`; returns summary.md.

    With `config.summarize_only`, trains nothing: rewrites summary.md and the
    figures from the workdir's result files.
    """
    resources.check_resources(config)
    epochs = list(config.prune_epochs)
    setup = pipeline.Setup(config)
    if config.summarize_only:
        pipeline.check_workdir(workdir, config, write=False)
        spectra = {}
        table, overlap, windows, distances, sliding, sliding_distances, splines = _tables(workdir)
        for seed in setup.seeds:
            previous = None
            for e in epochs:
                window = koopman_window.cached_window(
                    setup, os.path.join(workdir, f"seed{seed}", f"window_epoch{e}.npz"))
                cell.repair_cell_metrics(setup, lambda: window, workdir, table, seed=seed, prune_epoch=e)
                if window is None:
                    continue
                if seed == setup.seeds[0]:
                    spectra[e] = window.eigenvalues
                # Distances of a run that predates them, from its cached windows (not saved).
                if previous is not None and not distances.done(
                        model=setup.spec.name, prune_epoch=e, **setup.variants[0]._asdict(),
                        compression=setup.compressions[0], seed=seed):
                    distances.rows.extend(_distance_rows(setup, previous, window, e, seed))
                previous = (e, window)
        return _write_outputs(setup, epochs, workdir, table, overlap, windows, distances, sliding,
                              sliding_distances, spectra, splines)
    with claim(workdir):
        pipeline.check_workdir(workdir, config)
        return _run(setup, epochs, workdir)


def _tables(workdir: str) -> tuple[ResultTable, ...]:
    """results (with timings), overlap, windows, mask_distance, sliding,
    sliding_distance and spline_distance."""
    return (ResultTable(workdir, _CELL, timing_columns=("seconds",)),
            ResultTable(workdir, ("model", "prune_epoch", "method", "rcond", "other", "compression",
                                  "seed"), stem="overlap"),
            ResultTable(workdir, ("model", "prune_epoch", "seed", "rcond"), stem="windows"),
            ResultTable(workdir, _CELL, stem="mask_distance"),
            ResultTable(workdir, ("model", "seed", "start_step"), stem="sliding"),
            ResultTable(workdir, ("model", "seed", "start_step", "method", "compression"),
                        stem="sliding_distance"),
            ResultTable(workdir, ("model", "seed", "epoch", "other_epoch"), stem="spline_distance"))


def _distance_rows(setup, previous: tuple[int, koopman_window.Window], window, epoch: int, seed: int):
    """Normalized Hamming distance of each method's masks between the previous
    window and this one (You et al.'s early-bird distance), per compression."""
    before, old = previous
    return [{"model": setup.spec.name, "prune_epoch": epoch, "previous_epoch": before,
             "method": v.method, "rcond": v.rcond, "compression": c, "seed": seed,
             "distance": pruning.mask_distance(old.mask(setup, v, c), window.mask(setup, v, c),
                                               setup.select)}
            for v in setup.variants for c in setup.compressions]


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
    table, overlap, windows, distances, sliding, sliding_distances, splines = _tables(workdir)
    cells = [(s, e, v, c) for s in setup.seeds for e in epochs for v in setup.scored
             for c in setup.compressions]
    todo = [x for x in cells if not table.done(model=model, seed=x[0], prune_epoch=x[1],
                                               method=x[2].method, rcond=x[2].rcond,
                                               compression=x[3])]
    logging.info("%s: %d cells, %d to do; workdir %s", model, len(cells), len(todo), workdir)
    for seed in setup.seeds:  # the job clock's plan: what is not cached yet
        missing = [e for e in epochs
                   if not os.path.exists(os.path.join(workdir, f"seed{seed}", f"window_epoch{e}.npz"))]
        if missing:
            setup.job.plan(max(missing) * setup.steps_per_epoch + len(missing) * steps)
        setup.plan_cells(sum(not table.done(model=model, prune_epoch=e, method="dense", rcond=None,
                                            compression=1.0, seed=seed) for e in epochs))
    sensitivity = sum(x[2] in setup.sensitivity for x in todo)
    setup.plan_cells(len(todo) - sensitivity, sensitivity)
    progress = common.Progress(len(todo), "cells", every_s=0.0)
    spectra = {}
    for seed in setup.seeds:
        main_run = MainRun(setup, seed, workdir)
        if config.window_stride:
            _record_once(setup, main_run, seed, epochs, workdir, sliding, sliding_distances)
        previous, states = None, []
        for e in epochs:
            path = _window_path(workdir, seed, e)
            window = koopman_window.cached_window(setup, path)
            if window is None:
                start = e * setup.steps_per_epoch
                window = koopman_window.record_window(
                    setup, main_run.at(start), main_run.step_fn,
                    setup.stream(seed, pipeline.PRETRAIN)(start), steps, seed,
                    path, f"seed {seed} epoch {e}")
            if seed == setup.seeds[0]:
                spectra[e] = window.eigenvalues
            cell.repair_cell_metrics(setup, lambda: window, workdir, table, seed=seed, prune_epoch=e)
            windows.add_missing(cell.window_rows(setup, window, seed, prune_epoch=e))
            if previous is not None and not distances.done(
                    model=model, prune_epoch=e, **setup.variants[0]._asdict(),
                    compression=setup.compressions[0], seed=seed):
                distances.add(_distance_rows(setup, previous, window, e, seed))
            previous = (e, window)
            states.append(window.variables)
            if not table.done(model=model, prune_epoch=e, method="dense", rcond=None,
                              compression=1.0, seed=seed):
                cell.add_cell(table, setup, window, workdir,
                                  cell.dense_cell(setup, window, seed, prune_epoch=e))
            overlap.add_missing(cell.overlap_rows(setup, window, seed, prune_epoch=e))
            for _, _, variant, c in [x for x in todo if x[0] == seed and x[1] == e]:
                cell.add_cell(table, setup, window, workdir,
                              cell.run_cell(setup, window, variant, c, seed, prune_epoch=e))
                progress.update(1)
        if config.spline_canvas and len(epochs) > 1 and not splines.done(
                model=model, seed=seed, epoch=epochs[-1], other_epoch=epochs[-2]):
            splines.add_missing(spline_eb.distance_rows(setup, seed, epochs, states, config.spline_canvas))

    return _write_outputs(setup, epochs, workdir, table, overlap, windows, distances, sliding,
                          sliding_distances, spectra, splines)


def _window_path(workdir: str, seed: int, epoch: int) -> str:
    return os.path.join(workdir, f"seed{seed}", f"window_epoch{epoch}.npz")


def _record_once(setup: pipeline.Setup, main_run: MainRun, seed: int, epochs: list[int],
                 workdir: str, sliding: ResultTable, sliding_distances: ResultTable) -> None:
    """--window_stride: the seed's run from the first window's start to the last
    one's end, recorded once (a `TrajectoryStore`, deleted at the end); one
    banded Gram; the --prune_epochs windows scored from its diagonal blocks
    (cached like branch windows) and the sliding windows' rows."""
    config = setup.config
    per_epoch, w = setup.steps_per_epoch, config.window_steps or setup.steps_per_epoch
    first, last = epochs[0] * per_epoch, epochs[-1] * per_epoch + w
    todo = [e for e in epochs if koopman_window.cached_window(setup, _window_path(workdir, seed, e)) is None]
    if not todo and sliding.done(model=setup.spec.name, seed=seed, start_step=first):
        return
    ends = {e * per_epoch + w - first: e for e in todo}  # step of the recording → window
    captured: dict[int, train.TrainState] = {}

    def keep_window_ends(t, state):
        if t in ends:
            captured[ends[t]] = _copy(state)

    # A scratch file (removed below); with several processes each writes its own.
    own = "" if jax.process_count() == 1 else f".process{jax.process_index()}"
    path = os.path.join(workdir, f"seed{seed}", f"trajectory{own}.kpt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    recorder = recording.make_recording_train_step(main_run.step_fn, setup.select)
    desc = f"seed {seed} steps {first}–{last}"
    started = time.time()
    with trajectory_store.create_store(
            path, setup.flat_spec.size, last - first + 1, overwrite=True,
            metadata={"model": setup.spec.name, "seed": seed, "first_step": first}) as store:
        batches = koopman_window.with_progress(setup.stream(seed, pipeline.PRETRAIN)(first),
                                          last - first, desc, setup.job)
        recording.record_trajectory_to_store(recorder, main_run.at(first), batches, last - first,
                                             setup.select, store, on_step=keep_window_ends)
        k = koopman.banded_gram(store, w)
        seconds = (time.time() - started) / max(1, len(todo))
        for e in todo:
            r = e * per_epoch - first
            stream = setup.stream(seed, pipeline.PRETRAIN)(e * per_epoch + w)
            scoring = [next(stream) for _ in range(koopman_window.scoring_batch_count(setup))]
            koopman_window.score_window(setup, captured.pop(e), store.row_range(r, r + w + 1),
                                  k[r:r + w + 1, r:r + w + 1], scoring, seed,
                                  _window_path(workdir, seed, e), f"seed {seed} epoch {e}", seconds)
        if not sliding.done(model=setup.spec.name, seed=seed, start_step=first):
            rows, distance_rows, spectra = _sliding_rows(setup, store, k, w, first, seed)
            buf = io.BytesIO()
            np.savez(buf, **spectra)
            atomic_write_bytes(os.path.join(workdir, f"seed{seed}", "sliding_spectra.npz"), buf.getvalue())
            # The distances first: the sliding rows mark the seed done.
            sliding_distances.add_missing(distance_rows)
            sliding.add(rows)
    os.remove(path)


def _sliding_rows(setup: pipeline.Setup, store, k: np.ndarray, w: int, first: int,
                  seed: int) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """Every window of w steps, every --window_stride steps, of the recorded
    run (`koopman.sliding_window_fits` of the banded Gram): rows with λ₁ and
    the fit's diagnostics; distance rows with the normalized Hamming distance
    of its KMP and GMP masks at every compression to the previous window's
    (NaN for the first); and the spectra (start_step, eigenvalues and valid,
    one row per window)."""
    config = setup.config
    starts, fits = koopman.sliding_window_fits(k, w, config.window_stride, rcond=config.rcond[0])
    modes = np.asarray(koopman.sliding_fixed_point_modes(store, starts, fits))
    fits = jax.tree_util.tree_map(np.asarray, fits)
    total = count_params(setup.variables0["params"])
    rows, distances, previous = [], [], None
    for j, s in enumerate(starts):
        fit = jax.tree_util.tree_map(lambda x: x[j], fits)
        lam1 = complex(fit.eigenvalues[koopman.fixed_point_index(fit)])
        scores = {"kmp": np.abs(modes[:, j]).astype(np.float32),
                  "gmp": np.abs(store.read_rows(s + w, s + w + 1)[0])}
        masks = {(m, c): np.asarray(pruning.method_flat_mask(m, jnp.asarray(x), setup.flat_spec,
                                                             total, c))
                 for m, x in scores.items() for c in setup.compressions}
        row = {"model": setup.spec.name, "seed": seed, "start_step": first + s,
               "end_step": first + s + w, "lambda1_real": lam1.real, "lambda1_imag": lam1.imag,
               "lambda1_distance": abs(lam1 - 1.0), **koopman_window.fit_diagnostics(fit)}
        for (m, c), mask in masks.items():
            distances.append({"model": setup.spec.name, "seed": seed, "start_step": first + s,
                              "end_step": first + s + w, "method": m, "compression": c,
                              "distance": (float(np.mean(mask != previous[(m, c)]))
                                           if previous else math.nan)})
        rows.append(row)
        previous = masks
    spectra = {"start_step": first + np.asarray(starts), "eigenvalues": fits.eigenvalues,
               "valid": fits.valid}
    return rows, distances, spectra


def _sliding_section(setup, rows, distance_rows) -> list[str]:
    """The sliding windows: |λ₁ − 1| and each mask's distance to the previous
    window's, and where an early-bird ticket is drawn at window resolution."""
    if not rows:
        return []
    config = setup.config
    cols = [(m, c) for m in ("kmp", "gmp") for c in setup.compressions]
    body = []
    for seed in setup.seeds:
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["start_step"])
        if not mine:
            continue
        cells = []
        for m, c in cols:
            d = [r["distance"] for r in sorted(
                (r for r in distance_rows if (r["seed"], r["method"], r["compression"]) == (seed, m, c)),
                key=lambda r: r["start_step"])[1:]]
            i = pruning.early_bird_index(d, config.early_bird_patience, config.early_bird_eps)
            cells.append(f"step {mine[i + 1]['end_step']}" if i is not None
                         else f"not drawn (last {d[-1]:.3f})" if d else "–")
        body.append([seed, len(mine)] + cells)
    first = min(r["start_step"] for r in rows)
    return ["## Sliding windows", "",
            f"One recording of each seed's run from step {first}; windows of "
            f"{config.window_steps or setup.steps_per_epoch} steps every {config.window_stride} "
            "steps, fitted from one banded Gram (sliding.csv: λ₁ and the fit's diagnostics; "
            "sliding_distance.csv: each mask's normalized Hamming distance to the previous "
            "window's). Early-bird ticket: the "
            f"end step of the window that ends {config.early_bird_patience} consecutive distances "
            f"below {config.early_bird_eps:g}.", "",
            markdown_table(["seed", "windows"] + [f"{m.upper()} c={c:g}" for m, c in cols], body), ""]


def _write_outputs(setup, epochs, workdir, table, overlap, windows, distances, sliding,
                   sliding_distances, spectra, splines) -> str:
    summary = _summary(setup, epochs, table.rows, overlap.rows, windows.rows,
                       table.timings.rows if table.timings else (), distances.rows, sliding.rows,
                       sliding_distances.rows, splines.rows)
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    out = lambda name: os.path.join(workdir, name)
    rcond = setup.config.rcond[0]
    rows, overlap_rows = (at_cutoff(t.rows, rcond) for t in (table, overlap))
    window_rows = at_cutoff(windows.rows, rcond)
    if rows:
        plots.accuracy_vs_epoch(rows, out("fig_accuracy_vs_epoch.png"),
                                "finetuned" if setup.config.finetune_epochs else "pruned",
                                f"{setup.spec.name} on {setup.dataset.name}")
    if overlap_rows:
        plots.overlap_vs(overlap_rows, "prune_epoch", out("fig_overlap_vs_epoch.png"), "epoch of the window",
                         title=f"{setup.spec.name} on {setup.dataset.name}")
    if window_rows:
        plots.lambda_vs_epoch(window_rows, out("fig_lambda_vs_epoch.png"),
                              f"{setup.spec.name} on {setup.dataset.name}")
    if sliding.rows:
        plots.sliding_windows(sliding.rows, sliding_distances.rows, out("fig_sliding.png"),
                              f"{setup.spec.name} on {setup.dataset.name}")
    d = spline_eb.matrix(splines.rows, setup.seeds[0], epochs)
    if splines.rows and not np.isnan(d).any():
        plots.distance_map(d, epochs, out("fig_spline_distance.png"),
                           f"{setup.spec.name}: region-code distance, seed {setup.seeds[0]}")
    if spectra:
        plots.spectra_by(spectra, out("fig_spectra.png"), "epoch",
                         f"Koopman spectra, {setup.spec.name} on {setup.dataset.name}, seed {setup.seeds[0]}")
    return summary


main = cli.summary_main(EarlyConfig, run)


if __name__ == "__main__":
    cli.define_flags(EarlyConfig, default_workdir="runs/early")
    cli.run_main(main)
