"""The prune → evaluate → refine pipeline shared by experiments.prune and .early.

The steps both experiments share, given a `PruningConfig`: record a window
of training (Θ), fit the Koopman operator and score every method (flat
score vectors over the prunable parameters, cached per window), build each
method's mask once per (window, compression), and run one (method,
compression) cell. Reads no flags.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import common, resources
from experiments.report import at_cutoff, base_method
from experiments.config import PruningConfig, json_ready, to_json
from experiments.results import atomic_write_bytes, atomic_write_json, read_json
from kpjax import data, flatten, koopman, metrics, models, parallel, pruning, train
from kpjax.train import recording
from kpjax.pruning import saliency, structured
from kpjax.data import shifts
from kpjax.flatten import count_params

# Config fields that are not settings of the results in a workdir: more
# methods, compressions or seeds only add cells; summarize_only is a mode;
# the early-bird rule only reads the results; controls add their own rows;
# the device count, like the core count, changes only the reduction order.
NOT_SETTINGS = ("methods", "compressions", "seeds", "prune_epochs", "summarize_only",
                "early_bird_patience", "early_bird_eps", "controls", "devices")
# Settings newer than most workdirs that are written to config.json only
# when given, so that a run without them writes what it always did.
WRITTEN_WHEN_SET = ("input_shape",)
# Each Koopman method and the baseline it is compared with.
BASELINE = {"kmp": "gmp", "kgp": "grad", "kmp_subspace": "gmp"}
PAIRS = tuple(BASELINE.items())
# Kept-set overlaps: every pair, and subspace KMP against single-mode KMP.
OVERLAPS = PAIRS + (("kmp_subspace", "kmp"),)
# Methods that the rank-cutoff sensitivity scores again at the extra cutoffs.
CUTOFF_SENSITIVE = tuple(BASELINE)


# Batch orders: each purpose of a seed gets its own (seed * 1000 + purpose).
PRETRAIN, WINDOW, FINETUNE, REINIT = 0, 1, 2, 3


class Setup:
    """What every cell of a run shares, built once from the config."""

    def __init__(self, config: PruningConfig):
        self.config = config
        self.spec = resources.model_spec(config)
        self.methods = list(config.methods)
        # (name, base method, rcond) of the cutoff-sensitivity scores.
        self.sensitivity = [(at_cutoff(m, r), m, r) for r in config.rcond[1:]
                            for m in CUTOFF_SENSITIVE if m in config.methods]
        self.score_names = self.methods + [name for name, _, _ in self.sensitivity]
        self.compressions = list(config.compressions)
        self.seeds = list(config.seeds)
        self.dataset = common.load_data(config)
        self.steps_per_epoch = data.num_batches(len(self.dataset.train_labels), config.batch_size)
        self.normalize = common.normalize_fn(config, self.dataset)
        self.augment = common.augment_fn(config, self.dataset)
        self.finetune_tx = config.finetune.optimizer(self.steps_per_epoch)
        self.finetune_step = self.train_step(self.finetune_tx)
        self.eval_step = self.make_eval_step(self.spec)
        self.variables0 = models.init_variables(self.spec, 0)
        params = self.variables0["params"]
        self.select = resources.prunable_set(config, self.spec, params)
        self.flat_spec = flatten.flat_spec(params, self.select)
        self.flops = metrics.layer_flops(self.spec.module, self.variables0, self.spec.input_shape)
        self.job = common.JobClock()
        self.eval_units = common.eval_units(len(self.dataset.test_labels), config.batch_size)
        self._shifted = None
        self._fractions: dict[float, float] = {}
        self.shift_units = 0.0
        if getattr(config, "eval_shifts", False):
            n = min(config.shift_examples, len(self.dataset.test_labels))
            self.shift_units = common.eval_units(
                n * (1 + len(shifts.SHIFTS) * len(shifts.SEVERITIES)), config.batch_size)
        devices = config.devices or len(jax.devices())
        self.mesh = parallel.column_mesh(jax.devices()[:devices]) if devices > 1 else None

    @property
    def filter_granularity(self) -> bool:
        return getattr(self.config, "granularity", "weight") == "filter"

    def filter_fraction(self, c: float) -> float:
        """The kept fraction f of every group's units whose shrunk network has
        compression total/kept ≥ c (the largest such f, by bisection)."""
        if c not in self._fractions:
            self._fractions[c] = structured.fraction_for_compression(self.spec, self.variables0, c)
        return self._fractions[c]

    def train_step(self, tx, spec: models.ModelSpec | None = None):
        """The training step of `spec` (default: the run's model) with `tx`."""
        return train.make_train_step((spec or self.spec).module.apply, tx, augment_fn=self.augment,
                                     normalize_fn=self.normalize)

    def make_eval_step(self, spec: models.ModelSpec):
        return train.make_eval_step(spec.module.apply, normalize_fn=self.normalize)

    def stream(self, seed: int, purpose: int):
        """Batches of (seed, purpose) as a function of the start step (`kpjax.train.loop`),
        split over the devices when training is data-parallel."""
        def batches(start_step=0):
            stream = data.batch_stream(
                self.dataset.train_images, self.dataset.train_labels, self.config.batch_size,
                seed=seed * 1000 + purpose, start_step=start_step)
            if self.mesh is None:
                return stream
            return (parallel.shard_batch(x, y, self.mesh) for x, y in stream)
        return batches

    def evaluate(self, state, eval_step=None) -> dict[str, float]:
        """Test-set loss, top-1 and top-5 (`eval_step`: another model's, e.g. a shrunk one)."""
        result = common.evaluate(eval_step or self.eval_step, state, self.dataset,
                                 self.config.eval_batch_size)
        self.job.tick(self.eval_units)
        return result

    def evaluate_shifts(self, state, eval_step=None) -> dict[str, float]:
        """Top-1 on the first --shift_examples test images, unshifted ('top1@clean')
        and under every shift and severity ('top1@contrast-3'; `kpjax.data.shifts`,
        the noise seeded by the severity); {} without --eval_shifts."""
        if not self.shift_units:  # only PruneConfig has --eval_shifts
            return {}
        if self._shifted is None:
            n = self.config.shift_examples
            images, labels = self.dataset.test_images[:n], self.dataset.test_labels[:n]
            self._shifted = {"clean": images, **{
                f"{name}-{s}": shifts.shift_images(images, name, s, seed=s)
                for name in shifts.SHIFTS for s in shifts.SEVERITIES}}
            self._shift_labels = labels
        out = {}
        for key, images in self._shifted.items():
            ev = train.evaluate(eval_step or self.eval_step, state, data.batches(
                images, self._shift_labels, self.config.eval_batch_size, seed=0, epoch=0,
                shuffle=False))
            out[f"top1@{key}"] = ev["top1"]
        self.job.tick(self.shift_units)
        return out

    def plan_cells(self, count: int, sensitivity: int = 0) -> None:
        """Adds `count` cells (evaluations and fine-tuning) and `sensitivity`
        evaluation-only cells to the job clock."""
        self.job.plan(sensitivity * self.eval_units)
        per_cell = (self.eval_units * (1 + bool(self.config.finetune_epochs)) + self.shift_units
                    + self.config.finetune_epochs * self.steps_per_epoch)
        self.job.plan(count * per_cell)

    def state(self, variables, seed: int, tx=None, mask=None) -> train.TrainState:
        state = train.create_train_state(variables["params"], tx or self.finetune_tx,
                                         jax.random.PRNGKey(seed),
                                         batch_stats=variables.get("batch_stats"), mask=mask)
        return state if self.mesh is None else parallel.replicate(state, self.mesh)


def check_workdir(workdir: str, config: PruningConfig, write: bool = True) -> None:
    """Refuses to mix results of different settings in one workdir; records
    the settings in config.json (unless `write` is False: summarize only)."""
    settings = {k: v for k, v in to_json(config).items() if k not in NOT_SETTINGS
                and not (k in WRITTEN_WHEN_SET and v == [])}
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        saved = read_json(path, "the settings of the results in this workdir")
        if not isinstance(saved, dict):
            raise ValueError(f"{path} is damaged (not an object); delete it or use another --workdir")
        # A setting newer than the workdir matches when it has its default.
        defaults = {f.name: json_ready(dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default)
                                       else f.default) for f in dataclasses.fields(config)}
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k, defaults.get(k)) != v}
        if diff:
            raise ValueError(
                f"workdir {workdir} holds a run with other settings (saved, now): {diff}; "
                "use another --workdir")
    elif not write:
        raise ValueError(f"{workdir} holds no run to summarize (no config.json)")
    if write:
        os.makedirs(workdir, exist_ok=True)
        atomic_write_json(path, settings)


