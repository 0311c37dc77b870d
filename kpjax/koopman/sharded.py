"""The Koopman fit with Θ's columns sharded across devices.

Θ (T+1, N) is split along N over a mesh axis (`kpjax.parallel.column_mesh`):
each device holds (T+1, N/devices) and forms its block of
K = ΘΘᵀ = Σ_devices Θ_d Θ_dᵀ in float64, column block by column block; one
`psum` adds the blocks, so every device ends with the whole (T+1)×(T+1)
Gram. The fit itself (O(T³)) runs on the replicated K; modes Θᵀw and scores
are then formed on each device's columns and stay sharded (the result's N
axis is sharded like Θ's).

Per device: N/devices · (T+1) · 4 bytes of Θ (float32), one (T+1)×block
float64 panel, and the (T+1)² Gram.

May import: jax, numpy, kpjax.koopman.dmd, kpjax.koopman.blocked, kpjax.koopman.modes, kpjax.parallel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kpjax.koopman.dmd import DMDFit
from kpjax.koopman.blocked import DEFAULT_BLOCK_SIZE, _check_snapshots
from kpjax.koopman.modes import fixed_point_index
from kpjax.parallel import global_array, to_host


def padded_columns(n: int, mesh: Mesh, axis: str = "data",
                   block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """N rounded up so that every device holds a whole number of column blocks."""
    devices = mesh.shape[axis]
    local = math.ceil(n / devices)
    block = max(1, min(block_size, local))
    return devices * math.ceil(local / block) * block


def shard_columns(snapshots, mesh: Mesh, axis: str = "data",
                  block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """Θ placed with its columns split over `axis`, zero-padded so that every
    device holds a whole number of column blocks (zero columns change no Gram
    entry and no mode entry that is kept: `sharded_modes` cuts them off).

    `snapshots` is anything sliced as Θ[:, a:b]: an array, or a
    `TrajectoryStore` on disk. Each process reads only its own devices'
    column ranges, and no padded copy of the whole Θ is made.
    """
    rows, n = snapshots.shape
    padded = padded_columns(n, mesh, axis, block_size)
    dtype = np.dtype(getattr(snapshots, "dtype", np.float32))

    def read(index):
        cols = index[1]
        start, stop = cols.start or 0, padded if cols.stop is None else cols.stop
        out = np.zeros((rows, stop - start), dtype)
        if start < n:
            out[:, :min(stop, n) - start] = np.asarray(snapshots[:, start:min(stop, n)], dtype)
        return out

    return global_array(None, NamedSharding(mesh, P(None, axis)), (rows, padded), read)


def sharded_gram(snapshots: jax.Array, mesh: Mesh, axis: str = "data",
                 block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """K = ΘΘᵀ (float64) from `shard_columns(Θ, mesh)`: each device accumulates
    its columns' Gram block by block, then one psum. Returned as a NumPy array
    in every process (it is small, (T+1)²): the fit then runs in each process
    on the same K, with no further communication.

    Raises:
      ValueError: NaN/Inf in Θ (from K's diagonal), too few snapshots.
    """
    _check_snapshots(snapshots)
    local = snapshots.shape[1] // mesh.shape[axis]
    block = max(1, min(block_size, local))
    if local % block:
        raise ValueError("snapshots must come from shard_columns with the same block_size")
    with jax.enable_x64(True):
        k = to_host(_gram_fn(mesh, axis, block, local // block)(snapshots))
    if not np.all(np.isfinite(np.diagonal(k))):
        raise ValueError("snapshots contain NaN or Inf")
    return k


@functools.lru_cache(maxsize=16)
def _gram_fn(mesh: Mesh, axis: str, block: int, blocks: int):
    def local_gram(x):
        def panel_gram(i):
            panel = jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=1).astype(jnp.float64)
            return jnp.dot(panel, panel.T, precision=jax.lax.Precision.HIGHEST)
        # Started from the first panel, so that the carry varies over the mesh axis like the panels.
        k = jax.lax.fori_loop(1, blocks, lambda i, k: k + panel_gram(i), panel_gram(0))
        return jax.lax.psum(k, axis)
    return jax.jit(jax.shard_map(local_gram, mesh=mesh, in_specs=P(None, axis), out_specs=P()))


def sharded_modes(snapshots: jax.Array, weights, mesh: Mesh, axis: str = "data") -> jax.Array:
    """Θᵀw for (T+1,) or (T+1, k) complex weights: complex128, sharded along N
    like Θ, so that each device holds the modes of its own columns and
    nothing is gathered. Θ's zero padding gives zero entries past the true N
    (`gather` cuts them off)."""
    with jax.enable_x64(True):
        w = np.asarray(weights, np.complex128)
        squeeze = w.ndim == 1
        w = w.reshape(w.shape[0], -1)
        out = _combine_fn(mesh, axis)(snapshots, np.concatenate([w.real, w.imag], axis=1))
        return out[:, 0] if squeeze else out


@functools.lru_cache(maxsize=16)
def _combine_fn(mesh: Mesh, axis: str):
    def local_combine(x, w):
        k = w.shape[1] // 2
        out = jnp.dot(x.astype(jnp.float64).T, w, precision=jax.lax.Precision.HIGHEST)
        return out[:, :k] + 1j * out[:, k:]
    return jax.jit(jax.shard_map(local_combine, mesh=mesh, in_specs=(P(None, axis), P()),
                                 out_specs=P(axis, None)))


def sharded_fixed_point_mode(snapshots: jax.Array, fit: DMDFit, mesh: Mesh,
                             axis: str = "data") -> jax.Array:
    """b₁φ₁ (complex128, padded length), sharded like Θ; `fit` from `fit_dmd(sharded_gram(...))`."""
    i = fixed_point_index(fit)
    return sharded_modes(snapshots, np.asarray(fit.coefficients)[:, i] * np.asarray(fit.amplitudes)[i],
                         mesh, axis)


def gather(x: jax.Array, n: int | None = None) -> np.ndarray:
    """A sharded array in full, in every process (an all-gather across
    processes when there are several), cut to its first n entries."""
    return to_host(x)[:n]
