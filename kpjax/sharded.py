"""Data-parallel training steps and the Koopman fit with Θ's columns
sharded across devices.

Training: a 1-D mesh over the devices; each batch is split along the mesh
axis and the train state is replicated (`shard_batch`, `replicate`). The
jitted train, eval and gradient steps are unchanged: XLA partitions them
from their inputs' shardings and inserts the all-reduces (the loss is a mean
over the whole batch, BatchNorm's batch statistics span every device), so a
step equals the single-device step up to the order of float reductions.

Θ (T+1, N) is split along N over a mesh axis: each device holds
(T+1, N/devices) and forms its block of K = ΘΘᵀ = Σ_devices Θ_d Θ_dᵀ in
float64, column block by column block; one `psum` adds the blocks, so every
device ends with the whole (T+1)×(T+1) Gram. The fit itself (O(T³)) runs on
the replicated K; modes Θᵀw and scores are then formed on each device's
columns and stay sharded (the result's N axis is sharded like Θ's).

Per device: N/devices · (T+1) · 4 bytes of Θ (float32), one (T+1)×block
float64 panel, and the (T+1)² Gram. JAX's own runtime does the rest: the
same code runs on a CPU with forced host devices, on GPUs, TPUs and, after
`jax.distributed.initialize`, on several hosts.

May import: jax, numpy, kpjax.koopman.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kpjax import koopman


def column_mesh(devices=None, axis: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: all) for sharding Θ's columns."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (axis,))


def shard_batch(images, labels, mesh: Mesh, axis: str = "data"):
    """One batch split along `axis` (the batch size must divide the devices)."""
    devices = mesh.shape[axis]
    if len(images) % devices:
        raise ValueError(f"batch size {len(images)} does not divide over {devices} devices "
                         f"(mesh axis {axis!r}); choose a multiple of {devices}")
    sharding = NamedSharding(mesh, P(axis))
    return jax.device_put(images, sharding), jax.device_put(labels, sharding)


def replicate(tree, mesh: Mesh):
    """Every leaf of `tree` (e.g. a TrainState) on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_columns(snapshots, mesh: Mesh, axis: str = "data",
                  block_size: int = koopman.DEFAULT_BLOCK_SIZE) -> jax.Array:
    """Θ placed with its columns split over `axis`, zero-padded so that every
    device holds a whole number of column blocks (zero columns change no Gram
    entry and no mode entry that is kept: `sharded_modes` cuts them off)."""
    n = snapshots.shape[1]
    devices = mesh.shape[axis]
    local = math.ceil(n / devices)
    block = max(1, min(block_size, local))
    padded = devices * math.ceil(local / block) * block
    x = jnp.asarray(snapshots)
    if padded != n:
        x = jnp.pad(x, ((0, 0), (0, padded - n)))
    return jax.device_put(x, NamedSharding(mesh, P(None, axis)))


def sharded_gram(snapshots: jax.Array, mesh: Mesh, axis: str = "data",
                 block_size: int = koopman.DEFAULT_BLOCK_SIZE) -> jax.Array:
    """K = ΘΘᵀ (float64, replicated) from `shard_columns(Θ, mesh)`: each device
    accumulates its columns' Gram block by block, then one psum.

    Raises:
      ValueError: NaN/Inf in Θ (from K's diagonal), too few snapshots.
    """
    koopman._check_snapshots(snapshots)
    local = snapshots.shape[1] // mesh.shape[axis]
    block = max(1, min(block_size, local))
    if local % block:
        raise ValueError("snapshots must come from shard_columns with the same block_size")
    with jax.enable_x64(True):
        k = _gram_fn(mesh, axis, block, local // block)(snapshots)
        diag = np.asarray(jnp.diagonal(k))
    if not np.all(np.isfinite(diag)):
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


def sharded_modes(snapshots: jax.Array, weights, mesh: Mesh, n: int, axis: str = "data") -> jax.Array:
    """Θᵀw for (T+1,) or (T+1, k) complex weights, complex128, sharded along N
    like Θ (the first n entries: the padding is cut off)."""
    with jax.enable_x64(True):
        w = jnp.asarray(weights, jnp.complex128)
        squeeze = w.ndim == 1
        w = w.reshape(w.shape[0], -1)
        out = _combine_fn(mesh, axis)(snapshots, jnp.concatenate([w.real, w.imag], axis=1))
        k = w.shape[1]
        out = (out[:n, :k] + 1j * out[:n, k:])
        return out[:, 0] if squeeze else out


@functools.lru_cache(maxsize=16)
def _combine_fn(mesh: Mesh, axis: str):
    def local_combine(x, w):
        return jnp.dot(x.astype(jnp.float64).T, w, precision=jax.lax.Precision.HIGHEST)
    return jax.jit(jax.shard_map(local_combine, mesh=mesh, in_specs=(P(None, axis), P()),
                                 out_specs=P(axis, None)))


def sharded_fixed_point_mode(snapshots: jax.Array, fit: koopman.DMDFit, mesh: Mesh, n: int,
                             axis: str = "data") -> jax.Array:
    """b₁φ₁ (complex128, (n,)), sharded like Θ; `fit` from `fit_dmd(sharded_gram(...))`."""
    i = koopman.fixed_point_index(fit)
    return sharded_modes(snapshots, np.asarray(fit.coefficients)[:, i] * np.asarray(fit.amplitudes)[i],
                         mesh, n, axis)
