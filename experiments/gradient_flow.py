r"""Lubana & Dick (ICLR 2021)'s three claims about pruning early in training,
tested with the measurements their gradient-flow reading names.

Under gradient flow (dθ/dt = −g): d‖θ‖²/dt = −2θᵀg and
d²‖θ‖²/dt² = 2‖g‖² + 2θᵀHg (`kpjax.pruning.flow`). Their claims:

  1. magnitude-based pruning removes the parameters that contribute least
     to reducing the loss, so magnitude-pruned models converge faster than
     magnitude-agnostic ones (loss preservation, LP = |θ ⊙ g|);
  2. LP preserves the first-order dynamics (θᵀg, and the loss to first
     order), so it suits minimally trained models; biasing it towards
     magnitude (|θ² ⊙ g|) converges faster;
  3. gradient-norm measures act on the second-order term: increasing ‖g‖
     by pruning (GraSP, keep the largest θ ⊙ Hg) gives worse models than
     preserving it (GN, |θ ⊙ Hg|).

For each seed the model is trained from scratch with --train_*; at every
point e of --prune_points (epochs; step round(e·S)) the run is branched: each
method scores θ(e) (the data-dependent ones on --score_batches training
batches; KMP θ after a --window_steps window from the point, whose steps
count in its budget), prunes it to each compression, the gradient-flow
measures of the cut are taken on the scoring batches, and the pruned network
trains on for --finetune_epochs epochs with the same optimizer (momentum
restarted), as does the dense branch ("dense"). Every branch ends at step
round(e·S) + F·S and sees the training run's batches.

  python -m experiments.gradient_flow                          # MnistNet, 3 seeds, c = 10
  python -m experiments.gradient_flow --model=resnet20 --data_dir=PATH/cifar10-jpeg.tar.gz --seeds=0

Writes to --workdir: results.csv/json (one row per point/method/compression/
seed: test top-1 right after pruning and after training, the mean training
loss over the first --early_steps steps, and the `FlowMeasures` of the cut),
curves.csv/json (the training loss after pruning, means of --curve_every
steps), summary.md (the claims table: each claim's tests, reproduced / not
reproduced / inconclusive, with the numbers), fig_curves.png. Reruns resume
cell by cell.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from experiments import cli, early, koopman_window, pipeline, plots, report, resources
from experiments.config import GradientFlowConfig
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from experiments.workdir import claim
from kpjax import koopman, parallel, pruning, train
from kpjax.flatten import count_params
from kpjax.train import loop, recording

CELL = ("model", "prune_epoch", "method", "rcond", "compression", "seed")
CURVE = CELL + ("step",)
SCORING = 4  # batch-order purpose of the scoring batches (experiments.init's)
HOLDS, FAILS = 0.8, 0.2  # share of paired comparisons for a test to hold / fail


def _needs_window(method: str) -> bool:
    return "snapshots" in pruning.get_method(method).needs


class Point:
    """One seed's run at one prune point: θ(e), its scoring batches and what
    the methods score it with."""

    def __init__(self, setup: pipeline.Setup, main_run: early.MainRun, seed: int, epoch: float):
        self.setup, self.main_run, self.seed, self.epoch = setup, main_run, seed, epoch
        self.step = int(round(epoch * setup.steps_per_epoch))
        self.state = main_run.at(self.step)
        self.variables = pipeline.variables_of(self.state)
        stream = setup.stream(seed, SCORING)(self.step)
        self.scoring = [next(stream) for _ in range(setup.config.score_batches)]
        # The measures' batches as arguments: one compilation for every cell.
        scoring = parallel.to_host(self.scoring)  # split over the devices when data-parallel
        self.images = np.stack([setup.normalize(x) for x, _ in scoring])
        self.labels = np.stack([y for _, y in scoring])
        self.inputs = self._inputs(self.variables)
        self._window = None

    def _inputs(self, variables, batches: bool = True) -> pruning.PruneInputs:
        """θ of `variables`, with what the scoring batches give if `batches`."""
        plain = pruning.PruneInputs(variables["params"], self.setup.select,
                                    rng=jax.random.PRNGKey(self.seed))
        if not batches:
            return plain
        return koopman_window.with_scoring_batches(self.setup, plain, variables.get("batch_stats"),
                                                   self.scoring)

    def window(self):
        """θ after --window_steps steps from the point and the flat scores of
        the methods that read a trajectory."""
        if self._window is None:
            setup = self.setup
            recorder = recording.make_recording_train_step(self.main_run.step_fn, setup.select)
            state, theta = recording.record_trajectory(
                recorder, early._copy(self.state), setup.stream(self.seed, pipeline.PRETRAIN)(self.step),
                setup.config.window_steps, setup.select)
            fit = koopman.fit_trajectory(theta, rcond=setup.config.rcond[0])
            variables = pipeline.variables_of(state)
            windowed = [m for m in setup.methods if _needs_window(m)]
            needs = set().union(*(pruning.get_method(m).needs for m in windowed))
            # The gradients on the scoring batches only if a windowed method reads them.
            inputs = self._inputs(variables, bool(needs & pruning.BATCH_INPUTS))._replace(
                snapshots=theta, spec=setup.flat_spec, fit=fit)
            scores = {m: np.asarray(pruning.method_flat_scores(m, inputs)) for m in windowed}
            self._window = (variables, scores)
        return self._window

    def branch(self, method: str, c: float):
        """(variables, mask, first step) of `method`'s branch at c;
        the dense branch (method "dense") keeps everything."""
        setup = self.setup
        if method == "dense":
            return self.variables, None, self.step
        if _needs_window(method):
            variables, scores = self.window()
            flat, start = scores[method], self.step + setup.config.window_steps
        else:
            variables, start = self.variables, self.step
            flat = np.asarray(pruning.method_flat_scores(method, self.inputs))
        params = variables["params"]
        keep = pruning.method_flat_mask(method, flat, setup.flat_spec, count_params(params), c)
        return variables, pruning.mask_from_flat(keep, setup.flat_spec, params), start


def make_measure(setup: pipeline.Setup):
    """jit((θ, m, BN statistics, images, labels) ↦ `pruning.FlowMeasures`) of
    the model's cross-entropy on stacked batches."""
    apply = setup.spec.module.apply

    def measure(params, mask, batch_stats, images, labels):
        return pruning.flow_measures(params, mask, train.batch_loss_fn(apply, batch_stats, images, labels))
    return jax.jit(measure)