def variables_of(state: train.TrainState) -> dict[str, Any]:
    out = {"params": state.params}
    if state.batch_stats:
        out["batch_stats"] = state.batch_stats
    return jax.tree_util.tree_map(np.asarray, out)


class Window:
    """The end of a recorded window: θ(t₂) with its BN statistics, every method's
    flat scores over the prunable parameters, and the Koopman fit's spectrum.
    Masks are built once per (method, compression) and kept (`mask`)."""

    def __init__(self, variables, scores: dict[str, np.ndarray], eigenvalues, seconds,
                 diagnostics: dict[str, float]):
        self.variables, self.scores, self.eigenvalues = variables, scores, eigenvalues
        self.seconds = seconds
        # `fit_diagnostics` of the run's fit, and of the others as 'rank@rcond=1e-07', ...
        self.diagnostics = diagnostics
        self._masks: dict[tuple[str, float], Any] = {}

    @property
    def lambda1(self) -> complex:
        return complex(self.eigenvalues[0]) if len(self.eigenvalues) else complex("nan")

    def mask(self, setup: Setup, method: str, c: float):
        """The bool pytree mask of `method` at compression c (built once)."""
        if (method, c) not in self._masks:
            params = self.variables["params"]
            if setup.filter_granularity:  # whole units: the method's scores per filter
                self._masks[(method, c)] = structured.unit_mask(
                    setup.spec, params, self.filter_keep(setup, method, c))
            elif method == "synflow":  # iterative: its scores change as it prunes
                self._masks[(method, c)] = synflow_mask(setup, self.variables, c)
            else:
                keep = pruning.method_flat_mask(base_method(method), self.scores[method],
                                                setup.flat_spec, count_params(params), c)
                self._masks[(method, c)] = pruning.mask_from_flat(keep, setup.flat_spec, params)
        return self._masks[(method, c)]

    def filter_keep(self, setup: Setup, method: str, c: float) -> dict[str, np.ndarray]:
        """--granularity=filter: the units kept, by the method's per-weight
        scores reduced over each filter (`FILTER_NORM`: KMP ‖(b₁φ₁)[filter]‖₂,
        no new fit; KGP Σ|θ ⊙ Δθ_K|), the same fraction of every group
        (`Setup.filter_fraction`)."""
        params = self.variables["params"]
        tree = pruning.scores_from_flat(jnp.asarray(self.scores[method]), setup.flat_spec, params)
        norm = FILTER_NORM.get(base_method(method), "l2")
        return structured.keep_units(structured.group_scores(setup.spec, tree, norm),
                                     setup.filter_fraction(c))


