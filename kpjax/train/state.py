"""The training state: parameters, BatchNorm statistics, optimizer state,
mask and PRNG key, carried from one step to the next.

May import: jax, optax, kpjax.pruning.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kpjax.pruning.masks import apply_mask, check_mask
from kpjax.pruning.optimizer import freeze_pruned, reset_moments

PyTree = Any


class TrainState(NamedTuple):
    """Everything a training run carries from one step to the next.

    Attributes:
        step: int32 scalar, the number of optimizer steps taken.
        params: the model parameters θ (pruned entries exactly zero).
        batch_stats: BatchNorm running statistics; ``{}`` without BN.
        opt_state: the optax state.
        mask: bool pytree like ``params``; True = keep.
        rng: PRNG key (uint32[2]) for data augmentation, split every step.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    mask: PyTree
    rng: jax.Array


def full_mask(params: PyTree) -> PyTree:
    """The mask keeping every parameter: all-True bool arrays like ``params``."""
    return jax.tree_util.tree_map(
        lambda p: jnp.ones(jnp.shape(p), bool), params)


def create_train_state(
    params: PyTree,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    *,
    batch_stats: PyTree | None = None,
    mask: PyTree | None = None,
) -> TrainState:
    """Builds the initial state; the mask is applied to ``params`` here.

    Args:
        params: model parameters θ.
        tx: the optimizer (e.g. from `make_optimizer`).
        rng: PRNG key (``jax.random.PRNGKey(seed)``) for augmentation.
        batch_stats: BatchNorm statistics, or None for models without BN.
        mask: bool pytree like ``params`` (True = keep); None keeps all.

    Returns:
        A `TrainState` at step 0 with masked params and fresh optimizer
        state (``pruning.freeze_pruned(tx, mask)``'s, which wraps ``tx``'s).
    """
    if mask is None:
        mask = full_mask(params)
    else:
        mask_tree = jax.tree_util.tree_structure(mask)
        params_tree = jax.tree_util.tree_structure(params)
        if mask_tree != params_tree:
            raise ValueError(
                "mask must have the tree structure of params; got "
                f"{mask_tree} vs {params_tree}")
        mask = jax.tree_util.tree_map(
            lambda m, p: jnp.array(jnp.broadcast_to(jnp.asarray(m, bool), jnp.shape(p))),
            mask, params)
    # The state owns copies of its arrays: the jitted step donates them, and
    # must not delete the caller's params, batch stats or key.
    params = apply_mask(params, mask)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=jax.tree_util.tree_map(jnp.array, batch_stats or {}),
        opt_state=freeze_pruned(tx, mask).init(params),
        mask=mask,
        rng=jnp.array(rng),
    )


def replace_mask(state: TrainState, mask: PyTree, tx: optax.GradientTransformation) -> TrainState:
    """The state under a new mask, for masks that change during training
    (gradual pruning, IMP, SET/RigL): θ ⊙ m, and the optimizer moments of the
    entries the new mask keeps and the old one did not (grown connections)
    reset to 0, so they start from θ = 0 with no stale momentum. `tx` is the
    optimizer the state was created with; the jitted step takes the new
    mask from the state, without recompiling.
    """
    check_mask(state.params, mask, "replace_mask(state, mask)")
    grown = jax.tree_util.tree_map(lambda new, old: new & ~old, mask, state.mask)
    return state._replace(params=apply_mask(state.params, mask), mask=mask,
                          opt_state=reset_moments(tx, state.opt_state, grown))
