"""The training loop: steps, progress callbacks, periodic checkpoints, resume.

The one loop of kpjax; experiments.train, .prune and .early all run their
training through `train_steps`. It knows nothing of models or data: it takes
a step function (`kpjax.train.make_train_step`), a state, and batches as a
function of the global step, so a resumed run sees exactly the batches an
uninterrupted one would (`kpjax.data.batch_stream`).

Resume: with `Checkpointing`, the newest checkpoint in the directory whose
step lies in (state.step, until] is restored first, then the loop continues
from there. A checkpoint whose metadata differs from the run's (another
model, dataset, batch size or seed) is refused with a ValueError naming both.

May import: jax, kpjax.io.checkpoints, kpjax.parallel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax

from kpjax import parallel
from kpjax.io import checkpoints

PyTree = Any
Batch = tuple[Any, Any]
# step(state, images, labels) -> (state, metrics), e.g. from make_train_step.
StepFn = Callable[[Any, Any, Any], tuple[Any, Mapping[str, jax.Array]]]
# on_step(step, state, metrics) after each step; `step` is the global step
# count after it (1 after the first step), metrics are device arrays (JAX
# dispatches steps asynchronously: reading them waits for the step).
OnStep = Callable[[int, Any, Mapping[str, jax.Array]], None]

_log = logging.getLogger(__name__)


class Checkpointing(NamedTuple):
    """Where and how often `train_steps` saves the whole training state.

    Attributes:
      directory: the orbax checkpoint directory (created when needed).
      every: save every this many steps (of the global step count), and
        always at the end; None saves at the end only.
      metadata: JSON-serializable facts of the run (model, data, batch size,
        seed, ...), saved with every step; restoring a checkpoint with other
        values is refused.
      max_to_keep: how many recent checkpoints to keep (None: all).
    """

    directory: str
    every: int | None = None
    metadata: Mapping[str, Any] = {}
    max_to_keep: int | None = 1


def restore_latest(
    checkpointing: Checkpointing, state: PyTree, until: int | None = None
) -> PyTree:
    """`state`, or the newest intact checkpoint with state.step < step <= until.

    The metadata are compared before any array is read, so a directory of
    another run (another model: other shapes) is named as such. A step that
    cannot be restored (a damaged file, a save cut short that orbax took as
    complete) is set aside as ``<step>.damaged`` with a warning, and the
    next older step is tried; with none left, training starts from `state`.

    Raises:
      ValueError: the checkpoints' metadata differ from
        `checkpointing.metadata`.
    """
    current = int(jax.device_get(state.step))
    steps = sorted((s for s in checkpoints.saved_steps(checkpointing.directory)
                    if s > current and (until is None or s <= until)), reverse=True)
    wanted = dict(checkpointing.metadata)
    for step in steps:
        try:
            meta = checkpoints.read_metadata(checkpointing.directory, step)
        except ValueError as e:
            _set_aside(checkpointing, step, e)
            continue
        saved = {k: meta.get(k) for k in wanted}
        if saved != wanted:
            raise ValueError(
                f"{checkpointing.directory} holds a run with {saved}, not {wanted}; "
                "use another directory")
        try:
            restored, _ = checkpoints.restore_checkpoint(checkpointing.directory, state, step)
        except ValueError as e:
            _set_aside(checkpointing, step, e)
            continue
        _log.info("resumed from step %d of %s", step, checkpointing.directory)
        return restored
    return state


def _set_aside(checkpointing: Checkpointing, step: int, error: Exception) -> None:
    # Every process finds the same damage; one renames (the others' renames
    # would race it), and all wait for it before trying an older step.
    moved = checkpoints.set_aside(checkpointing.directory, step) if parallel.is_primary() else "(by process 0)"
    parallel.sync(f"set aside {checkpointing.directory} {step}")
    _log.warning("checkpoint step %d of %s is damaged (%s); moved to %s, trying an older one",
                 step, checkpointing.directory, str(error).splitlines()[0][:200], moved)


def train_steps(
    train_step: StepFn,
    state: PyTree,
    batches_from: Callable[[int], Iterable[Batch]],
    until: int,
    *,
    checkpointing: Checkpointing | None = None,
    on_step: OnStep | None = None,
) -> PyTree:
    """Trains until ``state.step == until``, resuming from a checkpoint if any.

    Args:
      train_step: ``(state, images, labels) -> (state, metrics)``; may donate
        its state.
      state: the state to start from (e.g. a fresh `create_train_state`);
        donated with the first step.
      batches_from: ``start_step -> iterable of (images, labels)`` giving the
        batches of steps start_step, start_step + 1, ...
      until: the global step to stop at (>= state.step).
      checkpointing: periodic saves and resume; None trains in memory only.
      on_step: called after every step (progress bars, metric logs).

    Returns:
      The state after step ``until``.

    Raises:
      ValueError: ``until`` is behind the state, the batches run out, or a
        checkpoint cannot be resumed (see `restore_latest`).
    """
    if checkpointing is not None:
        state = restore_latest(checkpointing, state, until)
    step = int(jax.device_get(state.step))
    if until < step:
        raise ValueError(f"the state is at step {step}, past until={until}")
    if step == until:
        return state
    manager = None
    if checkpointing is not None:
        os.makedirs(checkpointing.directory, exist_ok=True)
        manager = checkpoints.checkpoint_manager(
            checkpointing.directory, max_to_keep=checkpointing.max_to_keep)
    every = checkpointing.every if checkpointing is not None else None
    try:
        batches = iter(batches_from(step))
        for step in range(step + 1, until + 1):
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"the batches ran out before step {step} of {until}")
            state, metrics = train_step(state, *batch)
            if on_step is not None:
                on_step(step, state, metrics)
            if manager is not None and (step == until or (every and step % every == 0)):
                checkpoints.save_checkpoint(manager, state, dict(checkpointing.metadata))
    finally:
        if manager is not None:
            manager.close()
    return state
