"""Koopman / DMD fit of a parameter trajectory.

Training is a dynamical system on the parameters, θ(t+1) = T(θ(t)). From the
snapshot stack Θ = [θ_0 … θ_T] (stored row-wise, shape (T+1, N), N ≫ T) we fit
the Koopman operator of the identity observable by exact dynamic mode
decomposition (DMD) with the method of snapshots (Tu et al. 2014):

  X = Θ[:-1], Y = Θ[1:] (as N×T matrices, columns = snapshots)
  K = ΘΘᵀ ((T+1)×(T+1), float64)      XᵀX = K[:-1,:-1], XᵀY = K[:-1,1:]
  XᵀX = V Σ² Vᵀ                        keep σ_i > rcond·σ_max
  Ã = Σ⁻¹ Vᵀ (XᵀY) V Σ⁻¹,  Ã w_i = λ_i w_i
  φ_i = (1/λ_i) Y V Σ⁻¹ w_i = Yᵀ c_i    (c_i = V Σ⁻¹ w_i / λ_i)
  θ(t) ≈ Σ_i b_i λ_i^t φ_i

Every N-sized product of the fit lives in K, which is accumulated in float64
over column blocks of Θ, so the only N×T array ever held is Θ itself. Modes,
predictions and predicted steps are one blocked pass Θᵀw each. All O(T³) work
is jit-compiled in float64; only the non-symmetric eigenproblem, which JAX
implements on CPU only, runs outside jit (`_eig_cpu`).

May import: jax, numpy, kpjax.flatten.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.flatten import FlatSpec, Select, flat_spec, ravel_with_spec

PyTree = Any

# Singular-value cutoff relative to σ_max. Float32 snapshots carry a relative
# rounding error of 2⁻²⁴ ≈ 6e-8 per entry, so directions of X with
# σ_i/σ_max below ~1e-7 are rounding noise; the float64 Gram resolves ratios
# down to ~1e-8. 1e-6 keeps every direction at least ~10× above that noise
# floor, so no noise direction enters Ã and produces a spurious eigenvalue.
DEFAULT_RCOND = 1e-6

# Columns of Θ per block in blocked passes: (T+1)·block float64 temporaries,
# 13 MB at T = 391. Measured on 2 cores at N = 134k, T = 391: 4096 columns
# beat 2048 and 16384 (cache-resident panels), see BUILD_NOTES.md.
DEFAULT_BLOCK_SIZE = 4096

MIN_SNAPSHOTS = 3

# Eigenvalues within this distance of 1 form the fixed-point cluster of
# `fixed_point_subspace`: over a window of T = 469 steps (one MNIST epoch) a
# mode with |λ − 1| ≤ 1e-4 changes by at most |λ^T − 1| ≈ 5 %, so on the
# window's time scale it does not move. Single modes that close to λ_1 are
# where KMP became fragile early in training (separations down to 1.7e-5,
# BUILD_NOTES).
DEFAULT_CLUSTER_TOL = 1e-4

# Bytes a blocked pass needs per entry of a (T+1)×block panel of Θ, measured
# with XLA's compiled memory analysis (tests/test_koopman.py): the block as
# passed (≤ 8 bytes), its float64 cast (8) and, for Θᵀw with up to T complex
# weights, the (block, 2T) float64 output (≤ 16 per panel entry).
_BYTES_PER_PANEL_ENTRY = 32


def stack_snapshots(trajectory: Iterable[PyTree], select: Select) -> tuple[jax.Array, FlatSpec]:
    """Θ of shape (T+1, N), float32, from a sequence of parameter pytrees."""
    trajectory = list(trajectory)
    if not trajectory:
        raise ValueError("empty trajectory")
    spec = flat_spec(trajectory[0], select)
    rows = []
    for t, params in enumerate(trajectory):
        if jax.tree_util.tree_structure(params) != spec.treedef:
            raise ValueError(f"snapshot {t} has a different pytree structure than snapshot 0")
        rows.append(ravel_with_spec(params, spec).astype(jnp.float32))
    return jnp.stack(rows), spec


# ---------------------------------------------------------------------------
# Blocked passes over the columns of Θ.


def _check_snapshots(snapshots: Any) -> None:
    if np.issubdtype(np.dtype(snapshots.dtype), np.complexfloating):
        raise ValueError(
            f"snapshots must be real (parameter trajectories), got dtype {snapshots.dtype}")
    if np.ndim(snapshots) != 2:
        raise ValueError(
            f"snapshots must be a (T+1, N) array, got shape {np.shape(snapshots)}"
        )
    if snapshots.shape[0] < MIN_SNAPSHOTS:
        raise ValueError(
            f"need at least {MIN_SNAPSHOTS} snapshots for a DMD fit "
            f"(X and Y need 2 columns each), got {snapshots.shape[0]}"
        )


def _column_blocks(snapshots: Any, block_size: int):
    """Yields (start, block) with every block padded to `block_size` columns.

    Padding the last block with zero columns changes no Gram entry and keeps
    one compiled shape. Works for jax arrays, numpy arrays and np.memmap.
    """
    n = snapshots.shape[1]
    block_size = max(1, min(block_size, n))
    for start in range(0, n, block_size):
        block = snapshots[:, start : start + block_size]
        width = block.shape[1]
        if width < block_size:
            block = jnp.pad(jnp.asarray(block), ((0, 0), (0, block_size - width)))
        yield start, width, block


def block_size_for_budget(num_snapshots: int, memory_budget: int) -> int:
    """Columns per block so that a blocked pass's temporaries fit in a budget.

    Peak memory of `gram` and `combine_snapshots` beyond Θ itself (which may be
    on disk) and their N-sized output is then bounded by `memory_budget`,
    whatever N: (T+1)·block panel entries at 32 bytes each plus three float64
    (T+1)×(T+1) Gram buffers. Capped at DEFAULT_BLOCK_SIZE, which is faster
    than larger blocks (BUILD_NOTES.md), so a generous budget changes nothing.

    Args:
      num_snapshots: T+1, the rows of Θ.
      memory_budget: bytes for the temporaries of one block.

    Returns:
      block_size ≥ 1.

    Raises:
      ValueError: the budget does not hold the Gram buffers and one column.
    """
    fixed = 3 * 8 * num_snapshots**2
    per_column = _BYTES_PER_PANEL_ENTRY * num_snapshots
    if num_snapshots < 1 or memory_budget < fixed + per_column:
        raise ValueError(
            f"memory_budget {memory_budget} B is too small for {num_snapshots} snapshots: "
            f"need at least {fixed + per_column} B (three float64 Gram buffers and one column)"
        )
    return int(min(DEFAULT_BLOCK_SIZE, (memory_budget - fixed) // per_column))


def _resolve_block_size(snapshots: Any, block_size: int, memory_budget: int | None) -> int:
    if memory_budget is None:
        return block_size
    return min(block_size, block_size_for_budget(snapshots.shape[0], memory_budget))


@jax.jit
def _gram_block(k: jax.Array, block: jax.Array) -> jax.Array:
    # K is symmetric: with the rows split in halves, three products
    # (B₁B₁ᵀ, B₁B₂ᵀ, B₂B₂ᵀ) give all of it for 3/4 of the flops (measured
    # 20% faster than one product; finer splits lose to smaller GEMMs).
    b = block.astype(jnp.float64)
    h = b.shape[0] // 2
    b1, b2 = b[:h], b[h:]
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    k12 = dot(b1, b2.T)
    return k + jnp.block([[dot(b1, b1.T), k12], [k12.T, dot(b2, b2.T)]])


def gram(
    snapshots: Any, block_size: int = DEFAULT_BLOCK_SIZE, memory_budget: int | None = None
) -> jax.Array:
    """K = ΘΘᵀ in float64, accumulated over column blocks of Θ.

    Args:
      snapshots: Θ, shape (T+1, N); a jax array, numpy array, np.memmap or
        any array-like with `shape` and 2-d slicing (e.g.
        `kpjax.trajectory_store.TrajectoryStore`). float32, float16 and
        bfloat16 are cast to float64 block by block.
      block_size: columns of Θ per block; temporaries are (T+1)×block_size.
      memory_budget: optional bytes for the temporaries; lowers block_size
        to `block_size_for_budget(T+1, memory_budget)` if that is smaller.

    Returns:
      K, shape (T+1, T+1), float64.

    Raises:
      ValueError: too few snapshots, or NaN/Inf in Θ (detected from K's
        diagonal, K_tt = ‖θ_t‖², so no extra pass over Θ is needed).
    """
    _check_snapshots(snapshots)
    block_size = _resolve_block_size(snapshots, block_size, memory_budget)
    rows = snapshots.shape[0]
    with jax.enable_x64(True):
        k = jnp.zeros((rows, rows), jnp.float64)
        for _, _, block in _column_blocks(snapshots, block_size):
            k = _gram_block(k, block)
        diag = np.asarray(jnp.diagonal(k))
    bad = np.flatnonzero(~np.isfinite(diag))
    if bad.size:
        raise ValueError(
            f"snapshots contain NaN or Inf (in snapshot rows {bad[:10].tolist()}"
            f"{' …' if bad.size > 10 else ''})"
        )
    return k


def banded_gram(snapshots: Any, bandwidth: int, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """The band |i − j| ≤ `bandwidth` of K = ΘΘᵀ, float64, zero outside it.

    What sliding windows of w ≤ bandwidth steps read (their Grams are the
    diagonal blocks K[s:s+w+1, s:s+w+1]), for about 2·bandwidth/(T+1) of
    the full Gram's flops: one pass over Θ, blocked over columns as `gram`.
    Row tiles of bandwidth+1 rows each take the products with the tile and
    the `bandwidth` rows before it; the upper triangle is the lower's mirror.

    Raises:
      ValueError: bandwidth < 2, too few snapshots, or NaN/Inf in Θ.
    """
    _check_snapshots(snapshots)
    if bandwidth < MIN_SNAPSHOTS - 1:
        raise ValueError(f"bandwidth must be >= {MIN_SNAPSHOTS - 1}, got {bandwidth}")
    rows = snapshots.shape[0]
    tile = bandwidth + 1
    lower = np.zeros((rows, rows), np.float64)
    for _, _, block in _column_blocks(snapshots, block_size):
        b = np.asarray(block, np.float64)
        for r0 in range(0, rows, tile):
            r1, lo = min(rows, r0 + tile), max(0, r0 - bandwidth)
            lower[r0:r1, lo:r1] += b[r0:r1] @ b[lo:r1].T
    lower = np.tril(lower)
    for i in range(tile, rows):  # tiles also computed some entries left of the band
        lower[i, : i - bandwidth] = 0.0
    k = lower + lower.T
    k[np.diag_indices(rows)] /= 2
    bad = np.flatnonzero(~np.isfinite(np.diagonal(k)))
    if bad.size:
        raise ValueError(f"snapshots contain NaN or Inf (in snapshot rows {bad[:10].tolist()}"
                         f"{' …' if bad.size > 10 else ''})")
    return k


def segment_grams(
    snapshots: Any, spec: FlatSpec, block_size: int = DEFAULT_BLOCK_SIZE
) -> jax.Array:
    """One Gram matrix per selected leaf (layer): K_l = Θ_l Θ_lᵀ, stacked (L, T+1, T+1).

    Σ_l K_l = K, so the per-layer fits cost one global Gram's flops.
    """
    _check_snapshots(snapshots)
    if snapshots.shape[1] != spec.size:
        raise ValueError(f"snapshots have {snapshots.shape[1]} columns, spec has {spec.size}")
    ends = list(spec.offsets[1:]) + [spec.size]
    grams = [
        gram(snapshots[:, start:end], block_size)
        for start, end in zip(spec.offsets, ends)
    ]
    with jax.enable_x64(True):
        return jnp.stack(grams)


@jax.jit
def _combine_block(block: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.dot(
        block.astype(jnp.float64).T, weights, precision=jax.lax.Precision.HIGHEST
    )


def combine_snapshots(
    snapshots: Any,
    weights: jax.Array,
    block_size: int = DEFAULT_BLOCK_SIZE,
    memory_budget: int | None = None,
) -> jax.Array:
    """Θᵀw for complex weights w of shape (T+1,) or (T+1, k), in float64 blocks.

    Returns complex128 of shape (N,) or (N, k). Every mode, prediction and
    predicted step is such a combination, so none needs a copy of Θ.
    `block_size` and `memory_budget` as for `gram` (the budget bounds the
    temporaries, not the N-sized result).
    """
    _check_snapshots(snapshots)
    block_size = _resolve_block_size(snapshots, block_size, memory_budget)
    with jax.enable_x64(True):
        w = jnp.asarray(weights, jnp.complex128)
        squeeze = w.ndim == 1
        w = w.reshape(w.shape[0], -1)
        if w.shape[0] != snapshots.shape[0]:
            raise ValueError(
                f"weights have {w.shape[0]} rows, snapshots have {snapshots.shape[0]}"
            )
        k = w.shape[1]
        w_real = jnp.concatenate([w.real, w.imag], axis=1)
        # Filled in place: a list of blocks, its concatenation and the complex
        # result would hold the N-sized output three times (4 GB at N = 25M).
        out = np.empty((snapshots.shape[1], k), np.complex128)
        for start, width, block in _column_blocks(snapshots, block_size):
            part = np.asarray(_combine_block(block, w_real))[:width]
            out[start : start + width] = part[:, :k] + 1j * part[:, k:]
        return jnp.asarray(out[:, 0] if squeeze else out)


# ---------------------------------------------------------------------------
# Exact DMD from the Gram matrix.


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
    if np.ndim(k) < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"Gram matrix must be square, got shape {np.shape(k)}")
    if k.shape[-1] < MIN_SNAPSHOTS:
        raise ValueError(
            f"need at least {MIN_SNAPSHOTS} snapshots for a DMD fit, got {k.shape[-1]}"
        )
    if not np.all(np.isfinite(np.asarray(k))):
        raise ValueError("Gram matrix contains NaN or Inf (NaN/Inf in the snapshots?)")


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
    """
    _validate_gram(k)
    _check_rcond(rcond)
    _check_amplitudes(amplitudes)
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
# What the fit says about the trajectory.


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


# ---------------------------------------------------------------------------
# Sliding windows and jumps.


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
