"""Koopman pruning: scores from the DMD fit of the trajectory Θ, registered
as kmp, kmp_subspace, kgp and layer_kmp.

  KMP            |b₁φ₁|, the mode with λ₁ closest to 1 (≡ GMP at convergence)
  subspace KMP   |Re Σ_{|λ_i − 1| ≤ tol} b_iφ_i|
  KGP            |θ(t₂) ⊙ Δθ_K(t₂)|, Δθ_K = Σ_i b_i (λ_i − 1) λ_i^t φ_i (≡ gradient pruning under GD)
  layer KMP      one fit per tensor, layerwise masks

Every score is a float32 vector over Θ's columns.

May import: jax, numpy, kpjax.flatten, kpjax.koopman, kpjax.pruning.masks, kpjax.pruning.methods.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kpjax import flatten, koopman
from kpjax.pruning.masks import global_flat_mask, layerwise_flat_mask, scores_from_flat
from kpjax.pruning.methods import PruneInputs, PruningMethod, register_method


def kmp_flat_scores(snapshots: Any, fit: koopman.DMDFit) -> jax.Array:
    """|b_1 φ_1| over Θ's columns (float32, shape (N,)); see `kmp_scores`."""
    phi = koopman.fixed_point_mode(snapshots, fit)
    with jax.enable_x64(True):
        return jnp.abs(phi).astype(jnp.float32)


def kmp_subspace_flat_scores(
    snapshots: Any, fit: koopman.DMDFit, tol: float = koopman.DEFAULT_CLUSTER_TOL
) -> jax.Array:
    """|θ_S|, θ_S = Re Σ_{|λ_i − 1| ≤ tol} b_i φ_i (float32, (N,)); see `kmp_subspace_scores`."""
    theta_s = koopman.fixed_point_subspace(snapshots, fit, tol)
    with jax.enable_x64(True):
        return jnp.abs(theta_s).astype(jnp.float32)


def kgp_flat_scores(snapshots: Any, fit: koopman.DMDFit) -> jax.Array:
    """|θ(t2) ⊙ Δθ_K(t2)| over Θ's columns (float32, (N,)); see `kgp_scores`."""
    t2 = snapshots.shape[0] - 1
    step = koopman.predicted_step(snapshots, fit, t2)
    with jax.enable_x64(True):
        theta = jnp.asarray(snapshots[t2]).astype(jnp.float64)
        return jnp.abs(theta * step).astype(jnp.float32)


def layer_kmp_flat_scores(
    snapshots: Any, spec: flatten.FlatSpec, rcond: float = koopman.DEFAULT_RCOND
) -> jax.Array:
    """KMP with one Koopman fit per layer (tensor), fitted together (batched).

    Each tensor gets its own fixed-point mode |b_1^(l) φ_1^(l)|; use with a
    layerwise mask, since per-layer modes share no common scale. Flat over
    Θ's columns, float32.
    """
    fits = koopman.fit_dmd_batched(koopman.segment_grams(snapshots, spec), rcond=rcond)
    ends = list(spec.offsets[1:]) + [spec.size]
    parts = []
    for layer, (start, end) in enumerate(zip(spec.offsets, ends)):
        fit = jax.tree_util.tree_map(lambda x: x[layer], fits)
        parts.append(kmp_flat_scores(snapshots[:, start:end], fit))
    return jnp.concatenate(parts)


def _trajectory(inputs: PruneInputs, method: str):
    """Θ, its fit (fitted here when missing) and spec, after checking that the
    trajectory covers every prunable leaf with the params' shapes."""
    sel_spec = flatten.flat_spec(inputs.params, inputs.select)
    spec = inputs.spec
    recorded = dict(zip(spec.paths, spec.shapes))
    missing = [p for p in sel_spec.paths if p not in recorded]
    if missing:
        raise ValueError(
            f"method {method!r}: prunable leaves not in the trajectory: "
            f"{sorted('/'.join(p) for p in missing)}"
        )
    wrong = [f"{'/'.join(p)} {s} vs {recorded[p]}"
             for p, s in zip(sel_spec.paths, sel_spec.shapes) if recorded[p] != s]
    if wrong:
        raise ValueError(f"method {method!r}: the trajectory's shapes differ from the params': {wrong}")
    fit = inputs.fit if inputs.fit is not None else koopman.fit_trajectory(inputs.snapshots)
    return inputs.snapshots, fit, spec


def _prunable_flat(flat: jax.Array, spec: flatten.FlatSpec, inputs: PruneInputs) -> jax.Array:
    """Scores over Θ's columns as scores over the prunable parameters (the same
    vector when Θ records exactly the prunable leaves, the usual case)."""
    target = flatten.flat_spec(inputs.params, inputs.select)
    if spec.paths == target.paths:
        return flat
    return flatten.ravel_with_spec(scores_from_flat(flat, spec, inputs.params), target)


def _koopman_method(flat_fn):
    def score(inputs: PruneInputs) -> jax.Array:
        snapshots, fit, spec = _trajectory(inputs, "a Koopman method")
        return _prunable_flat(flat_fn(snapshots, fit), spec, inputs)
    return score


def _layer_kmp(inputs: PruneInputs) -> jax.Array:
    _trajectory(inputs, "layer_kmp")
    return _prunable_flat(layer_kmp_flat_scores(inputs.snapshots, inputs.spec), inputs.spec, inputs)


_TRAJECTORY = ("snapshots", "spec")
# The registration order is the order of the experiments' pairs and tables.

register_method("kmp", PruningMethod(
    _koopman_method(kmp_flat_scores), global_flat_mask, _TRAJECTORY,
    "Koopman magnitude pruning: |b₁φ₁|, λ₁ closest to 1", label="KMP", family="koopman",
    baseline="gmp", cutoff_sensitive=True,
    style=dict(color="tab:red", marker="o", markersize=9, markerfacecolor="none", linewidth=1.6)))
register_method("kgp", PruningMethod(
    _koopman_method(kgp_flat_scores), global_flat_mask, _TRAJECTORY,
    "Koopman gradient pruning: |θ(t₂) ⊙ Δθ_K(t₂)|", label="KGP", family="koopman", baseline="grad",
    cutoff_sensitive=True, filter_norm="l1",
    style=dict(color="tab:orange", marker="^", markersize=9, markerfacecolor="none", linewidth=1.6)))
register_method("kmp_subspace", PruningMethod(
    _koopman_method(kmp_subspace_flat_scores), global_flat_mask, _TRAJECTORY,
    f"subspace KMP: |Re Σ b_iφ_i| over all |λ_i − 1| ≤ {koopman.DEFAULT_CLUSTER_TOL:g}",
    label="subspace KMP", family="koopman", baseline="gmp", cutoff_sensitive=True, compared_with=("kmp",)))
register_method("layer_kmp", PruningMethod(
    _layer_kmp, layerwise_flat_mask, _TRAJECTORY,
    "KMP with one Koopman fit per tensor, layerwise masks", label="layer KMP", family="koopman"))
