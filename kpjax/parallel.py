"""Devices for data-parallel training: a 1-D mesh, batches split along it,
states replicated, and arrays placed per process.

Each batch is split along the mesh axis and the train state is replicated
(`shard_batch`, `replicate`). The jitted train, eval and gradient steps are
unchanged: XLA partitions them from their inputs' shardings and inserts the
all-reduces (the loss is a mean over the whole batch, BatchNorm's batch
statistics span every device), so a step equals the single-device step up
to the order of float reductions. JAX's own runtime does the rest: the same
code runs on a CPU with forced host devices, on GPUs, TPUs and, after
`jax.distributed.initialize`, on several hosts. The Koopman fit's sharded
Gram is `kpjax.koopman.sharded`.

May import: jax, numpy.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def column_mesh(devices=None, axis: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: all) for sharding Θ's columns."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (axis,))


def global_array(x, sharding: NamedSharding, shape=None, read=None) -> jax.Array:
    """A global array of `sharding`, each process filling only its own devices'
    slices (`read(index)`, default `x[index]`): the same call works with one
    process and with several (`jax.distributed.initialize`), where a
    `jax.device_put` of host data cannot reach other processes' devices."""
    read = read or (lambda index: np.asarray(x[index]))
    return jax.make_array_from_callback(tuple(shape or np.shape(x)), sharding, read)


def shard_batch(images, labels, mesh: Mesh, axis: str = "data"):
    """One batch split along `axis` (the batch size must divide the devices).
    Every process passes the whole (same) batch; each places its devices' rows."""
    devices = mesh.shape[axis]
    if len(images) % devices:
        raise ValueError(f"batch size {len(images)} does not divide over {devices} devices "
                         f"(mesh axis {axis!r}); choose a multiple of {devices}")
    sharding = NamedSharding(mesh, P(axis))
    return global_array(images, sharding), global_array(labels, sharding)


def replicate(tree, mesh: Mesh):
    """Every leaf of `tree` (e.g. a TrainState) on every device of the mesh
    (every process passes the same values)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda x: global_array(np.asarray(x), sharding), tree)


def to_host(tree):
    """A pytree as NumPy arrays in full in this process: a replicated leaf
    (e.g. the trained state) from its own copy, without a transfer; a sharded
    one (e.g. a batch split over several processes' devices) gathered from
    every process (an all-gather: every process must call it)."""
    def fetch(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree_util.tree_map(fetch, tree)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes what every process
    computed alike (result files); True with one process."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches `name` (JAX's barrier; nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
