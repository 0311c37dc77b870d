"""Masked training of any model on the user's loss, and recording Θ.

The model is a `kpjax.flax_model.Model` view, f(θ, s, x) ↦ (y, s′); a batch
is a tuple/list ``(inputs, targets, ...)`` or a dict; the loss is the
user's, L = loss_fn(y, batch), the mean over the batch. One step is

  (L, s′), g = value_and_grad_θ L(f(θ, s, x; rng))
  u, opt′ = freeze_pruned(tx, m).update(g, opt, θ);   θ′ = (θ + u) ⊙ m

so pruned weights stay exactly zero (`kpjax.pruning.freeze_pruned`, then
`apply_mask`). `record` runs T such steps and fills the (T+1)×N snapshot
matrix Θ of the selected params in one donated device buffer (the building
blocks of `kpjax.train.recording`), on copies of the caller's arrays.

May import: jax, optax, kpjax.flatten, kpjax.flax_model, kpjax.pruning, kpjax.train.compile_options,
kpjax.train.recording.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from kpjax.flatten import FlatSpec, Select, ravel_selected
from kpjax.flax_model import ApplyFn, Model
from kpjax.pruning.masks import apply_mask
from kpjax.pruning.optimizer import freeze_pruned
from kpjax.pruning.select import prunable
from kpjax.train.compile_options import jit_step
from kpjax.train.recording import first_snapshots, make_recording_train_step, take_batches

PyTree = Any
Batch = Any
# Where a batch keeps a part: dict keys (the first present wins) or a
# function of the batch; tuple/list batches use their position.
Part = Union[str, Sequence[str], Callable[[Batch], Any]]
LossFn = Callable[[Any, Batch], jax.Array]
Metrics = dict[str, jax.Array]

INPUT_KEYS = ("image", "images", "inputs", "x")
TARGET_KEYS = ("label", "labels", "targets", "y")


def _describe(batch: Batch) -> str:
    if isinstance(batch, Mapping):
        return f"a dict with keys {sorted(map(str, batch))}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of length {len(batch)}"
    if hasattr(batch, "shape"):  # an array, or its tracer inside the jitted step
        return f"an array of shape {tuple(batch.shape)}"
    return f"a {type(batch).__name__}"


def _part(batch: Batch, part: Part, index: int, what: str) -> Any:
    if callable(part):
        return part(batch)
    keys = (part,) if isinstance(part, str) else tuple(part)
    if isinstance(batch, Mapping):
        for key in keys:
            if key in batch:
                return batch[key]
    elif isinstance(batch, (tuple, list)) and len(batch) > index:
        return batch[index]
    raise ValueError(
        f"{what}: expected a tuple/list batch with element {index} or a dict batch with one of "
        f"the keys {list(keys)}; got {_describe(batch)}")


def inputs_of(batch: Batch, part: Part = INPUT_KEYS) -> Any:
    """x of a batch: element 0 of a tuple/list, the first of `part`'s keys
    present in a dict, or ``part(batch)`` for a callable."""
    return _part(batch, part, 0, "inputs_of")


def targets_of(batch: Batch, part: Part = TARGET_KEYS) -> Any:
    """The targets of a batch: element 1 of a tuple/list, the first of
    `part`'s keys present in a dict, or ``part(batch)`` for a callable."""
    return _part(batch, part, 1, "targets_of")


def cross_entropy_loss(outputs: jax.Array, batch: Batch, *, targets: Part = TARGET_KEYS) -> jax.Array:
    """Mean softmax cross-entropy of logits (B, K) against integer labels (B,)
    (other target keys: ``functools.partial(cross_entropy_loss, targets=...)``)."""
    labels = targets_of(batch, targets)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


class Carry(NamedTuple):
    """What a training run carries from one step to the next.

    Attributes:
        params: θ (pruned entries exactly zero).
        state: the model's non-param state s (e.g. BatchNorm statistics).
        opt_state: the optimizer's state.
        rng: PRNG key, split every step (dropout of Linen models).
        step: int32 scalar, the number of steps taken.
    """

    params: PyTree
    state: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    step: jax.Array


def _copy(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.copy, tree)


def _optimizer(tx: optax.GradientTransformation, mask: PyTree | None) -> optax.GradientTransformation:
    return tx if mask is None else freeze_pruned(tx, mask)


def init_carry(
    model: Model,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    *,
    mask: PyTree | None = None,
    opt_state: optax.OptState | None = None,
) -> Carry:
    """The carry at step 0: copies of the model's arrays (the jitted step
    donates its carry, never the caller's arrays), θ ⊙ m, and a fresh
    optimizer state (``freeze_pruned(tx, mask)``'s) unless `opt_state` is given.

    Args:
        model: from `kpjax.flax_model.from_linen` / `from_nnx`.
        tx: the optimizer.
        rng: PRNG key.
        mask: bool pytree like ``model.params`` (True = keep), or None.
        opt_state: an optimizer state to continue from (e.g. a
            `Recording`'s), for the same ``tx`` and ``mask``.
    """
    params = _copy(model.params)
    if mask is not None:
        params = apply_mask(params, mask)
    return Carry(
        params=params,
        state=_copy(model.state),
        opt_state=_optimizer(tx, mask).init(params) if opt_state is None else _copy(opt_state),
        rng=jnp.copy(rng),
        step=jnp.zeros((), jnp.int32),
    )