# How a method's per-weight scores become a filter's: saliencies that add up
# (a filter's loss change is the sum of its weights', Lubana & Dick's
# per-filter measures) and Li et al.'s L1 filter norm by the sum; magnitudes
# and modes by the L2 norm.
FILTER_NORM = {"l1": "l1", "kgp": "l1", "grad": "l1", "snip": "l1", "lp": "l1", "lp_biased": "l1", "gn": "l1"}


def synflow_mask(setup: Setup, variables, c: float):
    """Iterative SynFlow's mask of `variables` at compression c, over
    --synflow_rounds rounds (`pruning.synflow_iterative_mask`)."""
    params = variables["params"]
    objective = saliency.synflow_objective(setup.spec.module.apply, variables, setup.spec.input_shape)
    fraction = pruning.keep_fraction(c, count_params(params), setup.flat_spec.size)
    return pruning.synflow_iterative_mask(params, setup.select, objective, fraction,
                                          setup.config.synflow_rounds)


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


def cached_window(setup: Setup, path: str) -> Window | None:
    """The window saved by `record_window` at `path`, if complete."""
    if not os.path.exists(path):
        return None
    treedef = jax.tree_util.tree_structure(setup.variables0)
    try:
        with np.load(path, allow_pickle=False) as f:
            if any(f"score_{m}" not in f for m in setup.score_names):
                return None
            leaves = [f[f"var{i}"] for i in range(treedef.num_leaves)]
            variables = jax.tree_util.tree_unflatten(treedef, leaves)
            scores = {m: f[f"score_{m}"] for m in setup.score_names}
            if "diag_rank" not in f:  # recorded before the diagnostics: record again
                return None
            diagnostics = {k[len("diag_"):]: float(f[k]) for k in f.files if k.startswith("diag_")}
            eigenvalues, seconds = f["eigenvalues"], float(f["seconds"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} (a cached window) is damaged ({type(e).__name__}: {e}); "
                         "delete it and rerun: the window is recorded again") from None
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(setup.variables0)]
    if ([np.shape(x) for x in leaves] != shapes
            or any(np.shape(s) != (setup.flat_spec.size,) for s in scores.values())):
        raise ValueError(f"{path} (a cached window) holds another model's arrays; "
                         "delete it and rerun: the window is recorded again")
    logging.info("window restored from %s", path)
    return Window(variables, scores, eigenvalues, seconds, diagnostics)


