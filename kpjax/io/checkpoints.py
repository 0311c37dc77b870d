"""Save and restore whole training states with orbax.

A checkpoint directory holds one subdirectory per saved step, each with two
items: ``state`` — the full `kpjax.train.TrainState` (params, batch stats,
optimizer state, step, RNG key, mask) as an orbax PyTree checkpoint — and
``meta``, a small JSON dict (e.g. the epoch and the position in it, so a run
can resume mid-epoch). Orbax writes each step to a temporary directory and
renames it when complete, so a run killed while saving leaves the previous
checkpoints intact.

Saving is synchronous: the train step donates its state buffers, and an
asynchronous save could still be reading them. Ctrl-C during a save takes
effect when the save is complete: orbax finishes a step on background
threads, and a KeyboardInterrupt in the middle of one leaves a
``*.orbax-checkpoint-tmp`` folder and threads that print tracebacks at
interpreter exit.

May import: jax, orbax.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any

_STATE = "state"
_META = "meta"


def checkpoint_manager(
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for saving, creating ``directory`` if needed.

    Use it as a context manager (or call ``close()``).

    Args:
        directory: where the step subdirectories go.
        max_to_keep: how many recent checkpoints to keep (None: all).

    Returns:
        The manager, for `save_checkpoint`.
    """
    if max_to_keep is not None and max_to_keep < 1:
        raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(os.fspath(directory), options=options)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Holds back SIGINT for the block and delivers it afterwards.

    Only where Python handles SIGINT with a callable (its default
    KeyboardInterrupt, or the user's handler) and only on the main thread,
    the one signal handlers can be set from; elsewhere the block runs as is.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    received: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        previous(signal.SIGINT, received[0])


def save_checkpoint(
    manager: ocp.CheckpointManager,
    state: PyTree,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Saves ``state`` (and JSON ``metadata``) under its own step number.

    Args:
        manager: from `checkpoint_manager`.
        state: a `TrainState` (any pytree with an integer ``step`` field).
        metadata: JSON-serializable dict stored beside the state.

    Returns:
        The step saved. Saving a step that already exists is an error.
        A SIGINT while saving is delivered once the step is complete on
        disk (`_sigint_deferred`).
    """
    step = int(jax.device_get(state.step))
    if step in manager.all_steps():
        raise ValueError(
            f"a checkpoint for step {step} already exists in {manager.directory}")
    with _sigint_deferred():
        manager.save(
            step,
            args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _META: ocp.args.JsonSave(dict(metadata or {})),
            }),
            force=True,
        )
        manager.wait_until_finished()
    return step


def saved_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of the complete checkpoints in ``directory`` (none if missing)."""
    if not os.path.isdir(directory):
        return []
    return sorted(ocp.utils.checkpoint_steps(os.fspath(directory)))


def restore_checkpoint(
    directory: str | os.PathLike,
    template: PyTree,
    step: int | None = None,
) -> tuple[PyTree, dict[str, Any]]:
    """Restores a state into the structure, shapes and dtypes of ``template``.

    Args:
        directory: a checkpoint directory written by `save_checkpoint`.
        template: a state of the same structure (concrete arrays or
            ``jax.ShapeDtypeStruct`` leaves, e.g. from ``jax.eval_shape``);
            its values are not used.
        step: which step to restore; None restores the latest.

    Returns:
        ``(state, metadata)``: the restored state (same pytree type as
        ``template``) and the JSON metadata saved with it.

    Raises:
        FileNotFoundError: no directory, no checkpoint, or no such step.
        ValueError: the checkpoint is corrupt or does not match ``template``.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    steps = ocp.utils.checkpoint_steps(directory)
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {directory}")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {directory}; "
            f"found steps {sorted(steps)}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    options = ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False)
    try:
        with ocp.CheckpointManager(directory, options=options) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardRestore(abstract),
                _META: ocp.args.JsonRestore(),
            }))
    except Exception as e:  # orbax/tensorstore raise many types; name the file
        reason = str(e).strip().splitlines()[0][:300] if str(e) else ""
        raise ValueError(
            f"cannot restore step {step} from {directory}: the checkpoint is "
            f"corrupt or does not match the template state "
            f"({type(e).__name__}: {reason})") from e
    state = restored[_STATE]
    if (jax.tree_util.tree_structure(state)
            != jax.tree_util.tree_structure(template)):
        raise ValueError(
            f"checkpoint step {step} in {directory} does not match the "
            "template state's structure")
    return state, dict(restored[_META] or {})


# Restoring uses a manager without read_only: orbax's read-only mode logs two
# warnings per manager ("read only", "save_interval_steps=0") and a manager
# that never saves writes nothing (create=False, no temporary cleanup).


def read_metadata(directory: str | os.PathLike, step: int) -> dict[str, Any]:
    """The JSON metadata saved with ``step``, without reading the state.

    Raises:
        ValueError: the step's metadata are missing or unreadable.
    """
    options = ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False)
    try:
        with ocp.CheckpointManager(os.fspath(directory), options=options) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(**{
                _META: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises many types; name the step
        raise ValueError(f"cannot read the metadata of step {step} in {directory} "
                         f"({type(e).__name__})") from e
    meta = restored[_META]
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"the metadata of step {step} in {directory} is not an object")
    return dict(meta or {})


def set_aside(directory: str | os.PathLike, step: int) -> str:
    """Renames a damaged step's folder to ``<step>.damaged[-k]`` (orbax then
    ignores it; nothing is deleted); returns the new path."""
    source = os.path.join(os.fspath(directory), str(step))
    target, k = f"{source}.damaged", 1
    while os.path.exists(target):
        target, k = f"{source}.damaged-{k}", k + 1
    os.rename(source, target)
    return target


def restore_variables(
    directory: str | os.PathLike,
    template: PyTree,
    step: int | None = None,
) -> dict[str, PyTree]:
    """Only the model variables ({'params', 'batch_stats'?}) of a saved TrainState.

    Reads the checkpoint without knowing the optimizer it was trained with, so
    a model trained by `experiments.train` can seed any other run.

    Args:
        directory: a checkpoint directory written by `save_checkpoint`.
        template: the model's variables (arrays or ShapeDtypeStructs), e.g.
            ``jax.eval_shape(module.init, ...)``; checked against the file.
        step: which step; None restores the latest.

    Raises:
        FileNotFoundError: no directory or no checkpoint.
        ValueError: corrupt, or the variables' names/shapes do not match.
    """
    directory = os.fspath(directory)
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {directory}")
    step = max(steps) if step is None else step
    options = ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False)
    try:
        with ocp.CheckpointManager(directory, options=options) as manager:
            raw = manager.restore(step, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardRestore()}))[_STATE]
    except Exception as e:  # orbax/tensorstore raise many types; name the file
        raise ValueError(
            f"cannot restore step {step} from {directory}: "
            f"{type(e).__name__}: {str(e)[:300]}") from e
    variables = {k: raw.get(k) for k in template}
    want = jax.tree_util.tree_map(lambda x: tuple(x.shape), template)
    got = jax.tree_util.tree_map(lambda x: tuple(x.shape), variables)
    if want != got:
        raise ValueError(
            f"checkpoint in {directory} holds variables of another model:\n"
            f"  expected {want}\n  found    {got}")
    return variables
