r"""Pruning during training: one-shot, gradual (Zhu & Gupta 2017), IMP with
rewinding (Frankle et al. 2020), SET and RigL (Evci et al. 2020), each with
the same number of training steps from the same initialization, against the
dense run; magnitude or Koopman scores (`kpjax.pruning.schedules`,
`.gradual`, `.dynamic`).

Each seed's run starts from the model initialized with the seed and trains
B = --epochs · S steps with --train_* (S steps an epoch), seeing the seed's
batch order. At each final sparsity s_f of --sparsities:

  oneshot:<m>  prunes once to s_f at step t_end with method m;
  gradual:<m>  prunes at t₀ + kΔt, k = 1 … n, to s_t = s_f − s_f(1 − k/n)³
               (Zhu & Gupta's cubic with s_i = 0), t₀ = --prune_begin,
               Δt = --prune_every, n = ⌊(--prune_end − t₀)/Δt⌋, t_end = t₀ + nΔt;
  imp:<m>      R = --imp_rounds prunings of the same fraction of the survivors,
               each after training to step L, then the whole training state
               (weights, optimizer, BatchNorm statistics, batch position) is
               rewound to step k = --imp_rewind_step with the new mask;
               L = (B + R·k)/(R + 1) so that L + R(L − k) ≈ B steps in all;
  rigl, set    train at s_f from step 0 (every prunable tensor at s_f, a
               random mask), dropping the smallest-|θ| weights and growing
               by |∂L/∂θ| (RigL) or at random (SET) every ΔT = --rigl_every
               steps, fraction (α/2)(1 + cos(πt/T_end)), T_end = --rigl_end·B.

Each mask keeps only weights the previous one kept (m_t ⊆ m_{t−1}); a
method reading a trajectory (kmp, kgp) is fitted on the --window_steps steps
before each point (θ(p − w) … θ(p)), recorded by the training steps
themselves. All runs are evaluated after their last step.

  python -m experiments.gradual                                 # MnistNet, 3 seeds
  python -m experiments.gradual --model=resnet20 --data_dir=PATH/cifar10-jpeg.tar.gz --seeds=0

Writes to --workdir: results.csv/json (one row per schedule/method/sparsity/
seed: test top-1 and loss after training, the sparsity reached, the steps),
points.csv/json (each pruning point: step, target and reached sparsity, the
window's λ₁ and its separation), summary.md, fig_sparsity.png; with
--tensorboard, event files under tensorboard/; with --export, each run's
pruned model under exports/ (`kpjax.pruning.export_pruned`). Reruns resume
cell by cell.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import cli, early, koopman_window, pipeline, plots, report, resources
from experiments.config import FIXED_SPARSITY, GradualConfig, parse_schedule
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from experiments.workdir import claim
from kpjax import flatten, koopman, models, parallel, pruning, train
from kpjax.io import metric_writer
from kpjax.pruning import dynamic, gradual, schedules
from kpjax.train import recording

CELL = ("model", "schedule", "method", "rcond", "sparsity", "seed")
POINT = CELL + ("step",)
SCORING = 4  # batch-order purpose of the scoring batches (experiments.init's)


def _needs_window(method: str) -> bool:
    return "snapshots" in pruning.get_method(method).needs


class Plan:
    """The run's steps: B, the gradual points, IMP's round length; checked
    against the windows before any training starts."""

    def __init__(self, setup: pipeline.Setup):
        self.config = c = setup.config
        per_epoch = setup.steps_per_epoch
        self.total = c.epochs * per_epoch
        self.begin = int(round(c.prune_begin * per_epoch))
        self.count = (int(round(c.prune_end * per_epoch)) - self.begin) // c.prune_every
        kinds = {parse_schedule(e)[0] for e in c.schedules}
        if self.count < 1 and kinds & {"oneshot", "gradual"}:
            raise ValueError(f"--prune_every {c.prune_every} leaves no pruning point between "
                             f"--prune_begin {c.prune_begin:g} and --prune_end {c.prune_end:g} "
                             f"(steps {self.begin}–{int(round(c.prune_end * per_epoch))})")
        self.end = self.begin + self.count * c.prune_every
        rounds, k = c.imp_rounds, c.imp_rewind_step
        self.round_steps = int(round((self.total + rounds * k) / (rounds + 1)))
        windowed = [e for e in c.schedules if parse_schedule(e)[0] not in FIXED_SPARSITY
                    and _needs_window(parse_schedule(e)[1])]
        w = c.window_steps
        if windowed and "gradual" in kinds and w > c.prune_every:
            raise ValueError(f"--window_steps {w} exceeds --prune_every {c.prune_every}: each window must "
                             "end at its point and start after the previous one")
        if windowed and w > self.begin + c.prune_every:
            raise ValueError(f"--window_steps {w} is longer than the steps recorded before the first "
                             f"pruning point (step {self.begin + c.prune_every})")
        if "imp" in kinds and self.round_steps - k < max(2, w if windowed else 2):
            raise ValueError(f"IMP: rounds of {self.round_steps} steps rewound to step {k} leave "
                             f"{self.round_steps - k} steps per round; use fewer --imp_rounds, a smaller "
                             "--imp_rewind_step or more --epochs")

    def schedule(self, kind: str, sparsity: float) -> schedules.SparsitySchedule | None:
        c = self.config
        if kind == "oneshot":
            return schedules.one_shot(sparsity, self.end)
        if kind == "gradual":
            return schedules.polynomial(sparsity, begin=self.begin, every=c.prune_every, count=self.count)
        if kind == "imp":
            return schedules.iterative(sparsity, c.imp_rounds, self.round_steps, c.imp_rewind_step)
        return None


def _lambda1(fit) -> tuple[complex, float]:
    """λ₁ (closest to 1) of a window's fit and its separation from the rest."""
    fit = jax.tree_util.tree_map(np.asarray, fit)
    lam1 = complex(fit.eigenvalues[koopman.fixed_point_index(fit)])
    return lam1, koopman.fixed_point_separation(fit.eigenvalues[fit.valid])


