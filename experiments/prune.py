r"""Compare Koopman pruning (KMP, KGP) with GMP and gradient pruning (the paper's Fig. 1).

For each seed: a dense model (from --init_checkpoint, or trained for
--pretrain_epochs with the --train_* optimizer), then --trajectory_steps
steps with the fine-tuning optimizer (--finetune_*) recording Θ, one
Koopman fit; then for every method and
compression: prune θ(t₂) (the params at the end of the window, which every
method prunes), evaluate, fine-tune --finetune_epochs, evaluate again.

  python -m experiments.prune                      # MnistNet, embedded MNIST
  python -m experiments.prune --init_checkpoint=../shared/data/pretrained/mnistnet.pt --seeds=0,1,2
  python -m experiments.prune --model=resnet20 --data_dir=~/data/cifar10 \
      --init_checkpoint=../shared/data/pretrained/resnet20.th

From Python: `run(PruneConfig(seeds=(0, 1)), workdir)`.

Writes to --workdir: results.csv / results.json (one row per
model/method/rcond/compression/seed/phase; rcond: the rank cutoff of the
scores, empty for methods that read no fit), overlap.csv / overlap.json
(Jaccard of kept sets of each Koopman method and its baseline, `other`),
windows.csv / .json (the Koopman fit, one row per cutoff), shifts.csv /
.json (with --eval_shifts: top-1 per shift and severity), agreement.csv
(kept sets of two seeds, with --init_checkpoint), summary.md (mean ± std
over seeds), fig_accuracy.png,
fig_overlap.png, fig_spectrum.png. A rerun with the same
--workdir skips finished cells; files are replaced atomically.

May import: absl, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os

from absl import logging

from experiments import cell, cli, common, koopman_window, pipeline, plots, report, resources
from experiments.config import PruneConfig
from experiments.results import (ResultTable, at_cutoff, atomic_write_text, fmt_pm, group_mean_std,
                                 markdown_table, rows_to_csv)
from experiments.workdir import claim
from kpjax import koopman, models
from kpjax.train import loop
from kpjax.flatten import count_params

_CELL = ("model", "method", "rcond", "compression", "seed")
_OVERLAP = ("model", "method", "rcond", "other", "compression", "seed")
_WINDOW = ("model", "seed", "rcond")
_SHIFT = (*_CELL, "phase", "shift", "severity")


def _dense_variables(setup: pipeline.Setup, seed: int, workdir: str):
    """The dense model of this seed: loaded, or pretrained (checkpointed every
    epoch, so a killed pretraining resumes)."""
    config = setup.config
    if config.init_checkpoint:
        return common.load_variables(config.init_checkpoint, setup.spec)
    variables = models.init_variables(setup.spec, seed)
    if config.pretrain_epochs == 0:
        return variables
    tx = config.train.optimizer(setup.steps_per_epoch)
    state = setup.state(variables, seed, tx=tx)
    checkpointing = loop.Checkpointing(
        os.path.abspath(os.path.join(workdir, f"seed{seed}", "dense")),
        every=setup.steps_per_epoch, metadata={"model": setup.spec.name, "seed": seed})
    state = common.run_steps(setup.train_step(tx), state, setup.stream(seed, pipeline.PRETRAIN),
                             config.pretrain_epochs * setup.steps_per_epoch,
                             f"seed {seed} pretrain", checkpointing, job=setup.job)
    return pipeline.variables_of(state)


def seed_window(setup: pipeline.Setup, seed: int, steps: int, workdir: str) -> koopman_window.Window:
    """The seed's recorded window (cached in `workdir`): the dense model, T steps, the fit."""
    path = os.path.join(workdir, f"seed{seed}", "window.npz")
    cached = koopman_window.cached_window(setup, path)
    if cached is not None:
        return cached
    state = setup.state(_dense_variables(setup, seed, workdir), seed)
    start = setup.evaluate(state)
    logging.info("seed %d: the dense network at the window's start (%s): top-1 %.2f %%", seed,
                 "imported, before any training" if setup.config.init_checkpoint else "pretrained",
                 100 * start["top1"])
    return koopman_window.record_window(setup, state, setup.finetune_step,
                                  setup.stream(seed, pipeline.WINDOW)(), steps, seed, path,
                                  f"seed {seed}", top1_start=start["top1"])


