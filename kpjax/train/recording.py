"""Recording the weight trajectory Θ while training: in RAM or into a store.

The training side of Θ: a train step wrapped to write θ(t) into a donated
snapshot buffer, and the loops that fill a (T+1)×N device array
(`record_trajectory`) or stream k-row chunks to a `kpjax.io.trajectory_store`
file from a writer thread (`record_trajectory_to_store`). The store (a file
format) never imports this module.

May import: jax, numpy, kpjax.train.compile_options, kpjax.flatten, kpjax.train,
kpjax.io.trajectory_store.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.train.compile_options import jit_step
from kpjax.flatten import ravel_selected
from kpjax.train.state import TrainState
from kpjax.train.steps import Metrics
from kpjax.io.trajectory_store import TrajectoryStore


def make_recording_train_step(
    train_step: Callable[..., tuple[TrainState, Metrics]],
    select: Any,
) -> Callable[..., tuple[TrainState, jax.Array, Metrics]]:
    """Wraps a train step so it also writes the new θ into a snapshot buffer.

    The write happens inside the jitted step with the buffer donated, so the
    (T+1)×N buffer is updated in place on the device: no host round-trip
    and no copy of the buffer per step.

    Args:
        train_step: from `make_train_step` (jitted or not).
        select: which params to record, as for
            `kpjax.flatten.ravel_selected`.

    Returns:
        jitted ``step(state, images, labels, snapshots, index) ->
        (state, snapshots, metrics)`` that sets row ``index`` of
        ``snapshots`` to the raveled selected params after the step;
        ``state`` and ``snapshots`` are donated.
    """

    def recording_step(state, images, labels, snapshots, index):
        state, metrics = train_step(state, images, labels)
        flat, _ = ravel_selected(state.params, select)
        snapshots = snapshots.at[index].set(flat.astype(snapshots.dtype))
        return state, snapshots, metrics

    return jit_step(recording_step, donate_argnums=(0, 3))


@functools.partial(jax.jit, static_argnums=1)
def first_snapshots(flat0: jax.Array, rows: int) -> jax.Array:
    """The float32 rows×N snapshot buffer: θ(t₁) in row 0, zeros below.

    Built by one compiled fusion, so only one rows×N array ever exists: a
    zero buffer made first and then given its row 0 is copied (a 3.45 GB
    buffer peaked at 6.97 GB RSS that way, at 3.59 GB built in one).
    """
    return jnp.zeros((rows, flat0.size), jnp.float32).at[0].set(flat0.astype(jnp.float32))


def take_batches(
    batches: Iterable[tuple[Any, Any]], num_steps: int, what: str
) -> Iterator[tuple[Any, Any]]:
    """Exactly ``num_steps`` batches; a ValueError naming ``what`` if they run out."""
    batch_iter = iter(batches)
    for t in range(num_steps):
        try:
            yield next(batch_iter)
        except StopIteration:
            raise ValueError(
                f"{what}: the batches ran out after {t} of {num_steps} "
                "steps") from None


def record_trajectory(
    recording_step: Callable[..., tuple[TrainState, jax.Array, Metrics]],
    state: TrainState,
    batches: Iterable[tuple[Any, Any]],
    num_steps: int,
    select: Any,
) -> tuple[TrainState, jax.Array]:
    """Trains ``num_steps`` steps and returns the snapshot matrix Θ.

    Args:
        recording_step: from `make_recording_train_step` (same ``select``).
        state: the state before the first step (donated).
        batches: iterable of ``(images, labels)``, at least ``num_steps``.
        num_steps: T.
        select: which params to record, as for
            `kpjax.flatten.ravel_selected`.

    Returns:
        ``(state, Θ)``, Θ a float32 (T+1)×N device array: row 0 holds θ
        before the first step, row t the params after step t.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    flat0, _ = ravel_selected(state.params, select)
    snapshots = first_snapshots(flat0, num_steps + 1)
    steps = take_batches(batches, num_steps, "record_trajectory")
    for t, (images, labels) in enumerate(steps, start=1):
        state, snapshots, _ = recording_step(
            state, images, labels, snapshots, jnp.int32(t))
    return state, snapshots


def record_trajectory_to_store(
    recording_step: Callable[..., Any],
    state: Any,
    batches: Iterable[tuple[Any, Any]],
    num_steps: int,
    select: Any,
    store: TrajectoryStore,
    rows_per_flush: int = 32,
    on_step: Callable[[int, Any], None] | None = None,
) -> Any:
    """`record_trajectory` with Θ written to `store` instead of RAM.

    The recording step writes θ(t) into a k-row device buffer (row t mod k,
    in the storage dtype); every k steps the buffer goes to a writer thread,
    which copies it to the host and appends it to the file, while training
    continues in a second buffer. The step never waits for the disk unless
    the writer falls two flushes behind; memory is 2·k·N in the storage
    dtype, independent of T.

    Args:
      recording_step: from `make_recording_train_step` (same
        `select`).
      state: the TrainState before the first step (donated).
      batches: iterable of (images, labels), at least `num_steps`.
      num_steps: T.
      select: which params to record, as for `kpjax.flatten.ravel_selected`.
      store: an empty store with N columns and room for T+1 rows.
      rows_per_flush: k.
      on_step: called as on_step(t, state) after step t (the next step
        donates the state: copy what you keep).

    Returns:
      The state after T steps; row 0 of the store holds θ before the first
      step, row t the params after step t.
    """
    if num_steps < 1 or rows_per_flush < 1:
        raise ValueError(f"need num_steps ≥ 1 and rows_per_flush ≥ 1, got {num_steps}, {rows_per_flush}")
    flat0, _ = ravel_selected(state.params, select)
    if flat0.size != store.num_params:
        raise ValueError(f"the selected params have N = {flat0.size}, the store has {store.num_params}")
    if store.rows != 0 or store.num_snapshots < num_steps + 1:
        raise ValueError(
            f"store must be empty with room for {num_steps + 1} snapshots; it has "
            f"{store.rows} rows written of {store.num_snapshots}"
        )
    store.append(np.asarray(flat0))
    k = min(rows_per_flush, num_steps)
    free: queue.Queue = queue.Queue()
    work: queue.Queue = queue.Queue()
    errors: list[BaseException] = []
    for _ in range(2):
        free.put(jnp.zeros((k, store.num_params), store.dtype))

    def writer() -> None:
        while (item := work.get()) is not None:
            buffer, count = item
            if not errors:
                try:
                    store.append(np.asarray(buffer)[:count])
                except BaseException as e:  # re-raised in the training thread
                    errors.append(e)
            free.put(buffer)

    thread = threading.Thread(target=writer, name="trajectory-writer", daemon=True)
    thread.start()
    try:
        buffer, filled = free.get(), 0
        steps = take_batches(batches, num_steps, "record_trajectory_to_store")
        for t, (images, labels) in enumerate(steps, start=1):
            state, buffer, _ = recording_step(state, images, labels, buffer, jnp.int32(filled))
            if on_step is not None:
                on_step(t, state)
            filled += 1
            if filled == k or t == num_steps:
                buffer.copy_to_host_async()
                work.put((buffer, filled))
                if t < num_steps:
                    buffer, filled = free.get(), 0
                if errors:
                    break
    finally:
        work.put(None)
        thread.join()
    if errors:
        raise errors[0]
    return state
