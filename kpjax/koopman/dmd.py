"""Exact DMD of a parameter trajectory from its Gram matrix.

Training is a dynamical system on the parameters, θ(t+1) = T(θ(t)). From the
snapshot stack Θ = [θ_0 … θ_T] (row-wise, (T+1, N)) we fit the Koopman
operator of the identity observable by exact dynamic mode decomposition
(DMD) with the method of snapshots (Tu et al. 2014):

  X = Θ[:-1], Y = Θ[1:] (as N×T matrices, columns = snapshots)
  K = ΘΘᵀ ((T+1)×(T+1), float64)      XᵀX = K[:-1,:-1], XᵀY = K[:-1,1:]
  XᵀX = V Σ² Vᵀ                        keep σ_i > rcond·σ_max
  Ã = Σ⁻¹ Vᵀ (XᵀY) V Σ⁻¹,  Ã w_i = λ_i w_i
  φ_i = (1/λ_i) Y V Σ⁻¹ w_i = Yᵀ c_i    (c_i = V Σ⁻¹ w_i / λ_i)
  θ(t) ≈ Σ_i b_i λ_i^t φ_i

All O(T³) work is jit-compiled in float64; only the non-symmetric
eigenproblem, which JAX implements on CPU only, runs outside jit
(`_eig_cpu`). K comes from `kpjax.koopman.blocked`.

May import: jax, numpy, kpjax.koopman.blocked.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.koopman.blocked import DEFAULT_BLOCK_SIZE, MIN_SNAPSHOTS, check_numeric, gram

# Singular-value cutoff relative to σ_max. Float32 snapshots carry a relative
# rounding error of 2⁻²⁴ ≈ 6e-8 per entry, so directions of X with
# σ_i/σ_max below ~1e-7 are rounding noise; the float64 Gram resolves ratios
# down to ~1e-8. 1e-6 keeps every direction at least ~10× above that noise
# floor, so no noise direction enters Ã and produces a spurious eigenvalue.
DEFAULT_RCOND = 1e-6


class DMDFit(NamedTuple):
    """Exact DMD of Θ by the method of snapshots.

    Padded to T = (number of snapshots − 1) entries so fits of one window
    length share a shape (and batch); `valid` marks the r real modes, the
    rest are zeros.

    Attributes:
      eigenvalues: λ, (T,) complex128, sorted by |λ − 1| (closest first among
        valid ones).
      coefficients: C, (T+1, T) complex128; mode φ_i = Θᵀ C[:, i] (row 0 of C
        is zero since exact modes are combinations of Y = Θ[1:]).
      amplitudes: b, (T,) complex128, θ(t) ≈ Σ_i b_i λ_i^t φ_i.
      singular_values: σ of X, (T,) float64, descending (all of them).
      valid: (T,) bool, the r modes kept by the rank cutoff.
      directions: () int, the singular directions of X the cutoff kept (the
        size of Ã); r is smaller when Ã has zero eigenvalues.
      residuals: (T,) float64, each mode's relative residual
        ‖Yv − λXv‖/‖Xv‖ on the data (`mode_residuals`); NaN for invalid modes.
    """

    eigenvalues: jax.Array
    coefficients: jax.Array
    amplitudes: jax.Array
    singular_values: jax.Array
    valid: jax.Array
    directions: jax.Array
    residuals: jax.Array

    @property
    def rank(self) -> jax.Array:
        return jnp.sum(self.valid, axis=-1)


@functools.partial(jax.jit, static_argnames=("tls",))
def _reduced_operator(k: jax.Array, rcond: jax.Array, tls: bool = False):
    """Ã = Σ⁻¹ Vᵀ (XᵀY) V Σ⁻¹ with dropped directions zeroed, and the basis
    B (T×T) in which mode coefficients are expressed (c = B Σ⁻¹ w / λ).

    With `tls`, X and Y are first projected onto the leading joint
    right-singular subspace of Z = [X; Y] (total-least-squares DMD, Hemati
    et al. 2017): ZᵀZ = XᵀX + YᵀY = Q S² Qᵀ, P = Q_r Q_rᵀ with the r
    directions σ_z > rcond·σ_z,max, and X̄ = XP, Ȳ = YP, so X̄ᵀX̄ = P XᵀX P,
    X̄ᵀȲ = P XᵀY P and the modes Ȳ V Σ⁻¹ w stay combinations of Θ's rows
    (B = P V). Noise in X then no longer biases the eigenvalues towards 0.
    """
    kxx, kxy = k[:-1, :-1], k[:-1, 1:]
    if tls:
        s2z, q = jnp.linalg.eigh(kxx + k[1:, 1:])
        sz = jnp.sqrt(jnp.maximum(s2z, 0.0))
        p = (q * (sz > rcond * sz[-1])[None, :]) @ q.T
        kxx, kxy = p @ kxx @ p, p @ kxy @ p
    s2, v = jnp.linalg.eigh(kxx)
    s2, v = s2[::-1], v[:, ::-1]
    sigma = jnp.sqrt(jnp.maximum(s2, 0.0))
    keep = sigma > rcond * sigma[0]
    inv_sigma = jnp.where(keep, 1.0 / jnp.where(keep, sigma, 1.0), 0.0)
    a = inv_sigma[:, None] * (v.T @ kxy @ v) * inv_sigma[None, :]
    basis = p @ v if tls else v
    return a, basis, sigma, keep, inv_sigma


def _eig_cpu(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a small non-symmetric matrix: `jnp.linalg.eig` exists on CPU only."""
    cpu = jax.local_devices(backend="cpu")[0]  # this process's (with several, devices()[0] is process 0's)
    with jax.default_device(cpu):
        lam, w = jnp.linalg.eig(jax.device_put(a, cpu))
    return np.asarray(lam), np.asarray(w)


