"""What a DMD fit says about the trajectory: the fixed point and its modes,
predictions and the Koopman-predicted step.

The mode with λ closest to 1 is the fixed point θ approaches: b₁φ₁ (KMP's
score); where several eigenvalues crowd at 1 the fixed-point subspace sums
them. θ(t) ≈ Re Σ_i b_i λ_i^t φ_i, and the predicted step is
Δθ_K(t) = Σ_i b_i (λ_i − 1) λ_i^t φ_i. Each is one blocked pass Θᵀw
(`kpjax.koopman.blocked.combine_snapshots`).

May import: jax, numpy, kpjax.koopman.dmd, kpjax.koopman.blocked.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.koopman.dmd import DMDFit
from kpjax.koopman.blocked import combine_snapshots

# Eigenvalues within this distance of 1 form the fixed-point cluster of
# `fixed_point_subspace`: over a window of T = 469 steps (one MNIST epoch) a
# mode with |λ − 1| ≤ 1e-4 changes by at most |λ^T − 1| ≈ 5 %, so on the
# window's time scale it does not move. Single modes that close to λ_1 are
# where KMP became fragile early in training (separations down to 1.7e-5,
# BUILD_NOTES).
DEFAULT_CLUSTER_TOL = 1e-4


def fixed_point_index(fit: DMDFit) -> int:
    """Index of the valid mode with λ closest to 1 (the fixed point θ approaches).

    `fit_dmd` sorts modes by |λ − 1|, so this is 0 unless no mode is valid.
    """
    valid = np.asarray(fit.valid)
    if valid.ndim != 1:
        raise ValueError("fixed_point_index takes one fit; index a batched fit first")
    if not valid.any():
        raise ValueError("the fit has no valid mode (all singular values below rcond)")
    dist = np.where(valid, np.abs(np.asarray(fit.eigenvalues) - 1.0), np.inf)
    return int(np.argmin(dist))


def fixed_point_separation(eigenvalues: Any) -> float:
    """min_{i≠1} |λ_i − λ_1|, λ_1 the eigenvalue closest to 1 (inf if alone).

    How well the fixed-point mode is determined: the perturbation of φ_1 by a
    change in the data scales like 1/separation, and a conjugate pair at 1
    has separation 2|Im λ_1|. Pass the valid eigenvalues (`fit.eigenvalues[fit.valid]`).
    """
    lam = np.asarray(eigenvalues).reshape(-1)
    if lam.size == 0:
        raise ValueError("fixed_point_separation needs at least one eigenvalue")
    i = int(np.argmin(np.abs(lam - 1.0)))
    others = np.delete(lam, i)
    return float(np.min(np.abs(others - lam[i]))) if others.size else float("inf")


def energy_kept(fit: DMDFit) -> jax.Array:
    """Σ_{kept} σ_i² / Σ_i σ_i²: the fraction of X's energy ‖X‖_F² inside the
    directions the rank cutoff keeps (1 at rcond = 0). Batched fits give one
    value per entry."""
    with jax.enable_x64(True):
        s2 = jnp.square(fit.singular_values)
        kept = jnp.arange(s2.shape[-1]) < jnp.asarray(fit.directions)[..., None]  # σ descends
        total = jnp.sum(s2, axis=-1)
        return jnp.sum(jnp.where(kept, s2, 0.0), axis=-1) / jnp.where(total > 0, total, 1.0)


def fixed_point_cluster(fit: DMDFit, tol: float = DEFAULT_CLUSTER_TOL) -> np.ndarray:
    """Indices of the valid modes with |λ_i − 1| ≤ tol, always including λ_1
    (the one closest to 1). Conjugate eigenvalues are equally far from 1, so
    the cluster is closed under conjugation and its modes sum to a real vector."""
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    i = fixed_point_index(fit)
    dist = np.abs(np.asarray(fit.eigenvalues) - 1.0)
    inside = np.asarray(fit.valid) & (dist <= tol)
    inside[i] = True
    return np.flatnonzero(inside)


def fixed_point_subspace(snapshots: Any, fit: DMDFit, tol: float = DEFAULT_CLUSTER_TOL) -> jax.Array:
    """θ_S = Re Σ_{|λ_i − 1| ≤ tol} b_i φ_i: the part of θ_0 in the invariant
    subspace of the eigenvalues near 1 (float64, (N,)).

    When several eigenvalues sit within the data's perturbation of each other,
    each eigenvector is ill-determined (its perturbation scales like
    1/separation) and "the" mode φ_1 is decided by rounding; their invariant
    subspace, and the oblique projection of θ_0 onto it along the other
    modes, is determined by the gap to the rest of the spectrum instead. With
    one eigenvalue inside, θ_S = Re b_1 φ_1 (= b_1 φ_1 for a real λ_1).
    """
    idx = jnp.asarray(fixed_point_cluster(fit, tol))
    with jax.enable_x64(True):
        weights = fit.coefficients[:, idx] @ fit.amplitudes[idx]
        return combine_snapshots(snapshots, weights).real


def modes(snapshots: Any, fit: DMDFit, index: Union[int, Sequence[int]]) -> jax.Array:
    """Exact DMD modes φ_i = Θᵀ C[:, i]: complex128, (N,) for one index, (N, k) for several."""
    with jax.enable_x64(True):
        return combine_snapshots(snapshots, fit.coefficients[:, jnp.asarray(index)])


def fixed_point_mode(snapshots: Any, fit: DMDFit) -> jax.Array:
    """φ_1, the mode with λ closest to 1, scaled by its amplitude b_1 (complex128, (N,))."""
    i = fixed_point_index(fit)
    with jax.enable_x64(True):
        return combine_snapshots(snapshots, fit.coefficients[:, i] * fit.amplitudes[i])


def _time_weights(fit: DMDFit, t: float, step: bool) -> jax.Array:
    lam = fit.eigenvalues
    factor = fit.amplitudes * jnp.where(fit.valid, lam**t, 0.0)
    if step:
        factor = factor * (lam - 1.0)
    return fit.coefficients @ factor


def predict(snapshots: Any, fit: DMDFit, t: float) -> jax.Array:
    """Koopman prediction θ(t) = Re Σ_i b_i λ_i^t φ_i, float64 (N,)."""
    with jax.enable_x64(True):
        return combine_snapshots(snapshots, _time_weights(fit, t, step=False)).real


def predicted_step(snapshots: Any, fit: DMDFit, t: float) -> jax.Array:
    """Predicted one-step change Δθ_K(t) = Re Σ_i b_i (λ_i − 1) λ_i^t φ_i, float64 (N,).

    Under gradient descent θ(t+1) − θ(t) = −η∇L(θ(t)), so Δθ_K stands in for
    −η∇L (KGP).
    """
    with jax.enable_x64(True):
        return combine_snapshots(snapshots, _time_weights(fit, t, step=True)).real
