r"""Pruning at initialization (Synaptic-Flow's protocol): prune θ₀, then train.

For each seed: θ₀ = the seed's initialization. Every method scores it —
random, magnitude (gmp), SNIP (on --score_batches training batches), GraSP
(as Wang et al.'s code: on θ₀ with its dense kernels re-drawn, 10 training
images per class, logits divided by its temperature 200; --grasp_scoring;
why: results/grasp_ablation_mnistnet_seeds012), iterative SynFlow
(data-free, --synflow_rounds) — and KMP scores θ(t₂) after a
--window_steps window of training from θ₀ (those steps count in its budget).
At every compression the masked network is trained for --finetune_epochs
epochs with the --train_* optimizer and evaluated. A compression at which
some prunable layer keeps no weight is marked (layer collapse).

  python -m experiments.init                                   # MnistNet, 3 seeds, c = 10^0.5 … 10^3
  python -m experiments.init --model=resnet20 --data_dir=PATH/cifar10-jpeg.tar.gz \
      --compressions=10,31.6228,100 --seeds=0

Writes to --workdir: results.csv/json (one row per method/compression/seed
and phase: "init", θ₀ masked, and "trained"), summary.md (with the layer-
collapse compression of each method), fig_accuracy.png. Reruns resume.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging

from experiments import cell, cli, common, koopman_window, pipeline, plots, report, resources
from experiments.config import GRASP_PER_CLASS, InitConfig
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from experiments.workdir import claim
from kpjax import data, koopman, models, pruning
from kpjax.pruning import saliency
from kpjax.train import recording
from kpjax.flatten import count_params

CELL = ("model", "method", "rcond", "compression", "seed")
SCORING = 4  # batch order purpose of the scoring batch and KMP's window


def _collapsed(mask, select) -> bool:
    """Whether some prunable kernel keeps no weight (a layer cut; biases alone do not cut)."""
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    return any(s and getattr(path[-1], "key", None) == "kernel" and not bool(np.any(np.asarray(m)))
               for (path, m), s in zip(leaves, jax.tree_util.tree_leaves(select)))


class Seed:
    """θ₀ of one seed and what the methods score it with."""

    def __init__(self, setup: pipeline.Setup, seed: int):
        config = setup.config
        self.setup, self.seed = setup, seed
        self.variables = models.init_variables(setup.spec, seed)
        self.tx = config.train.optimizer(setup.steps_per_epoch)
        self.step_fn = setup.train_step(self.tx)  # one compiled step for every cell of the seed
        params = self.variables["params"]
        self.plain = pruning.PruneInputs(params, setup.select, rng=jax.random.PRNGKey(seed))
        self.inputs = self._scoring_inputs(config.score_per_class, config.score_reinit_dense)
        self._grasp_inputs = None
        self._scores: dict[str, np.ndarray] = {}
        self._window = None

    def _scoring_inputs(self, per_class: int, reinit_dense: bool) -> pruning.PruneInputs:
        """θ₀ (its dense kernels re-drawn if `reinit_dense`) with the scoring
        batches: `per_class` training images per class, or --score_batches
        batches of the stream."""
        setup, seed = self.setup, self.seed
        if per_class:
            scoring = [data.class_balanced_sample(setup.dataset.train_images, setup.dataset.train_labels,
                                                  per_class, seed=seed * 1000 + SCORING)]
        else:
            stream = setup.stream(seed, SCORING)()
            scoring = [next(stream) for _ in range(setup.config.score_batches)]
        params = self.plain.params
        scored = (saliency.reinit_dense_kernels(params, jax.random.fold_in(jax.random.PRNGKey(seed), SCORING))
                  if reinit_dense else params)
        return koopman_window.with_scoring_batches(
            setup, self.plain._replace(params=scored), self.variables.get("batch_stats"), scoring)

    def inputs_of(self, method: str) -> pruning.PruneInputs:
        """What `method` scores: θ₀ if it reads no scoring batch; with
        --grasp_scoring=wang, GraSP's family scores Wang et al.'s inputs (dense
        kernels re-drawn, 10 images per class); the other data-dependent
        methods the scoring batches (θ₀, or its re-drawn copy with
        --score_reinit_dense)."""
        needs = set(pruning.get_method(method).needs)
        if "grasp_loss_fn" in needs and self.setup.config.grasp_scoring == "wang":
            if self._grasp_inputs is None:
                self._grasp_inputs = self._scoring_inputs(GRASP_PER_CLASS, True)
            return self._grasp_inputs
        return self.inputs if needs & pruning.BATCH_INPUTS else self.plain

    def window(self):
        """θ(t₂) (variables) and the flat scores of every method of the run that
        needs a trajectory (KMP, ...), after the early window."""
        if self._window is None:
            setup = self.setup
            state = setup.state(self.variables, self.seed, tx=self.tx)
            recorder = recording.make_recording_train_step(self.step_fn, setup.select)
            state, theta = recording.record_trajectory(
                recorder, state, setup.stream(self.seed, SCORING)(), setup.config.window_steps,
                setup.select)
            fit = koopman.fit_trajectory(theta, rcond=setup.config.rcond[0])
            inputs = pruning.PruneInputs(state.params, setup.select, snapshots=theta,
                                         spec=setup.flat_spec, fit=fit)
            scores = {m: np.asarray(pruning.method_flat_scores(m, inputs))
                      for m in setup.methods if _needs_window(m)}
            self._window = (pipeline.variables_of(state), scores)
        return self._window

    def mask(self, method: str, c: float):
        setup = self.setup
        params = self.variables["params"]
        total = count_params(params)
        if pruning.get_method(method).iterative_mask_fn:
            return koopman_window.iterative_mask(setup, self.variables, method, c)
        keep = pruning.method_flat_mask(method, self.flat_scores(method), setup.flat_spec, total, c)
        return pruning.mask_from_flat(keep, setup.flat_spec, params)

    def flat_scores(self, method: str) -> np.ndarray:
        """`method`'s flat scores of θ₀ (of θ(t₂) after the window if it needs one)."""
        if _needs_window(method):
            return self.window()[1][method]
        if method not in self._scores:
            self._scores[method] = np.asarray(pruning.method_flat_scores(method, self.inputs_of(method)))
        return self._scores[method]


