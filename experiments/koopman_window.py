"""A recorded window of training: Θ, its Koopman fit, every method's scores.

`record_window` trains T steps recording the prunable parameters Θ,
`score_window` fits the Koopman operator to them (`kpjax.koopman.fit_dmd`
of the Gram matrix ΘΘᵀ, formed sharded over the devices of a data-parallel
run) and scores every method over the flat prunable
parameters at the window's end θ(t₂), at the run's rank cutoff and at the
extra ones of the sensitivity table; the result is a `Window`, saved to the
workdir (`cached_window` restores it) and building each method's mask once
per compression.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import common
from experiments.pipeline import Setup, Variant, variables_of
from experiments.results import atomic_write_bytes
from kpjax import koopman, parallel, pruning, train
from kpjax.flatten import count_params
from kpjax.koopman import sharded
from kpjax.pruning import saliency, structured
from kpjax.train import recording


class Window:
    """The end of a recorded window: θ(t₂) with its BN statistics, every scored
    variant's flat scores over the prunable parameters, and the Koopman fit's
    spectrum. Masks are built once per (variant, compression) and kept (`mask`).

    Attributes:
      scores: {Variant: flat scores} (`Setup.scored`).
      eigenvalues: the valid eigenvalues of the fit at the run's cutoff, λ₁ first.
      diagnostics: {rcond: `fit_diagnostics` and λ₁ of the fit at that cutoff},
        the run's first.
      facts: what the recording adds (e.g. top1_start, the accuracy at t₁).
    """

    def __init__(self, variables, scores: dict[Variant, np.ndarray], eigenvalues, seconds,
                 diagnostics: dict[float, dict[str, float]], facts: dict[str, float]):
        self.variables, self.scores, self.eigenvalues = variables, scores, eigenvalues
        self.seconds = seconds
        self.diagnostics, self.facts = diagnostics, facts
        self._masks: dict[tuple[Variant, float], Any] = {}

    def mask(self, setup: Setup, variant: Variant, c: float):
        """The bool pytree mask of `variant` at compression c (built once)."""
        if (variant, c) not in self._masks:
            params = self.variables["params"]
            method = variant.method
            if setup.filter_granularity:  # whole units: the method's scores per filter
                mask = structured.unit_mask(setup.spec, params, self.filter_keep(setup, variant, c))
            elif pruning.get_method(method).iterative_mask_fn:  # scored again as it prunes
                mask = iterative_mask(setup, self.variables, method, c)
            else:
                keep = pruning.method_flat_mask(method, self.scores[variant], setup.flat_spec,
                                                count_params(params), c)
                mask = pruning.mask_from_flat(keep, setup.flat_spec, params)
            self._masks[(variant, c)] = mask
        return self._masks[(variant, c)]

    def filter_keep(self, setup: Setup, variant: Variant, c: float) -> dict[str, np.ndarray]:
        """--granularity=filter: the units kept, by the method's per-weight
        scores reduced over each filter (the method's `filter_norm`: KMP ‖(b₁φ₁)[filter]‖₂,
        no new fit; KGP Σ|θ ⊙ Δθ_K|), the same fraction of every group
        (`Setup.filter_fraction`)."""
        params = self.variables["params"]
        tree = pruning.scores_from_flat(jnp.asarray(self.scores[variant]), setup.flat_spec, params)
        norm = pruning.get_method(variant.method).filter_norm
        return structured.keep_units(structured.group_scores(setup.spec, tree, norm),
                                     setup.filter_fraction(c))


def iterative_mask(setup: Setup, variables, method: str, c: float):
    """The mask of an iterative method (SynFlow) of `variables` at compression
    c, over --synflow_rounds rounds (its `iterative_mask_fn`)."""
    params = variables["params"]
    inputs = pruning.PruneInputs(params, setup.select, synflow_fn=saliency.synflow_objective(
        setup.spec.module.apply, variables, setup.spec.input_shape))
    fraction = pruning.keep_fraction(c, count_params(params), setup.flat_spec.size)
    return pruning.get_method(method).iterative_mask_fn(inputs, fraction, setup.config.synflow_rounds)


def cached_window(setup: Setup, path: str) -> Window | None:
    """The window saved by `record_window` at `path`, if complete."""
    if not os.path.exists(path):
        return None
    treedef = jax.tree_util.tree_structure(setup.variables0)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "score_methods" not in f or "diag_rcond" not in f:
                return None  # recorded by an older kpjax (variants in names): record again
            saved = [Variant(str(m), None if np.isnan(r) else float(r))
                     for m, r in zip(f["score_methods"], f["score_rconds"])]
            if any(v not in saved for v in setup.scored):
                return None
            leaves = [f[f"var{i}"] for i in range(treedef.num_leaves)]
            variables = jax.tree_util.tree_unflatten(treedef, leaves)
            scores = {v: f[f"score{saved.index(v)}"] for v in setup.scored}
            cutoffs = [float(r) for r in f["diag_rcond"]]
            diagnostics = {r: {k[len("diag_"):]: float(f[k][i]) for k in f.files
                               if k.startswith("diag_") and k != "diag_rcond"}
                           for i, r in enumerate(cutoffs)}
            facts = {k[len("fact_"):]: float(f[k]) for k in f.files if k.startswith("fact_")}
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
    return Window(variables, scores, eigenvalues, seconds, diagnostics, facts)


def lambda1(fit: koopman.DMDFit) -> dict[str, float]:
    """λ₁, the valid eigenvalue closest to 1 (the fit orders them so), and |λ₁ − 1|."""
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    first = complex(lam[0]) if lam.size else complex("nan")
    return {"lambda1_real": first.real, "lambda1_imag": first.imag,
            "lambda1_distance": abs(first - 1.0)}


def fit_diagnostics(fit: koopman.DMDFit) -> dict[str, float]:
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
    return out


def with_scoring_batches(setup: Setup, inputs: pruning.PruneInputs, batch_stats,
                         batches: list) -> pruning.PruneInputs:
    """`inputs` with what the data-dependent methods read from the scoring batches:
    ∂L/∂θ (the mean over the batches; one batch: ShrinkBench's gradient), L for
    SNIP / LP / GN and GraSP's tempered L (`saliency.GRASP_TEMPERATURE`)."""
    apply = setup.spec.module.apply
    batches = parallel.to_host(batches)  # split over the devices when data-parallel
    images = np.stack([setup.normalize(x) for x, _ in batches])
    labels = np.stack([y for _, y in batches])
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
        recorder, state, with_progress(batches, steps, desc, setup.job), steps, setup.select)
    scoring = [next(batches) for _ in range(scoring_batch_count(setup))]
    return score_window(setup, state, theta, window_gram(setup, theta), scoring, seed, path, desc,
                        time.time() - start, **facts)