def run_cell(setup: pipeline.Setup, point: Point, method: str, c: float,
             measure) -> tuple[list[dict], list[dict]]:
    """Prune at the point, measure the cut (`measure`: `make_measure`'s), train
    to the branch's end; the result row and the curve rows."""
    started = time.time()
    config = setup.config
    variables, mask, start = point.branch(method, c)
    params = variables["params"]
    full = mask if mask is not None else train.full_mask(params)
    measures = measure(params, full, variables.get("batch_stats") or {}, point.images, point.labels)
    state = setup.state(variables, point.seed, tx=point.main_run.tx, mask=mask)
    pruned_eval = setup.evaluate(state)
    end = point.step + config.finetune_epochs * setup.steps_per_epoch
    stream = setup.stream(point.seed, pipeline.PRETRAIN)
    losses = []
    state = loop.train_steps(point.main_run.step_fn, state, lambda s: stream(start + s), end - start,
                             on_step=lambda step, st, metrics: (losses.append(metrics["loss"]),
                                                                setup.job.tick()))
    losses = np.asarray(jax.device_get(losses), np.float64)
    final = setup.evaluate(state)
    variant = setup.variant(method) if method != "dense" else pipeline.Variant("dense")
    key = {"model": setup.spec.name, "prune_epoch": point.epoch, **variant._asdict(),
           "compression": c if mask is not None else 1.0, "seed": point.seed}
    row = {**key, "phase": "trained", "prune_step": start, "top1_pruned": pruned_eval["top1"],
           "test_loss_pruned": pruned_eval["loss"], "top1": final["top1"], "top5": final["top5"],
           "test_loss": final["loss"], "train_loss_early": float(np.mean(losses[:config.early_steps])),
           "train_loss_last": float(np.mean(losses[-config.curve_every:])),
           "compression_achieved": pruning.compression_ratio(params, mask),
           **{k: float(v) for k, v in measures._asdict().items()}, "seconds": time.time() - started}
    every = config.curve_every
    curve = [{**key, "step": start + min(i + every, len(losses)),
              "since": start - point.step + min(i + every, len(losses)),
              "loss": float(np.mean(losses[i:i + every]))} for i in range(0, len(losses), every)]
    logging.info("seed %d epoch %g %s c=%g: loss %.3f → %.3f at the cut, top-1 %.2f%% after training",
                 point.seed, point.epoch, method, key["compression"], row["loss"], row["loss_pruned"],
                 100 * row["top1"])
    return [row], curve


# ---------------------------------------------------------------------------
# The claims: paired comparisons over (seed, point).


class Test(NamedTuple):
    claim: int
    text: str
    a: str              # method
    b: str              # method
    quantity: str       # a function name of `_QUANTITIES`
    smaller: bool       # the claim: a's quantity < b's (else >)
    min_epoch: float = 0.0  # only points at or after this epoch


def _share(r, kept, total):
    return r[kept] / r[total] if r[total] else float("nan")