class Writer:
    """TensorBoard scalars of one cell (a no-op without --tensorboard)."""

    def __init__(self, workdir: str, enabled: bool, name: str):
        self.writer = None
        if enabled and parallel.is_primary():  # every process logs the same scalars
            self.writer = metric_writer.open_writer(os.path.join(workdir, "tensorboard", name))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.write(step, values)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_cell(setup: pipeline.Setup, plan: Plan, entry: str, sparsity: float, seed: int,
             workdir: str) -> tuple[list[dict], list[dict]]:
    """Trains one run from scratch under its schedule; its result row and points."""
    started = time.time()
    config = setup.config
    kind, method = _parse(entry)
    tx = config.train.optimizer(setup.steps_per_epoch)
    step_fn = setup.train_step(tx)
    variables = models.init_variables(setup.spec, seed)
    mask0 = None
    if kind in FIXED_SPARSITY:
        mask0 = dynamic.fixed_sparsity_mask(variables["params"], setup.select, sparsity,
                                            jax.random.PRNGKey(seed * 1000 + 7),
                                            distribution=config.rigl_distribution)
    state = setup.state(variables, seed, tx=tx, mask=mask0)
    schedule = plan.schedule(kind, sparsity)
    total = schedules.total_steps(schedule, plan.round_steps) if kind == "imp" else plan.total
    windowed = kind not in FIXED_SPARSITY and kind != "dense" and _needs_window(method)
    recorder = recording.make_recording_train_step(step_fn, setup.select) if windowed else None
    update = dynamic.update_fraction(config.rigl_alpha, update_end(config, plan))
    name = f"{entry.replace(':', '-')}-s{sparsity:g}-seed{seed}"
    writer = Writer(workdir, config.tensorboard, name)
    key = _cell_key(setup, entry, sparsity, seed)
    point_rows = []
    stream = setup.stream(seed, pipeline.PRETRAIN)
    position = 0  # the step of the run's own schedule (IMP rewinds it to k)
    batches = stream(0)
    at_k, theta = None, None
    # Points that prune (the gradual schedule's first, at t₀, has target 0).
    points = [] if schedule is None else [p for p, t in zip(schedule.points, schedule.targets) if t > 0]
    for taken in range(total):
        if schedule is not None and schedule.rewind_step == position and at_k is None:
            at_k = early._copy(state)
        upcoming = next((p for p in points if p > taken), None)
        x, y = next(batches)
        if windowed and upcoming is not None and upcoming - config.window_steps <= taken:
            if theta is None:
                flat, _ = flatten.ravel_selected(state.params, setup.select)
                theta = recording.first_snapshots(flat, config.window_steps + 1)
            index = taken + 1 - (upcoming - config.window_steps)
            state, theta, metrics = recorder(state, x, y, theta, jnp.int32(index))
        else:
            state, metrics = step_fn(state, x, y)
        position += 1
        setup.job.tick()
        step = taken + 1
        if config.tensorboard and step % 50 == 0:
            writer.scalars(step, {"train/loss": metrics["loss"], "train/top1": metrics["top1"]})
        if kind in FIXED_SPARSITY and step % config.rigl_every == 0 and step < update_end(config, plan):
            state = _dynamic_update(setup, state, tx, kind, float(update(step)), x, y, seed, step)
        if step not in points:
            continue
        target = schedule.target_at(step)
        inputs = pruning.PruneInputs(state.params, setup.select, rng=jax.random.PRNGKey(seed * 1000 + step))
        lam, separation = None, float("nan")
        if windowed:
            fit = koopman.fit_trajectory(theta, rcond=config.rcond[0])
            inputs = inputs._replace(snapshots=theta, spec=setup.flat_spec, fit=fit)
            lam, separation = _lambda1(fit)
            theta = None
        if set(pruning.get_method(method).needs) & pruning.BATCH_INPUTS:
            scoring = stream_batches(setup, seed, step)
            inputs = koopman_window.with_scoring_batches(setup, inputs, state.batch_stats, scoring)
        mask = gradual.sparsity_mask(method, inputs, target, state.mask)
        state = train.replace_mask(state, mask, tx)
        reached = pruning.sparsity_of(mask, setup.select)
        point_rows.append({**key, "step": step, "target": target, "reached": reached,
                           "lambda1_abs": abs(lam) if lam is not None else float("nan"),
                           "lambda1_separation": separation})
        writer.scalars(step, {"sparsity/total": reached,
                              **({"koopman/lambda1_abs": abs(lam), "koopman/lambda1_distance": abs(lam - 1),
                                  "koopman/lambda1_separation": separation} if lam is not None else {}),
                              **{f"sparsity/{k}": v for k, v in layer_sparsity(state.params, mask,
                                                                               setup.select).items()}})
        if schedule.rewind_step is not None:  # IMP: back to step k, with the new mask
            state = train.replace_mask(early._copy(at_k), mask, tx)
            position = schedule.rewind_step
            batches = stream(position)
    result = setup.evaluate(state)
    writer.scalars(total, {"test/top1": result["top1"], "test/loss": result["loss"]})
    writer.close()
    if config.export:
        target = os.path.join(workdir, "exports", name)
        shutil.rmtree(target, ignore_errors=True)  # an earlier attempt at this cell that did not finish
        pruning.export_pruned(target, state.params, state.mask,
                              **({"batch_stats": state.batch_stats} if state.batch_stats else {}))
    reached = pruning.sparsity_of(state.mask, setup.select)
    row = {**key, "phase": "trained", "top1": result["top1"], "top5": result["top5"],
           "test_loss": result["loss"], "reached": reached, "steps": total,
           "compression_achieved": pruning.compression_ratio(state.params, state.mask),
           "seconds": time.time() - started}
    logging.info("seed %d %s s=%g: top-1 %.2f%% at sparsity %.4f after %d steps", seed, entry,
                 sparsity, 100 * result["top1"], reached, total)
    return [row], point_rows


