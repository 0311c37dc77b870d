"""The Gram matrix K = ΘΘᵀ of a snapshot stack, and blocked passes over Θ.

Θ = [θ_0 … θ_T] is stored row-wise, shape (T+1, N), N ≫ T. Every N-sized
product of the DMD fit lives in K ((T+1)×(T+1)), accumulated in float64 over
column blocks of Θ, so the only N×T array ever held is Θ itself; modes,
predictions and predicted steps are one blocked pass Θᵀw each
(`combine_snapshots`). Θ may be a device array, a NumPy array or an on-disk
`kpjax.io.trajectory_store.TrajectoryStore` (anything with `.shape`,
`.dtype` and column slicing).

Where Θ is in host memory (NumPy, a memmap or store, a jax array on one CPU
device: `_on_host`), the panel products are NumPy's BLAS calls: `b @ b.T`
is a float64 SYRK, 1.4x XLA:CPU's float64 dot on the same core (BUILD_NOTES,
"benchmarks/koopman_fit.py"), and nothing is compiled. On an accelerator
the panels are jitted XLA products.

May import: jax, numpy, kpjax.flatten.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.flatten import FlatSpec

# Columns of Θ per block in blocked passes: (T+1)·block float64 temporaries,
# 13 MB at T = 391. Measured on 2 cores at N = 134k, T = 391: 4096 columns
# beat 2048 and 16384 (cache-resident panels), see BUILD_NOTES.md.
DEFAULT_BLOCK_SIZE = 4096

MIN_SNAPSHOTS = 3
# Bytes a blocked pass needs per entry of a (T+1)×block panel of Θ, measured
# with XLA's compiled memory analysis (tests/test_koopman.py): the block as
# passed (≤ 8 bytes), its float64 cast (8) and, for Θᵀw with up to T complex
# weights, the (block, 2T) float64 output (≤ 16 per panel entry).
_BYTES_PER_PANEL_ENTRY = 32

# ---------------------------------------------------------------------------
# Blocked passes over the columns of Θ.


def check_numeric(array: Any, what: str) -> None:
    """`array` has a real numeric dtype (ints, floats, bfloat16), so a blocked
    pass can cast it to float64; object, string, bool and complex arrays
    are refused by name instead of failing inside XLA."""
    dtype = getattr(array, "dtype", None)
    if dtype is None or not hasattr(array, "shape"):
        raise ValueError(f"{what} must be an array with a shape and a dtype, got {type(array).__name__}")
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        raise ValueError(f"{what} must be real (parameter trajectories), got dtype {dtype}")
    if not jnp.issubdtype(np.dtype(dtype), jnp.number):
        raise ValueError(f"{what} must be numeric, got dtype {dtype}")


def _check_snapshots(snapshots: Any) -> None:
    check_numeric(snapshots, "snapshots")
    if np.ndim(snapshots) != 2:
        raise ValueError(
            f"snapshots must be a (T+1, N) array, got shape {np.shape(snapshots)}"
        )
    if snapshots.shape[1] == 0:
        raise ValueError(f"snapshots have no columns (shape {tuple(snapshots.shape)}): "
                         "a trajectory needs N >= 1 parameters")
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


def _on_host(snapshots: Any) -> bool:
    """Θ is read from host memory: anything but a jax array placed on an
    accelerator or over several devices (whose panels stay on the device)."""
    if not isinstance(snapshots, jax.Array):
        return True
    devices = snapshots.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _host_blocks(snapshots: Any, block_size: int):
    """Yields (start, width, float64 panel) of Θ on the host; a CPU jax
    array is viewed as NumPy without a copy, a device array moves one panel
    at a time."""
    if isinstance(snapshots, jax.Array) and _on_host(snapshots):
        snapshots = np.asarray(snapshots)
    n = snapshots.shape[1]
    block_size = max(1, min(block_size, n))
    for start in range(0, n, block_size):
        block = np.asarray(snapshots[:, start : start + block_size], np.float64)
        yield start, block.shape[1], block


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
        `kpjax.io.trajectory_store.TrajectoryStore`). float32, float16 and
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
        if _on_host(snapshots):
            k_host = np.zeros((rows, rows), np.float64)
            for _, _, block in _host_blocks(snapshots, block_size):
                k_host += block @ block.T  # NumPy calls SYRK for a product with its own transpose
            k = jnp.asarray(k_host)
        else:
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
    for _, _, b in _host_blocks(snapshots, block_size):
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
        if _on_host(snapshots):
            w_host = np.asarray(w_real)
            blocks, product = _host_blocks(snapshots, block_size), lambda b: b.T @ w_host
        else:
            blocks = _column_blocks(snapshots, block_size)
            product = lambda b: np.asarray(_combine_block(b, w_real))
        for start, width, block in blocks:
            part = product(block)[:width]
            out[start : start + width] = part[:, :k] + 1j * part[:, k:]
        return jnp.asarray(out[:, 0] if squeeze else out)