def fit_diagnostics(fit: koopman.DMDFit, suffix: str = "") -> dict[str, float]:
    """What a result depends on in one fit: its rank, the energy of X the
    cutoff keeps, and λ₁'s separation from the rest of the spectrum, its
    mode's residual and the size of its cluster (the modes within
    koopman.DEFAULT_CLUSTER_TOL of 1, which subspace KMP sums)."""
    valid = np.asarray(fit.valid)
    lam = np.asarray(fit.eigenvalues)[valid]
    out = {"rank": float(valid.sum()), "energy_kept": float(koopman.energy_kept(fit)),
           "lambda1_separation": float("nan"), "lambda1_residual": float("nan"),
           "cluster_size": 0.0}
    if lam.size:
        out.update(lambda1_separation=koopman.fixed_point_separation(lam),
                   lambda1_residual=float(fit.residuals[0]),
                   cluster_size=float(len(koopman.fixed_point_cluster(fit))))
    return {key + suffix: value for key, value in out.items()}


SCORING_NEEDS = frozenset({"grads", "loss_fn", "grasp_loss_fn"})


def with_scoring_batches(setup: Setup, inputs: pruning.PruneInputs, batch_stats,
                         batches: list) -> pruning.PruneInputs:
    """`inputs` with what the data-dependent methods read from the scoring batches:
    ∂L/∂θ (the mean over the batches; one batch: ShrinkBench's gradient), L for
    SNIP / LP / GN and GraSP's tempered L (`saliency.GRASP_TEMPERATURE`)."""
    apply = setup.spec.module.apply
    images = np.stack([setup.normalize(np.asarray(x)) for x, _ in batches])
    labels = np.stack([np.asarray(y) for _, y in batches])
    grads = [train.loss_and_grads(apply, inputs.params, batch_stats, x, y)[1]
             for x, y in zip(images, labels)]
    if len(grads) > 1:
        grads = [jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)]
    if len(batches) == 1:
        images, labels = images[0], labels[0]
    return inputs._replace(
        grads=grads[0],
        loss_fn=train.batch_loss_fn(apply, batch_stats, images, labels),
        grasp_loss_fn=train.batch_loss_fn(apply, batch_stats, images, labels,
                                          temperature=saliency.GRASP_TEMPERATURE))