@functools.partial(jax.jit, static_argnames=("amplitudes",))
def _assemble(k, v, inv_sigma, lam, w, valid, amplitudes: str):
    """Mode coefficients C and amplitudes b, all from K (no N-sized work)."""
    t = v.shape[0]
    lam = jnp.where(valid, lam, 0.0)
    safe = jnp.where(valid, lam, 1.0)
    c = (v * inv_sigma[None, :]).astype(jnp.complex128) @ w / safe[None, :]
    c = jnp.where(valid[None, :], c, 0.0)
    c = jnp.concatenate([jnp.zeros((1, t), c.dtype), c])  # φ = Θᵀ C, Θ[0] unused
    g = c.conj().T @ k @ c  # ΦᴴΦ
    if amplitudes == "first":
        # min_b ‖Φb − θ_0‖: (ΦᴴΦ) b = Φᴴθ_0.
        p, q = g, c.conj().T @ k[:, 0]
    else:
        # min_b Σ_t ‖Φ diag(λ^t) b − θ_t‖² over all snapshots (Jovanović et al.).
        powers = lam[None, :] ** jnp.arange(t + 1)[:, None]  # (T+1, T)
        vand = powers.conj().T @ powers
        p = g * vand
        q = jnp.sum(powers.conj() * (c.conj().T @ k).T, axis=0)
    mask2 = valid[:, None] & valid[None, :]
    p = jnp.where(mask2, p, jnp.eye(t))
    q = jnp.where(valid, q, 0.0)
    b = jnp.linalg.lstsq(p, q, rcond=None)[0]
    return c, jnp.where(valid, b, 0.0)


def _validate_gram(k: Any) -> None:
    check_numeric(k, "the Gram matrix")
    if np.ndim(k) < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"Gram matrix must be square, got shape {np.shape(k)}")
    if k.shape[-1] < MIN_SNAPSHOTS:
        raise ValueError(
            f"need at least {MIN_SNAPSHOTS} snapshots for a DMD fit, got {k.shape[-1]}"
        )
    if not np.all(np.isfinite(np.asarray(k))):
        raise ValueError("Gram matrix contains NaN or Inf (NaN/Inf in the snapshots?)")


def _warn_on_scale(k: Any, rcond: float) -> None:
    """Warns when the rank cutoff cannot do its job: K = 0 (every snapshot
    zero, or float32 subnormals that XLA flushes to zero when casting), or
    snapshot norms ‖θ_t‖ = √K_tt spanning more than 1/rcond, so that the
    cutoff σ_i > rcond·σ_max, set by the largest snapshots, discards the
    smallest ones whole (an outlier or overflow-sized entry does this)."""
    norms = np.sqrt(np.maximum(np.diagonal(np.asarray(k, np.float64)), 0.0))
    if not norms.max() > 0:
        warnings.warn("the Gram matrix is zero: every snapshot is zero (or float32 subnormals, which XLA "
                      "flushes to zero); the fit has no modes and KMP no scores", RuntimeWarning, stacklevel=3)
        return
    nonzero = np.flatnonzero(norms > 0)
    big, small = int(np.argmax(norms)), int(nonzero[np.argmin(norms[nonzero])])
    if rcond > 0 and norms[big] * rcond > norms[small]:
        warnings.warn(
            f"snapshot norms span {norms[big] / norms[small]:.3g}x (‖θ_{big}‖ = {norms[big]:.3g}, "
            f"‖θ_{small}‖ = {norms[small]:.3g}), more than 1/rcond = {1 / rcond:.3g}: the rank cutoff, "
            "set by the largest, discards the smallest snapshots whole; look for an outlier entry or "
            "rescale Θ", RuntimeWarning, stacklevel=3)