def window_gram(setup: Setup, theta) -> np.ndarray:
    """K = ΘΘᵀ in float64: on one device `koopman.gram`; data-parallel, with
    Θ's columns sharded over the run's devices (`koopman.sharded`: each device
    its N/devices columns' block, one psum), the same K to every process."""
    if setup.mesh is None:
        return koopman.gram(theta)
    return sharded.sharded_gram(sharded.shard_columns(theta, setup.mesh), setup.mesh)


def scoring_batch_count(setup: Setup) -> int:
    """How many batches after a window the data-dependent methods score on."""
    needs = {n for m in setup.methods for n in pruning.get_method(m).needs}
    return setup.config.score_batches if needs & pruning.BATCH_INPUTS else 0


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
    rcond = setup.config.rcond[0]
    fit = koopman.fit_dmd(k, rcond=rcond)
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    diagnostics = {rcond: {**lambda1(fit), **fit_diagnostics(fit)}}
    inputs = pruning.PruneInputs(state.params, setup.select, snapshots=theta,
                                 spec=setup.flat_spec, fit=fit, rng=jax.random.PRNGKey(seed))
    needs = {n for m in setup.methods for n in pruning.get_method(m).needs}
    if scoring:
        inputs = with_scoring_batches(setup, inputs, state.batch_stats, scoring)
    if "synflow_fn" in needs:
        inputs = inputs._replace(synflow_fn=saliency.synflow_objective(
            setup.spec.module.apply, variables_of(state), setup.spec.input_shape))
    scores = {v: np.asarray(pruning.method_flat_scores(v.method, inputs)) for v in setup.variants}
    # The other cutoffs: new fits of the same K (no second Gram pass over Θ).
    for r in dict.fromkeys(v.rcond for v in setup.sensitivity):  # --rcond's order
        fit_r = koopman.fit_dmd(k, rcond=r)
        diagnostics[r] = {**lambda1(fit_r), **fit_diagnostics(fit_r)}
        for v in setup.sensitivity:
            if v.rcond == r:
                scores[v] = np.asarray(pruning.method_flat_scores(v.method, inputs._replace(fit=fit_r)))
    del theta, inputs
    seconds = time.time() - start
    logging.info("%s: Koopman fit rank %d, λ₁ = %s; window + fit + scores %.1fs",
                 desc, lam.size, lam[0] if lam.size else None, seconds)
    variables = variables_of(state)
    arrays = {f"var{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(variables))}
    saved = list(scores)
    arrays.update({f"score{i}": scores[v] for i, v in enumerate(saved)})
    arrays["score_methods"] = np.array([v.method for v in saved])
    arrays["score_rconds"] = np.array([np.nan if v.rcond is None else v.rcond for v in saved])
    cutoffs = list(diagnostics)
    arrays["diag_rcond"] = np.array(cutoffs, dtype=np.float64)
    arrays.update({f"diag_{key}": np.array([diagnostics[r][key] for r in cutoffs])
                   for key in diagnostics[rcond]})
    arrays.update({f"fact_{key}": np.asarray(v) for key, v in facts.items()})
    buf = io.BytesIO()
    np.savez(buf, eigenvalues=lam, seconds=seconds, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Window(variables, scores, lam, seconds, diagnostics, dict(facts))


def with_progress(batches, steps: int, desc: str, job: common.JobClock):
    """`batches`, logging the window's progress and ticking the run's job clock."""
    progress = common.Progress(steps, f"{desc} window")
    for batch in batches:
        progress.update(1)
        job.tick()
        yield batch