def record_window(setup: Setup, state: train.TrainState, step_fn, batches, steps: int,
                  seed: int, path: str, desc: str, **facts: float) -> Window:
    """Trains `steps` steps recording Θ, fits the Koopman operator, scores every
    method (`score_window`; the scoring batches are the next ones).

    `facts` (e.g. the accuracy at the window's start) are kept with the fit's
    diagnostics and end up in windows.csv.

    The window's end θ(t₂), its scores and spectrum are saved to `path`
    (atomically) for `cached_window`. `state` is donated.
    """
    start = time.time()
    recorder = recording.make_recording_train_step(step_fn, setup.select)
    batches = iter(batches)
    state, theta = recording.record_trajectory(
        recorder, state, _with_progress(batches, steps, desc, setup.job), steps, setup.select)
    scoring = [next(batches) for _ in range(scoring_batch_count(setup))]
    return score_window(setup, state, theta, koopman.gram(theta), scoring, seed, path, desc,
                        time.time() - start, **facts)


def scoring_batch_count(setup: Setup) -> int:
    """How many batches after a window the data-dependent methods score on."""
    needs = {n for m in setup.methods for n in pruning.get_method(m).needs}
    return setup.config.score_batches if needs & SCORING_NEEDS else 0


def score_window(setup: Setup, state: train.TrainState, theta, k, scoring: list, seed: int,
                 path: str, desc: str, seconds: float = 0.0, **facts: float) -> Window:
    """The Koopman fit of a recorded window and every method's scores at its end.

    Args:
      state: the training state at the window's end, θ(t₂).
      theta: the window's snapshots Θ (an array, or a `TrajectoryStore` row range).
      k: its Gram matrix ΘΘᵀ (float64; e.g. a diagonal block of a `banded_gram`).
      scoring: the batches the data-dependent methods score on (ShrinkBench:
        the next ones after the window).
      seconds: time already spent on the window (recording), added to the fit's.

    Saves the window to `path` (atomically) for `cached_window`.
    """
    start = time.time() - seconds
    fit = koopman.fit_dmd(k, rcond=setup.config.rcond[0])
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    diagnostics = {**facts, **fit_diagnostics(fit)}
    inputs = pruning.PruneInputs(state.params, setup.select, snapshots=theta,
                                 spec=setup.flat_spec, fit=fit, rng=jax.random.PRNGKey(seed))
    needs = {n for m in setup.methods for n in pruning.get_method(m).needs}
    if scoring:
        inputs = with_scoring_batches(setup, inputs, state.batch_stats, scoring)
    if "synflow_fn" in needs:
        inputs = inputs._replace(synflow_fn=saliency.synflow_objective(
            setup.spec.module.apply, variables_of(state), setup.spec.input_shape))
    scores = {m: np.asarray(pruning.method_flat_scores(m, inputs)) for m in setup.methods}
    # The other cutoffs: new fits of the same K (no second Gram pass over Θ).
    for r in sorted({r for _, _, r in setup.sensitivity}):
        fit_r = koopman.fit_dmd(k, rcond=r)
        diagnostics.update(fit_diagnostics(fit_r, f"@rcond={r:g}"))
        for name, m, rr in setup.sensitivity:
            if rr == r:
                scores[name] = np.asarray(pruning.method_flat_scores(m, inputs._replace(fit=fit_r)))
    del theta, inputs
    seconds = time.time() - start
    logging.info("%s: Koopman fit rank %d, λ₁ = %s; window + fit + scores %.1fs",
                 desc, lam.size, lam[0] if lam.size else None, seconds)
    variables = variables_of(state)
    arrays = {f"var{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(variables))}
    arrays.update({f"score_{m}": s for m, s in scores.items()})
    arrays.update({f"diag_{key}": np.asarray(v) for key, v in diagnostics.items()})
    buf = io.BytesIO()
    np.savez(buf, eigenvalues=lam, seconds=seconds, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Window(variables, scores, lam, seconds, diagnostics)


def _with_progress(batches, steps: int, desc: str, job: common.JobClock):
    progress = common.Progress(steps, f"{desc} window")
    for batch in batches:
        progress.update(1)
        job.tick()
        yield batch


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