def _check_scalar(loss: Any) -> None:
    shape = getattr(loss, "shape", None)
    if shape != ():
        raise ValueError(
            "loss_fn(outputs, batch) must return a scalar, the mean over the batch; got "
            f"{type(loss).__name__} of shape {shape}")


def make_step(
    model_apply: ApplyFn,
    tx: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy_loss,
    *,
    mask: PyTree | None = None,
    inputs: Part = INPUT_KEYS,
    jit: bool = True,
) -> Callable[[Carry, Batch], tuple[Carry, Metrics]]:
    """One (masked) optimizer step on the user's loss.

    Args:
        model_apply: a `Model`'s ``apply``.
        tx: the optimizer; wrapped in ``kpjax.pruning.freeze_pruned(tx, mask)``
            when a mask is given.
        loss_fn: ``loss_fn(outputs, batch) -> scalar``, the mean over the
            batch; `cross_entropy_loss` by default.
        mask: bool pytree like the params (True = keep), or None (dense).
        inputs: where the batch keeps the model's inputs, as for `inputs_of`.
        jit: return the jitted step with ``carry`` donated (True), or the
            plain function, to compose inside another jit.

    Returns:
        ``step(carry, batch) -> (carry, {'loss': L})``, L from the forward
        pass before the update. The jitted step donates ``carry``: do not
        use it after the call (`init_carry` makes one that owns its arrays).
    """
    optimizer = _optimizer(tx, mask)

    def step(carry: Carry, batch: Batch) -> tuple[Carry, Metrics]:
        rng, step_rng = jax.random.split(carry.rng)
        x = inputs_of(batch, inputs)

        def objective(params):
            outputs, state = model_apply(params, carry.state, x, train=True, rng=step_rng)
            loss = loss_fn(outputs, batch)
            _check_scalar(loss)
            return loss, state

        (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(carry.params)
        updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        if mask is not None:
            # Exact zeros as a guarantee, not a consequence of the optax mask
            # (−0.0 and NaN·0 included), as kpjax.train's step.
            params = apply_mask(params, mask)
        return Carry(params, state, opt_state, rng, carry.step + 1), {"loss": loss}

    return jit_step(step, donate_argnums=0) if jit else step


class Recording(NamedTuple):
    """The result of `record`.

    Attributes:
        params: θ after the last step.
        state: the model's non-param state after the last step.
        opt_state: the optimizer state after the last step (to continue).
        theta: Θ, float32 (T+1, N): row 0 θ before the first step, row t θ
            after step t, over the selected params.
        spec: the `kpjax.flatten.FlatSpec` of Θ's columns.
    """

    params: PyTree
    state: PyTree
    opt_state: optax.OptState
    theta: jax.Array
    spec: FlatSpec


def record(
    model: Model,
    tx: optax.GradientTransformation,
    batches: Iterable[Batch],
    num_steps: int,
    *,
    rng: jax.Array,
    loss_fn: LossFn = cross_entropy_loss,
    select: Select | None = None,
    mask: PyTree | None = None,
    opt_state: optax.OptState | None = None,
    inputs: Part = INPUT_KEYS,
) -> Recording:
    """Trains ``num_steps`` (masked) steps from ``model.params`` and records Θ.

    Θ is written row by row into one donated (T+1)×N device buffer inside
    the jitted step, so no second (T+1)×N array ever exists. The model's
    arrays are copied first: the caller's params, state and opt_state stay
    usable and unchanged.

    Args:
        model: from `kpjax.flax_model.from_linen` / `from_nnx` (for NNX,
            write the result back with `kpjax.flax_model.update_nnx`).
        tx: the optimizer.
        batches: at least ``num_steps`` batches, as for `make_step`.
        num_steps: T ≥ 1.
        rng: PRNG key for the steps.
        loss_fn, mask, inputs: as for `make_step`.
        select: the recorded params, as for `kpjax.flatten.ravel_selected`;
            ``kpjax.pruning.prunable(model.params)`` by default.
        opt_state: continue from this optimizer state (e.g. an earlier
            `Recording`'s) instead of a fresh one.

    Returns:
        A `Recording`.
    """
    if num_steps < 1:
        raise ValueError(f"record: num_steps must be >= 1, got {num_steps}")
    select = prunable(model.params) if select is None else select
    carry = init_carry(model, tx, rng, mask=mask, opt_state=opt_state)
    flat0, spec = ravel_selected(carry.params, select)
    theta = first_snapshots(flat0, num_steps + 1)
    step = make_step(model.apply, tx, loss_fn, mask=mask, inputs=inputs, jit=False)
    # kpjax.train.recording's step calls train_step(state, images, labels): the
    # whole batch travels as `images`, whatever its form.
    recording_step = make_recording_train_step(lambda c, batch, _: step(c, batch), select)
    for t, batch in enumerate(take_batches(batches, num_steps, "record"), start=1):
        carry, theta, _ = recording_step(carry, batch, None, theta, jnp.int32(t))
    return Recording(carry.params, carry.state, carry.opt_state, theta, spec)