def _start_kind(config: PruneConfig) -> str:
    """What θ(t₁), the window's start, is: the imported or the pretrained network."""
    return "imported" if config.init_checkpoint else "pretrained"


def _summary(setup: pipeline.Setup, steps: int, all_rows, all_overlap, all_windows, timings=(),
             agreement=(), controls=(), shift_rows=()) -> str:
    config = setup.config
    # The tables at the run's cutoff; the other cutoffs feed the sensitivity sections only.
    rows, overlap_rows, window_rows = (at_cutoff(t, config.rcond[0])
                                       for t in (all_rows, all_overlap, all_windows))
    stats = {k: group_mean_std(rows, ("method", "compression", "phase"), k)
             for k in ("top1", "speedup", "compression_achieved", "measured_speedup")}
    methods = [m for m in setup.methods if any(r["method"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    params = setup.variables0["params"]
    out = [f"# Pruning {setup.spec.name} on {setup.dataset.name}", "",
           report.reading(rows, [p for p in pipeline.PAIRS if p[0] in methods and p[1] in methods]),
           "",
           f"Seeds {seeds} (n = {len(seeds)}); window T = {steps} steps; fine-tuning "
           f"{config.finetune_epochs} epoch(s) at lr {config.finetune.lr:g}; classifier "
           f"{'pruned' if config.prune_classifier else 'kept dense'}. Top-1 % as mean ± std over "
           "seeds (std when n > 1).", "",
           f"Model: {count_params(params):,} parameters, {count_params(params, setup.select):,} "
           f"prunable; {sum(setup.flops.values()):,} multiply-adds per example (conv/dense).", "",
           *report.data_line(setup.dataset.name, setup.dataset.source)]
    if window_rows:
        lam = group_mean_std(window_rows, (), "lambda1_real")
        dist = group_mean_std(window_rows, (), "lambda1_distance")
        out += [f"Koopman fit: rank cutoff rcond = {config.rcond[0]:g} (σᵢ > rcond·σ_max), "
                f"Re λ₁ {fmt_pm(lam.get(()), 1.0, 6)}, |λ₁ − 1| = {report.sci(dist.get(()))}; "
                "rank, energy, separation and residual at every cutoff below (\"The Koopman fit "
                "at each rank cutoff\").", ""]
    dense = group_mean_std([r for r in rows if r["method"] == "dense"], ("phase",), "top1")
    start = group_mean_std(window_rows, (), "top1_start").get(())
    if start is not None:
        out += [f"Unpruned θ(t₁) (the window's start: the {_start_kind(config)} network): top-1 "
                f"{fmt_pm(start)} %", ""]
    if dense:
        out += [f"Unpruned θ(t₂) (end of the window): top-1 {fmt_pm(dense.get(('dense',)))} %"
                + (f"; fine-tuned unpruned for the same steps: {fmt_pm(dense[('finetuned',)])} %"
                   if ("finetuned",) in dense else ""), ""]
    for phase, title in (("pruned", "Immediately after pruning"), ("finetuned", "After refinement")):
        control = phase == "finetuned" and ("finetuned",) in dense
        body = [[f"{c:g}"] + [fmt_pm(stats["top1"].get((m, c, phase))) for m in methods]
                + ([fmt_pm(dense[("finetuned",)])] if control else [])
                for c in setup.compressions
                if any((m, c, phase) in stats["top1"] for m in methods)]
        if body:
            header = ["compression"] + methods + (["dense, fine-tuned alike"] if control else [])
            out += [f"## {title}", "", markdown_table(header, body), ""]
    # Each method's own masks: the speedup (ShrinkBench's dense FLOPs / FLOPs
    # left) differs between methods at one compression.
    body = []
    for c in setup.compressions:
        cells = []
        for m in methods:
            speed, achieved = stats["speedup"].get((m, c, "pruned")), stats["compression_achieved"].get((m, c, "pruned"))
            measured = stats["measured_speedup"].get((m, c, "pruned"))
            cells.append("–" if speed is None else f"{speed[0]:.2f}× (c = {achieved[0]:.2f})"
                         + ("" if measured is None else f", measured {measured[0]:.2f}×"))
        if any(x != "–" for x in cells):
            body.append([f"{c:g}"] + cells)
    if body:
        out += ["## Theoretical speedup and achieved compression of each method's masks", "",
                "FLOPs of the dense network over those left (conv/dense multiply-adds, "
                "ShrinkBench's definition); mean over seeds."
                + (" Filter granularity: the FLOPs of the shrunk network (the next layers' "
                   "inputs from removed units go too), and the measured inference speedup of the "
                   "shrunk network at the training batch size (kpjax.pruning.structured.shrink; median of "
                   "3 alternating rounds on this run's cores)." if setup.filter_granularity else ""),
                "",
                markdown_table(["compression"] + methods, body), ""]
    if config.eval_shifts:
        phases = ("finetuned", "finetuned") if config.finetune_epochs else ("pruned", "dense")
        out += report.shift_section(rows, shift_rows, methods, setup.compressions, phases[0],
                                    config.prune_potential_delta,
                                    min(config.shift_examples, len(setup.dataset.test_labels)),
                                    reference_phase=phases[1])
    out += report.fit_table(all_windows, config.rcond, koopman.DEFAULT_CLUSTER_TOL)
    out += report.cutoff_sensitivity(all_rows, all_overlap, pipeline.PAIRS, setup.compressions,
                                     config.rcond)
    if overlap_rows:
        ov = group_mean_std(overlap_rows, ("method", "other", "compression"), "jaccard")
        pairs = sorted({(r["method"], r["other"]) for r in overlap_rows})
        body = [[f"{c:g}"] + [fmt_pm(ov.get((*p, c)), scale=1.0, digits=4) for p in pairs]
                for c in setup.compressions]
        out += ["## Jaccard overlap of kept parameters", "",
                markdown_table(["compression"] + [f"{a} vs {b}" for a, b in pairs], body), ""]
    out += _agreement_table(setup, agreement)
    out += _controls_section(setup, rows, controls)
    return "\n".join(out + report.provenance(timings))


def _controls_section(setup: pipeline.Setup, rows, controls) -> list[str]:
    if not controls:
        return []
    config = setup.config
    refined = group_mean_std([r for r in rows if r["phase"] == "finetuned"], ("method", "compression"), "top1")
    out = []
    reinit = group_mean_std([r for r in controls if r["phase"] == "reinit"], ("method", "compression"), "top1")
    if reinit:
        body = [[m, f"{c:g}", fmt_pm(refined.get((m, c))), fmt_pm(reinit.get((m, c)))]
                for m in setup.methods for c in setup.compressions if (m, c) in reinit]
        out += ["## Retrain from scratch (the --controls=reinit control)", "",
                f"The same mask on re-initialized weights, trained {config.pretrain_epochs} + "
                f"{config.finetune_epochs} epoch(s) with the training optimizer, beside the pruned "
                "and refined network (top-1 %, mean ± std over seeds; controls.csv).", "",
                markdown_table(["method", "compression", "pruned + refined", "retrained from scratch"],
                               body), ""]
    small = [r for r in controls if r["phase"] == "small_dense"]
    if small:
        stats = group_mean_std(small, ("compression",), "top1")
        shape = {r["compression"]: r for r in small}
        body = [[f"{c:g}", f"{shape[c]['compression_achieved']:.2f}", f"{shape[c]['width_factor']:.3f}",
                 fmt_pm(stats.get((c,)))] + [fmt_pm(refined.get((m, c))) for m in setup.methods]
                for c in setup.compressions if c in shape]
        out += ["## A small dense network of the same size (the --controls=small_dense control)", "",
                "Every hidden width scaled by one factor so that the dense network has at most the "
                "parameters a pruned cell keeps, trained from scratch for "
                f"{config.pretrain_epochs} + {config.finetune_epochs} epoch(s) with the training "
                "optimizer; beside each method's pruned and refined network (top-1 %, mean ± std "
                "over seeds; controls.csv).", "",
                markdown_table(["compression", "small dense: compression", "width ×", "small dense"]
                               + [f"{m} pruned + refined" for m in setup.methods], body), ""]
    return out


def run(config: PruneConfig, workdir: str) -> str:
    """Runs (or resumes) the comparison in `workdir`; returns summary.md's text.

    With `config.summarize_only`, trains nothing: rewrites summary.md and the
    figures from the workdir's result files.
    """
    resources.check_resources(config)
    setup = pipeline.Setup(config)
    steps = config.trajectory_steps or setup.steps_per_epoch
    if config.summarize_only:
        pipeline.check_workdir(workdir, config, write=False)
        tables = _tables(workdir)
        for seed in setup.seeds:
            cell.repair_cell_metrics(setup, lambda: koopman_window.cached_window(
                setup, os.path.join(workdir, f"seed{seed}", "window.npz")), workdir, tables[0], seed=seed)
        window = koopman_window.cached_window(setup, os.path.join(workdir, f"seed{setup.seeds[0]}", "window.npz"))
        return _write_outputs(setup, steps, workdir, *tables, None if window is None else window.eigenvalues)
    with claim(workdir):
        pipeline.check_workdir(workdir, config)
        table, overlap, windows, shifts = _tables(workdir)
        controls = _controls_table(workdir)
        model = setup.spec.name
        cells = [(s, v, c) for s in setup.seeds for v in setup.scored for c in setup.compressions]
        todo = [x for x in cells if not table.done(model=model, method=x[1].method, rcond=x[1].rcond,
                                                   compression=x[2], seed=x[0])]
        logging.info("%s on %s: %d cells, %d to do; workdir %s", model, setup.dataset.name,
                     len(cells), len(todo), workdir)
        sensitivity = sum(x[1] in setup.sensitivity for x in todo)
        _plan(setup, steps, workdir, table, len(todo) - sensitivity, sensitivity)
        setup.job.plan(len(_controls_todo(setup, controls)) * (
            (config.pretrain_epochs + config.finetune_epochs) * setup.steps_per_epoch
            + setup.eval_units))
        progress = common.Progress(len(todo), "cells", every_s=0.0)
        spectrum = None
        for seed in setup.seeds:
            window = seed_window(setup, seed, steps, workdir)
            cell.repair_cell_metrics(setup, lambda: window, workdir, table, seed=seed)
            if spectrum is None:
                spectrum = window.eigenvalues
            if not table.done(model=model, method="dense", rcond=None, compression=1.0, seed=seed):
                cell.add_cell(table, setup, window, workdir, cell.dense_cell(setup, window, seed),
                              shifts)
            windows.add_missing(cell.window_rows(setup, window, seed))
            overlap.add_missing(cell.overlap_rows(setup, window, seed))
            for _, variant, c in [x for x in todo if x[0] == seed]:
                cell.add_cell(table, setup, window, workdir,
                              cell.run_cell(setup, window, variant, c, seed), shifts)
                progress.update(1)
            for s, variant, c, phase in _controls_todo(setup, controls):
                if s == seed and phase == "reinit":
                    controls.add(cell.reinit_cell(setup, window, variant, c, seed))
                elif s == seed:
                    controls.add(cell.small_dense_cell(setup, c, seed))
        return _write_outputs(setup, steps, workdir, table, overlap, windows, shifts, spectrum)


def _tables(workdir: str) -> tuple[ResultTable, ...]:
    """results (with timings), overlap, windows and shifts."""
    return (ResultTable(workdir, _CELL, timing_columns=("seconds",)),
            ResultTable(workdir, _OVERLAP, stem="overlap"),
            ResultTable(workdir, _WINDOW, stem="windows"),
            ResultTable(workdir, _SHIFT, stem="shifts"))


def _controls_table(workdir: str) -> ResultTable:
    return ResultTable(workdir, (*_CELL, "phase"), stem="controls")


def _controls_todo(setup: pipeline.Setup, controls: ResultTable) -> list[tuple]:
    """(seed, method, compression, phase) of the control cells not done yet:
    reinit per pruned cell, small_dense per compression (method small_dense)."""
    cells = []
    for seed in setup.seeds:
        if "reinit" in setup.config.controls:
            cells += [(seed, v, c, "reinit") for v in setup.variants for c in setup.compressions]
        if "small_dense" in setup.config.controls:
            cells += [(seed, pipeline.Variant("small_dense"), c, "small_dense")
                      for c in setup.compressions]
    return [x for x in cells if not controls.done(model=setup.spec.name, method=x[1].method,
                                                  rcond=x[1].rcond, compression=x[2], seed=x[0],
                                                  phase=x[3])]


def _plan(setup: pipeline.Setup, steps: int, workdir: str, table: ResultTable, cells: int,
          sensitivity: int) -> None:
    """The run's work for the job clock: what is not cached yet."""
    config = setup.config
    for seed in setup.seeds:
        if not os.path.exists(os.path.join(workdir, f"seed{seed}", "window.npz")):
            pretrain = 0 if config.init_checkpoint else config.pretrain_epochs * setup.steps_per_epoch
            setup.job.plan(pretrain + steps + setup.eval_units)
        if not table.done(model=setup.spec.name, method="dense", rcond=None, compression=1.0,
                          seed=seed):
            setup.plan_cells(1)
    setup.plan_cells(cells, sensitivity)


def _agreement(setup: pipeline.Setup, workdir: str) -> list[dict]:
    """`cell.seed_agreement` of the cached windows, written to agreement.csv;
    only with one dense model for every seed (--init_checkpoint): seeds that
    each train their own network share no weights to agree on."""
    if not setup.config.init_checkpoint or len(setup.seeds) < 2:
        return []
    windows = {}
    for seed in setup.seeds:
        window = koopman_window.cached_window(setup, os.path.join(workdir, f"seed{seed}", "window.npz"))
        if window is not None:
            windows[seed] = window
    rows = cell.seed_agreement(setup, windows) if len(windows) > 1 else []
    if rows:
        atomic_write_text(os.path.join(workdir, "agreement.csv"), rows_to_csv(rows))
    return rows


def _agreement_table(setup: pipeline.Setup, rows) -> list[str]:
    if not rows:
        return []
    stats = group_mean_std(rows, ("method", "rcond", "compression"), "jaccard")
    scored = [v for v in setup.scored if any((*v, c) in stats for c in setup.compressions)]
    body = [[v.method if v in setup.variants else f"{v.method} (rcond {v.rcond:g})"]
            + [fmt_pm(stats.get((*v, c)), 1.0, 4) for c in setup.compressions] for v in scored]
    return ["## Agreement across seeds", "",
            "Jaccard overlap of one method's kept sets between two seeds (mean ± std over the "
            "pairs): every seed prunes the same dense model after its own window, so 1 means "
            "the mask does not depend on the window's batches (agreement.csv).", "",
            markdown_table(["method"] + [f"c = {c:g}" for c in setup.compressions], body), ""]


def _write_outputs(setup, steps, workdir, table, overlap, windows, shifts, spectrum) -> str:
    agreement = _agreement(setup, workdir)
    summary = _summary(setup, steps, table.rows, overlap.rows, windows.rows,
                       table.timings.rows if table.timings else (), agreement,
                       _controls_table(workdir).rows, shifts.rows)
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    title = f"{setup.spec.name} on {setup.dataset.name}"
    rcond = setup.config.rcond[0]
    main_rows = at_cutoff(table.rows, rcond)
    main_overlap = at_cutoff(overlap.rows, rcond)
    start = group_mean_std(at_cutoff(windows.rows, rcond), (), "top1_start").get(())
    if main_rows:
        plots.accuracy_vs_compression(
            main_rows, os.path.join(workdir, "fig_accuracy.png"), title,
            start=None if start is None else start[0],
            start_label=f"unpruned θ(t₁), {_start_kind(setup.config)}")
    if main_overlap:
        plots.overlap_vs(main_overlap, "compression", os.path.join(workdir, "fig_overlap.png"),
                         "compression ratio", log2=True, title=title)
    if spectrum is not None:
        plots.spectrum(spectrum, os.path.join(workdir, "fig_spectrum.png"),
                       f"Koopman spectrum, {title}, seed {setup.seeds[0]}")
    return summary


main = cli.summary_main(PruneConfig, run)


if __name__ == "__main__":
    cli.define_flags(PruneConfig, default_workdir="runs/prune")
    cli.run_main(main)