def _parse(entry: str) -> tuple[str, str]:
    """(schedule kind, method) of a --schedules entry, or of the dense run."""
    return ("dense", "dense") if entry == "dense" else parse_schedule(entry)


def _cell_key(setup: pipeline.Setup, entry: str, sparsity: float, seed: int) -> dict:
    """The result-table key of a cell (the dense run at sparsity 0)."""
    kind, method = _parse(entry)
    variant = setup.variant(method) if kind not in ("dense", *FIXED_SPARSITY) else pipeline.Variant(method)
    return {"model": setup.spec.name, "schedule": kind, **variant._asdict(),
            "sparsity": sparsity if kind != "dense" else 0.0, "seed": seed}


def update_end(config: GradualConfig, plan: Plan) -> int:
    """T_end of SET/RigL: the last step (exclusive) with mask updates."""
    return max(1, int(config.rigl_end * plan.total))


def stream_batches(setup: pipeline.Setup, seed: int, step: int) -> list:
    stream = setup.stream(seed, SCORING)(step)
    return [next(stream) for _ in range(setup.config.score_batches)]


def layer_sparsity(params, mask, select) -> dict[str, float]:
    """Each prunable leaf's sparsity (`pruning.sparsity_report`)."""
    layers = pruning.sparsity_report(params, mask)["layers"]
    return {"/".join(path): layers["/".join(path)]["sparsity"]
            for (path, _), s in zip(flatten.paths_and_leaves(select), jax.tree_util.tree_leaves(select)) if s}