def _needs_window(method: str) -> bool:
    """Whether `method` scores a trajectory: it is scored after a short
    window of training from θ₀ (the window's steps count in its budget)."""
    return "snapshots" in pruning.get_method(method).needs


def run_cell(setup: pipeline.Setup, one: Seed, method: str, c: float) -> list[dict]:
    """Prune at initialization with `method` at c, evaluate, train, evaluate."""
    start = time.time()
    seed = one.seed
    mask = one.mask(method, c)
    variables = one.window()[0] if _needs_window(method) else one.variables
    state = setup.state(variables, seed, tx=one.tx, mask=mask)
    collapsed = _collapsed(mask, setup.select)
    variant = setup.variant(method)
    rows = [cell.row(setup, variant, c, seed, "init", setup.evaluate(state), state.params, mask,
                     time.time() - start, layer_collapse=collapsed)]
    steps = setup.config.finetune_epochs * setup.steps_per_epoch
    if _needs_window(method):  # its window's steps are part of the budget
        steps -= setup.config.window_steps
    state = common.run_steps(one.step_fn, state, setup.stream(seed, pipeline.PRETRAIN),
                             max(steps, 0), f"seed {seed} {method} c={c:g} train", job=setup.job)
    rows.append(cell.row(setup, variant, c, seed, "trained", setup.evaluate(state), state.params,
                         mask, time.time() - start, layer_collapse=collapsed))
    logging.info("seed %d %s c=%g: top-1 %.2f%% after training%s", seed, method, c,
                 100 * rows[-1]["top1"], " (layer collapse)" if collapsed else "")
    return rows


def _summary(setup: pipeline.Setup, rows, timings=()) -> str:
    config = setup.config
    stats = group_mean_std([r for r in rows if r["phase"] == "trained"], ("method", "compression"), "top1")
    body = [[f"{c:g}"] + [fmt_pm(stats.get((m, c))) for m in setup.methods] for c in setup.compressions]
    collapse = []
    for m in setup.methods:
        cs = sorted({r["compression"] for r in rows if r["method"] == m and r["layer_collapse"]})
        collapse.append([m, f"{cs[0]:g}" if cs else "none up to " + f"{max(setup.compressions):g}"])
    params = setup.variables0["params"]
    return "\n".join([
        f"# Pruning {setup.spec.name} at initialization on {setup.dataset.name}", "",
        f"Seeds {list(setup.seeds)}; each method prunes θ₀ (KMP: θ after a {config.window_steps}-step "
        f"window from θ₀, rcond {config.rcond[0]:g}), then {config.finetune_epochs} epoch(s) of SGD "
        f"at lr {config.train.lr:g}. GraSP scores "
        + ("θ₀ with its dense kernels re-drawn on 10 training images per class (Wang et al.'s code)"
           if config.grasp_scoring == "wang" else "what the other data-dependent methods score")
        + f". Model: {count_params(params):,} parameters. Top-1 % after training, mean ± std over seeds.", "",
        *report.data_line(setup.dataset.name, setup.dataset.source),
        "## After training", "", markdown_table(["compression"] + setup.methods, body), "",
        "## Layer collapse", "",
        "The first compression at which some prunable layer keeps no weight (the network is cut).", "",
        markdown_table(["method", "first collapsing compression"], collapse), "",
        *report.provenance(timings)])


def run(config: InitConfig, workdir: str) -> str:
    """Runs (or resumes) pruning at initialization in `workdir`; returns summary.md."""
    resources.check_resources(config)
    setup = pipeline.Setup(config)
    if config.summarize_only:  # before any table rewrites its CSV
        pipeline.check_workdir(workdir, config, write=False)
    table = ResultTable(workdir, CELL, timing_columns=("seconds",))
    if not config.summarize_only:
        with claim(workdir):
            pipeline.check_workdir(workdir, config)
            todo = [(s, m, c) for s in setup.seeds for m in setup.methods for c in setup.compressions
                    if not table.done(model=setup.spec.name, **setup.variant(m)._asdict(),
                                      compression=c, seed=s)]
            setup.plan_cells(len(todo))
            for seed in setup.seeds:
                cells = [(m, c) for s, m, c in todo if s == seed]
                if cells:
                    one = Seed(setup, seed)
                    for method, c in cells:
                        table.add(run_cell(setup, one, method, c))
    summary = _summary(setup, table.rows, table.timings.rows if table.timings else ())
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    if table.rows:
        collapse = {}
        for r in table.rows:
            if r["layer_collapse"]:
                collapse[r["method"]] = min(collapse.get(r["method"], r["compression"]), r["compression"])
        plots.accuracy_vs_compression(table.rows, os.path.join(workdir, "fig_accuracy.png"),
                                      f"{setup.spec.name} pruned at initialization", collapse)
    return summary


main = cli.summary_main(InitConfig, run)


if __name__ == "__main__":
    cli.define_flags(InitConfig, default_workdir="runs/init")
    cli.run_main(main)