def _check_rcond(rcond: float) -> None:
    if not (np.isfinite(rcond) and 0.0 <= rcond < 1.0):
        raise ValueError(f"rcond must be in [0, 1), got {rcond}")


def _check_amplitudes(amplitudes: str) -> None:
    if amplitudes not in ("first", "all"):
        raise ValueError(f"amplitudes must be 'first' or 'all', got {amplitudes!r}")


def fit_dmd(k: Any, rcond: float = DEFAULT_RCOND, amplitudes: str = "first",
            tls: bool = False) -> DMDFit:
    """Exact DMD from the Gram matrix K = ΘΘᵀ (method of snapshots).

    Args:
      k: K, shape (T+1, T+1), from `gram`.
      rcond: keep directions of X with σ_i > rcond·σ_max (see DEFAULT_RCOND).
        Inverting the tiny σ of noise directions, as the reference code does,
        injects spurious eigenvalues.
      amplitudes: "first" fits b to θ_0 (Tu et al.); "all" fits b to every
        snapshot in least squares (better predictions under noise).
      tls: total-least-squares DMD (see `_reduced_operator`): less biased
        eigenvalues when the snapshots are noisy; the same fit on exact
        low-rank data. singular_values are then those of the projected X̄.

    Returns:
      A DMDFit. Modes whose λ is 0 (the null space of Ã) are dropped: they do
      not move any snapshot after t = 0.

    Raises:
      ValueError: K not square, not numeric, smaller than 3×3, or not finite;
        rcond outside [0, 1); an unknown `amplitudes`.

    Warns:
      RuntimeWarning: K = 0, or snapshot norms spanning more than 1/rcond
        (`_warn_on_scale`).
    """
    _validate_gram(k)
    _check_rcond(rcond)
    _check_amplitudes(amplitudes)
    _warn_on_scale(k, rcond)
    with jax.enable_x64(True):
        k = jnp.asarray(k, jnp.float64)
        a, v, sigma, keep, inv_sigma = _reduced_operator(k, jnp.float64(rcond), tls)
        lam, w, valid = _eig_truncated(np.asarray(a), int(np.sum(keep)))
        c, b = _assemble(k, v, inv_sigma, jnp.asarray(lam), jnp.asarray(w), jnp.asarray(valid), amplitudes)
        order = _order_by_distance_to_one(lam, valid)
        lam, c, valid = jnp.asarray(lam)[order], c[:, order], jnp.asarray(valid)[order]
        return DMDFit(
            eigenvalues=lam,
            coefficients=c,
            amplitudes=b[order],
            singular_values=sigma,
            valid=valid,
            directions=jnp.sum(keep),
            residuals=_mode_residuals(k, c, lam, valid),
        )