def _dynamic_update(setup, state, tx, kind, fraction, x, y, seed, step):
    """One SET/RigL drop-and-grow on the current batch."""
    if kind == "rigl":
        _, grads = train.loss_and_grads(setup.spec.module.apply, state.params, state.batch_stats,
                                        setup.normalize(x), y)
        scores = dynamic.rigl_grow_scores(grads)
    else:
        scores = dynamic.set_grow_scores(state.params, jax.random.PRNGKey(seed * 100_003 + step))
    mask, _ = dynamic.drop_and_grow(state.params, state.mask, setup.select, fraction, scores)
    return train.replace_mask(state, mask, tx)


def _label(kind: str, method: str) -> str:
    return kind if kind in FIXED_SPARSITY or kind == "dense" else f"{kind} {report.name(method)}"


def _summary(setup: pipeline.Setup, plan: Plan, rows, point_rows, timings=()) -> str:
    config = setup.config
    stats = group_mean_std(rows, ("schedule", "method", "sparsity"), "top1")
    entries = [parse_schedule(e) for e in config.schedules]
    dense = fmt_pm(stats.get(("dense", "dense", 0.0)))
    body = [[f"{s:g}"] + [fmt_pm(stats.get((k, m, s))) for k, m in entries] + [dense]
            for s in config.sparsities]
    kinds = {k for k, _ in entries}
    protocol = [f"Seeds {list(setup.seeds)}; every run trains from the seed's initialization for "
                f"{plan.total} steps ({config.epochs} epochs of {setup.steps_per_epoch}) with SGD lr "
                f"{config.train.lr:g}, momentum {config.train.momentum:g}, batch {config.batch_size}."]
    if "oneshot" in kinds:
        protocol.append(f"One-shot prunes at step {plan.end}.")
    if "gradual" in kinds:
        steps = [plan.begin + k * config.prune_every for k in range(1, plan.count + 1)]
        shown = ", ".join(map(str, steps)) if len(steps) <= 4 else f"{steps[0]}, {steps[1]}, …, {steps[-1]}"
        protocol.append(f"Gradual prunes at steps {shown} (Zhu & Gupta's cubic from "
                        f"t₀ = {plan.begin}, Δt = {config.prune_every}).")
    if "imp" in kinds:
        rewound = plan.round_steps - config.imp_rewind_step
        protocol.append(f"IMP: {config.imp_rounds} prunings of the same fraction of the survivors after "
                        f"training to step {plan.round_steps}, each rewinding the training state to step "
                        f"{config.imp_rewind_step}: {plan.round_steps} + {config.imp_rounds}·{rewound} = "
                        f"{plan.round_steps + config.imp_rounds * rewound} steps.")
    if kinds & set(FIXED_SPARSITY):
        spread = ("every prunable tensor at the final sparsity" if config.rigl_distribution == "uniform"
                  else "the final sparsity spread by the Erdős–Rényi-Kernel rule")
        protocol.append(f"SET/RigL: {spread} from step 0 (random mask), drop-and-grow every "
                        f"{config.rigl_every} steps, α = {config.rigl_alpha:g}, "
                        f"until step {update_end(config, plan)}.")
    if any(_needs_window(m) for k, m in entries if k not in FIXED_SPARSITY):
        protocol.append(f"Koopman scores: exact DMD of the {config.window_steps} steps before each "
                        f"point, rank cutoff rcond {config.rcond[0]:g}.")
    protocol.append("Sparsity: the pruned fraction of the prunable parameters (conv/dense kernels and "
                    f"biases{'' if config.prune_classifier else ', classifier excluded'}); each mask "
                    "nested in the previous. Test top-1 % after training, mean ± std over seeds.")
    out = [f"# Pruning during training: {setup.spec.name} on {setup.dataset.name}", "",
           " ".join(protocol), "",
           *report.data_line(setup.dataset.name, setup.dataset.source),
           "## Test top-1 after training", "",
           markdown_table(["sparsity"] + [_label(k, m) for k, m in entries] + ["dense"], body), ""]
    lam = [r for r in point_rows if np.isfinite(r.get("lambda1_abs", float("nan")))]
    if lam:
        by = group_mean_std(lam, ("schedule", "method"), "lambda1_abs")
        out += ["## The windows' λ₁", "", markdown_table(
            ["schedule", "|λ₁| mean ± std over points and seeds"],
            [[_label(k, m), fmt_pm(by.get((k, m)), 1.0, 5)] for k, m in entries if (k, m) in by]), ""]
    return "\n".join(out + report.provenance(timings))


