"""Sliding windows of one trajectory, and Koopman jumps past its end.

Every window's Gram is a diagonal block of the trajectory's single K = ΘΘᵀ
(or of its banded part, `kpjax.koopman.blocked.banded_gram`), so any number of
windows costs one pass over Θ. A jump replaces τ training steps by the
Koopman prediction θ(T + τ) (Dogra & Redman 2020).

May import: jax, numpy, kpjax.koopman.dmd, kpjax.koopman.blocked, kpjax.koopman.modes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.koopman.dmd import DEFAULT_RCOND, DMDFit, _validate_gram, fit_dmd_batched
from kpjax.koopman.blocked import MIN_SNAPSHOTS, combine_snapshots
from kpjax.koopman.modes import fixed_point_index, predict


def window_starts(num_snapshots: int, window: int, stride: int) -> list[int]:
    """First snapshot of every window of `window` steps (window + 1 snapshots)
    that fits in `num_snapshots`, every `stride` steps."""
    if window < MIN_SNAPSHOTS - 1 or stride < 1:
        raise ValueError(f"window must be >= {MIN_SNAPSHOTS - 1} steps and stride >= 1, "
                         f"got {window}, {stride}")
    if window + 1 > num_snapshots:
        raise ValueError(f"a window of {window} steps needs {window + 1} snapshots, "
                         f"the trajectory has {num_snapshots}")
    return list(range(0, num_snapshots - window, stride))


def sliding_window_fits(k: Any, window: int, stride: int, rcond: float = DEFAULT_RCOND,
                        amplitudes: str = "first") -> tuple[list[int], DMDFit]:
    """Exact DMD of every window Θ[s : s + window + 1] of one trajectory, from
    the diagonal blocks of its single Gram matrix K = ΘΘᵀ (the window's Gram
    is K[s:s+w+1, s:s+w+1]: no second pass over Θ).

    Returns:
      (starts, fits): the windows' first snapshots and their fits, batched
      (a leading window axis), each in the window's own snapshot indices.
    """
    _validate_gram(k)
    starts = window_starts(k.shape[0], window, stride)
    with jax.enable_x64(True):
        k = jnp.asarray(k, jnp.float64)
        grams = jnp.stack([k[s : s + window + 1, s : s + window + 1] for s in starts])
    return starts, fit_dmd_batched(grams, rcond=rcond, amplitudes=amplitudes)


def sliding_fixed_point_modes(snapshots: Any, starts: Sequence[int], fits: DMDFit) -> jax.Array:
    """b₁φ₁ of every window, (N, windows) complex128, in one blocked pass over Θ:
    each window's mode coefficients are placed at its rows of a (T+1, windows)
    weight matrix."""
    weights = np.zeros((snapshots.shape[0], len(starts)), np.complex128)
    fits = jax.tree_util.tree_map(np.asarray, fits)  # to the host once, not per window
    for j, s in enumerate(starts):
        fit = jax.tree_util.tree_map(lambda x: x[j], fits)
        i = fixed_point_index(fit)
        c = fit.coefficients[:, i] * fit.amplitudes[i]
        weights[s : s + c.shape[0], j] = c
    return combine_snapshots(snapshots, weights)


def jump(snapshots: Any, fit: DMDFit, steps: float) -> jax.Array:
    """The Koopman prediction `steps` steps past the last snapshot,
    θ(T + τ) = Re Σ_i b_i λ_i^{T+τ} φ_i (float64, (N,)): the jump of
    Koopman-accelerated training (Dogra & Redman 2020), in place of τ steps."""
    return predict(snapshots, fit, snapshots.shape[0] - 1 + steps)


def jump_increment(snapshots: Any, fit: DMDFit, steps: float, max_modulus: float = 1.0) -> jax.Array:
    """A jump from the last snapshot by the decaying modes' drift only,
    θ(T) + Re Σ_{|λ_i| ≤ max_modulus} b_i λ_i^T (λ_i^τ − 1) φ_i (float64, (N,)).

    `jump` extrapolates every mode, and a mode with |λ| slightly above 1
    (noise, or a slow instability) grows by |λ|^τ; here such modes add
    nothing and the jump starts from θ(T) itself rather than from the fit's
    reconstruction of it. On exact linear dynamics with |λ| ≤ 1 the two agree.
    """
    last = snapshots.shape[0] - 1
    with jax.enable_x64(True):
        lam = fit.eigenvalues
        keep = fit.valid & (jnp.abs(lam) <= max_modulus)
        factor = fit.amplitudes * jnp.where(keep, lam**last * (lam**steps - 1.0), 0.0)
        weights = (fit.coefficients @ factor).at[last].add(1.0)  # + θ(T)
        return combine_snapshots(snapshots, weights).real