def _eig_truncated(a: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenpairs of the leading r×r block of Ã, zero-padded to Ã's size."""
    t = a.shape[0]
    lam = np.zeros(t, np.complex128)
    w = np.zeros((t, t), np.complex128)
    valid = np.zeros(t, bool)
    if r > 0:
        lam_r, w_r = _eig_cpu(a[:r, :r])
        lam[:r], w[:r, :r] = lam_r, w_r
        scale = max(np.max(np.abs(lam_r)), np.finfo(np.float64).tiny)
        valid[:r] = np.abs(lam_r) > 1e-12 * scale
    return lam, w, valid


def _order_by_distance_to_one(lam: np.ndarray, valid: np.ndarray) -> np.ndarray:
    dist = np.where(valid, np.abs(lam - 1.0), np.inf)
    return np.argsort(dist, kind="stable")


def fit_dmd_batched(
    grams: Any, rcond: float = DEFAULT_RCOND, amplitudes: str = "first"
) -> DMDFit:
    """One exact DMD per stacked Gram matrix (e.g. one per layer), solved together.

    The float64 reductions and mode assembly are vmapped over the batch; the
    eigenproblems (CPU-only in JAX) run one per batch entry. Fields gain a
    leading batch axis; entries are padded to T so they stack.
    """
    _validate_gram(grams)
    _check_rcond(rcond)
    _check_amplitudes(amplitudes)
    if np.ndim(grams) != 3:
        raise ValueError(f"grams must have shape (L, T+1, T+1), got {np.shape(grams)}")
    with jax.enable_x64(True):
        grams = jnp.asarray(grams, jnp.float64)
        a, v, sigma, keep, inv_sigma = jax.vmap(_reduced_operator, in_axes=(0, None))(
            grams, jnp.float64(rcond)
        )
        a, ranks = np.asarray(a), np.asarray(jnp.sum(keep, axis=1))
        eigs = [_eig_truncated(a[i], int(ranks[i])) for i in range(a.shape[0])]
        lam = np.stack([e[0] for e in eigs])
        w = np.stack([e[1] for e in eigs])
        valid = np.stack([e[2] for e in eigs])
        assemble = jax.vmap(functools.partial(_assemble, amplitudes=amplitudes))
        c, b = assemble(grams, v, inv_sigma, jnp.asarray(lam), jnp.asarray(w), jnp.asarray(valid))
        order = np.stack([_order_by_distance_to_one(l, m) for l, m in zip(lam, valid)])
        take = lambda x, axis: jnp.take_along_axis(x, jnp.asarray(order if axis == 1 else order[:, None, :]), axis=axis)
        lam, c, valid = take(jnp.asarray(lam), 1), take(c, 2), take(jnp.asarray(valid), 1)
        return DMDFit(
            eigenvalues=lam,
            coefficients=c,
            amplitudes=take(b, 1),
            singular_values=sigma,
            valid=valid,
            directions=jnp.asarray(ranks),
            residuals=jax.vmap(_mode_residuals)(grams, c, lam, valid),
        )


# ---------------------------------------------------------------------------
def mode_residuals(k: Any, fit: DMDFit) -> jax.Array:
    """How well each mode is an eigen-direction of the data: the relative
    residual r_i = ‖Y v_i − λ_i X v_i‖ / ‖X v_i‖ (ResDMD-style), from K alone.

    With X = Θ[:-1]ᵀ, Y = Θ[1:]ᵀ and v_i = λ_i C[1:, i] = V Σ⁻¹ w_i (so that
    X v_i is the projected mode and Y v_i the same combination one step
    later), K gives every norm without an N-sized pass:

      ‖Y v − λ X v‖² = vᴴ K_yy v − 2 Re(λ vᴴ K_yx v) + |λ|² vᴴ K_xx v,
      ‖X v‖² = vᴴ K_xx v.

    r_i = 0 when span(X) is invariant under the dynamics and φ_i is an exact
    eigenvector (exact linear dynamics); noise and nonlinearity make it
    grow. The float64 cancellation floors it near 1e-8.

    Args:
      k: the Gram matrix K = ΘΘᵀ the fit was computed from, (T+1, T+1).
      fit: `fit_dmd(k)`.

    Returns:
      (T,) float64 residuals in the fit's order; NaN for invalid modes.
    """
    _validate_gram(k)
    with jax.enable_x64(True):
        return _mode_residuals(jnp.asarray(k, jnp.float64), fit.coefficients,
                               fit.eigenvalues, fit.valid)  # = fit.residuals for fit_dmd(k)


@jax.jit
def _mode_residuals(k, c, lam, valid):
    v = c[1:, :] * lam[None, :]  # (T, T) complex: v_i = λ_i C[1:, i]
    kxx, kyy, kyx = k[:-1, :-1], k[1:, 1:], k[1:, :-1]
    quad = lambda m: jnp.real(jnp.sum(v.conj() * (m @ v), axis=0))
    cross = jnp.sum(v.conj() * (kyx @ v), axis=0)  # vᴴ K_yx v
    gg = quad(kxx)
    num = quad(kyy) - 2.0 * jnp.real(lam * cross) + jnp.abs(lam) ** 2 * gg
    r = jnp.sqrt(jnp.maximum(num, 0.0) / jnp.where(gg > 0, gg, 1.0))
    return jnp.where(valid & (gg > 0), r, jnp.nan)


def fit_trajectory(
    snapshots: Any,
    rcond: float = DEFAULT_RCOND,
    amplitudes: str = "first",
    block_size: int = DEFAULT_BLOCK_SIZE,
    memory_budget: int | None = None,
    tls: bool = False,
) -> DMDFit:
    """`fit_dmd(gram(Θ))`: the whole fit from the snapshot stack."""
    return fit_dmd(
        gram(snapshots, block_size, memory_budget), rcond=rcond, amplitudes=amplitudes, tls=tls
    )