def run(config: GradualConfig, workdir: str) -> str:
    """Runs (or resumes) the comparison in `workdir`; returns summary.md."""
    resources.check_resources(config)
    setup = pipeline.Setup(config)
    plan = Plan(setup)
    if config.summarize_only:  # before any table rewrites its CSV
        pipeline.check_workdir(workdir, config, write=False)
    table = ResultTable(workdir, CELL, timing_columns=("seconds",))
    point_table = ResultTable(workdir, POINT, stem="points")
    if not config.summarize_only:
        with claim(workdir):
            pipeline.check_workdir(workdir, config)
            cells = [("dense", 0.0)] + [(e, s) for s in config.sparsities for e in config.schedules]
            todo = []
            for seed in setup.seeds:
                for entry, s in cells:
                    if not table.done(**_cell_key(setup, entry, s, seed)):
                        todo.append((seed, entry, s))
            logging.info("%d cells, %d to do; workdir %s", len(setup.seeds) * len(cells), len(todo), workdir)
            setup.job.plan(len(todo) * plan.total)
            for seed, entry, s in todo:
                row, points = run_cell(setup, plan, entry, s, seed, workdir)
                point_table.add_missing(points)  # first: the result row marks the cell done
                table.add(row)
    summary = _summary(setup, plan, table.rows, point_table.rows, table.timings.rows if table.timings else ())
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    if table.rows:
        plots.accuracy_vs_sparsity(table.rows, os.path.join(workdir, "fig_sparsity.png"),
                                   f"{setup.spec.name}: pruning during training")
    return summary


main = cli.summary_main(GradualConfig, run)


if __name__ == "__main__":
    cli.define_flags(GradualConfig, default_workdir="runs/gradual")
    cli.run_main(main)