_QUANTITIES = {
    "train_loss_early": ("mean training loss over the first --early_steps steps after pruning",
                         lambda r: r["train_loss_early"]),
    "loss_change": ("|L(θ⊙m) − L(θ)| on the scoring batches", lambda r: abs(r["loss_pruned"] - r["loss"])),
    "rate_kept_error": ("|(θ⊙m)ᵀg / θᵀg − 1|: how far the cut moves d‖θ‖²/dt",
                        lambda r: abs(_share(r, "kept_norm_rate", "norm_rate") - 1)),
    "grad_norm_ratio": ("‖g(θ⊙m)‖² / ‖g(θ)‖²", lambda r: _share(r, "grad_norm_sq_pruned", "grad_norm_sq")),
    "top1": ("test top-1 after training", lambda r: r["top1"]),
}

TESTS = (
    Test(1, "magnitude-pruned models converge faster than LP-pruned ones", "gmp", "lp",
         "train_loss_early", True),
    Test(2, "LP preserves the loss better than magnitude (first order)", "lp", "gmp", "loss_change", True),
    Test(2, "LP preserves the norm's first-order dynamics θᵀg better than magnitude", "lp", "gmp",
         "rate_kept_error", True),
    Test(2, "once minimally trained, LP-pruned models end no worse than magnitude-pruned ones "
            "(e ≥ 0.5)", "lp", "gmp", "top1", False, 0.5),
    Test(2, "biasing LP towards magnitude converges faster", "lp_biased", "lp", "train_loss_early", True),
    Test(3, "GraSP raises the gradient norm more than GN", "grasp", "gn", "grad_norm_ratio", False),
    Test(3, "GraSP-pruned models end worse than GN-pruned ones", "grasp", "gn", "top1", True),
)

CLAIMS = {1: "magnitude-based pruning converges faster than magnitude-agnostic (LP) pruning",
          2: "loss preservation preserves first-order dynamics and suits minimally trained models",
          3: "increasing the gradient norm by pruning (GraSP) hurts; preserving it (GN) does not"}


def verdict_of(rows, test: Test, c: float) -> tuple[str, int, int, float, float]:
    """(holds / fails / mixed / not run, pairs where the claim holds, pairs,
    a's mean, b's mean) over the (seed, point) pairs at compression c."""
    value = _QUANTITIES[test.quantity][1]
    by = {(r["seed"], r["prune_epoch"], r["method"]): value(r) for r in rows
          if r["compression"] == c and r["prune_epoch"] >= test.min_epoch}
    pairs = [(by[(s, e, test.a)], by[(s, e, test.b)]) for s, e, m in by if m == test.a
             and (s, e, test.b) in by and np.isfinite(by[(s, e, test.a)]) and np.isfinite(by[(s, e, test.b)])]
    if not pairs:
        return "not run", 0, 0, float("nan"), float("nan")
    won = sum((x < y) if test.smaller else (x > y) for x, y in pairs)
    share = won / len(pairs)
    verdict = "holds" if share >= HOLDS else "fails" if share <= FAILS else "mixed"
    return verdict, won, len(pairs), float(np.mean([x for x, _ in pairs])), float(np.mean([y for _, y in pairs]))


def claim_verdict(verdicts: list[str]) -> str:
    """Reproduced if every test holds; not reproduced if one fails; else inconclusive."""
    run = [v for v in verdicts if v != "not run"]
    if not run:
        return "not run"
    if all(v == "holds" for v in run):
        return "reproduced"
    return "not reproduced" if "fails" in run else "inconclusive"


def _claims_section(setup, rows) -> list[str]:
    out = []
    for c in setup.compressions:
        tests, verdicts = [], {}
        for t in TESTS:
            v, won, n, ma, mb = verdict_of(rows, t, c)
            verdicts.setdefault(t.claim, []).append(v)
            tests.append([t.claim, t.text, _QUANTITIES[t.quantity][0], f"{report.name(t.a)} {ma:.4g} vs "
                          f"{report.name(t.b)} {mb:.4g}", f"{won}/{n}", v])
        out += [f"## Claims at c = {c:g}", "",
                markdown_table(["claim", "Lubana & Dick", "verdict"],
                               [[k, text, claim_verdict(verdicts.get(k, []))] for k, text in CLAIMS.items()]),
                "", markdown_table(["claim", "test", "measurement", "means over the pairs",
                                    "pairs where it holds", "test"], tests), ""]
    return out


def _summary(setup: pipeline.Setup, rows, timings=()) -> str:
    config = setup.config
    epochs = list(config.prune_points)
    methods = ["dense"] + setup.methods
    out = [f"# Lubana & Dick's claims on {setup.spec.name} ({setup.dataset.name})", "",
           f"Seeds {list(setup.seeds)}; pruned at epochs {', '.join(f'{e:g}' for e in epochs)} of a "
           f"run from scratch (SGD lr {config.train.lr:g}, momentum {config.train.momentum:g}, batch "
           f"{config.batch_size}), unstructured (weights; the paper prunes filters), then "
           f"{config.finetune_epochs} epoch(s) more with the same optimizer (momentum restarted); "
           f"scores and measures on {config.score_batches} training batch(es); KMP: a "
           f"{config.window_steps}-step window from the point, rank cutoff rcond {config.rcond[0]:g}. "
           f"A test compares two methods over every (seed, point) pair: it holds when the claim is "
           f"true in ≥ {HOLDS:.0%} of the pairs, fails at ≤ {FAILS:.0%}, else is mixed; a claim is "
           "reproduced when all its tests hold, not reproduced when one fails, else inconclusive.", "",
           *report.data_line(setup.dataset.name, setup.dataset.source)]
    out += _claims_section(setup, rows)
    columns = (("top1", "test top-1 % after training", 100.0, 2),
               ("train_loss_early", f"training loss over the first {config.early_steps} steps after "
                                     "pruning", 1.0, 3),
               ("loss_pruned", "L(θ⊙m) on the scoring batches (dense: L(θ))", 1.0, 3),
               ("grad_norm_ratio", "‖g(θ⊙m)‖² / ‖g(θ)‖²", 1.0, 3),
               ("rate_kept", "(θ⊙m)ᵀg / θᵀg: the kept share of d‖θ‖²/dt", 1.0, 3))
    derived = [{**r, "grad_norm_ratio": _share(r, "grad_norm_sq_pruned", "grad_norm_sq"),
                "rate_kept": _share(r, "kept_norm_rate", "norm_rate")} for r in rows]
    for name, title, scale, digits in columns:
        stats = group_mean_std(derived, ("prune_epoch", "method", "compression"), name)
        for c in setup.compressions:
            body = [[f"{e:g}"] + [fmt_pm(stats.get((e, m, 1.0 if m == "dense" else c)), scale, digits)
                                  for m in methods] for e in epochs]
            out += [f"## {title}, c = {c:g}", "", markdown_table(["epoch"] + [report.name(m) for m in methods],
                                                                  body), ""]
    return "\n".join(out + report.provenance(timings))


def run(config: GradientFlowConfig, workdir: str) -> str:
    """Runs (or resumes) the study in `workdir`; returns summary.md."""
    resources.check_resources(config)
    setup = pipeline.Setup(config)
    if config.summarize_only:  # before any table rewrites its CSV
        pipeline.check_workdir(workdir, config, write=False)
    table = ResultTable(workdir, CELL, timing_columns=("seconds",))
    curves = ResultTable(workdir, CURVE, stem="curves")
    if not config.summarize_only:
        with claim(workdir):
            pipeline.check_workdir(workdir, config)
            cells = [(m, c) for m in setup.methods for c in setup.compressions] + [("dense", 1.0)]
            todo = [(s, e, m, c) for s in setup.seeds for e in config.prune_points for m, c in cells
                    if not table.done(model=setup.spec.name, prune_epoch=e,
                                      **(setup.variant(m) if m != "dense" else pipeline.Variant("dense"))._asdict(),
                                      compression=c, seed=s)]
            logging.info("%d cells, %d to do; workdir %s",
                         len(setup.seeds) * len(config.prune_points) * len(cells), len(todo), workdir)
            setup.job.plan(len(todo) * config.finetune_epochs * setup.steps_per_epoch)
            measure = make_measure(setup)
            for seed in setup.seeds:
                mine = [x for x in todo if x[0] == seed]
                if not mine:
                    continue
                main_run = early.MainRun(setup, seed, workdir)
                for e in config.prune_points:
                    here = [(m, c) for s, ee, m, c in mine if ee == e]
                    if not here:
                        continue
                    point = Point(setup, main_run, seed, e)
                    for m, c in here:
                        row, curve = run_cell(setup, point, m, c, measure)
                        curves.add_missing(curve)  # first: the result row marks the cell done
                        table.add(row)
    summary = _summary(setup, table.rows, table.timings.rows if table.timings else ())
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    if curves.rows:
        plots.loss_curves(curves.rows, os.path.join(workdir, "fig_curves.png"),
                          f"{setup.spec.name}: training loss after pruning")
    return summary


main = cli.summary_main(GradientFlowConfig, run)


if __name__ == "__main__":
    cli.define_flags(GradientFlowConfig, default_workdir="runs/gradient_flow")
    cli.run_main(main)
