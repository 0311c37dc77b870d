"""Masks as an optax transformation: any optimizer that keeps pruned weights
at exactly zero (`freeze_pruned`).

Not optax.masked: that applies an inner transformation only where its mask
is True and passes the other updates through unchanged; here the pruned
(False) entries get no update at all, whatever the inner optimizer does.

May import: jax, optax, kpjax.flatten, kpjax.pruning.masks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kpjax import flatten
from kpjax.pruning.masks import apply_mask, check_mask

PyTree = Any


class FreezePrunedState(NamedTuple):
    """State of `freeze_pruned`: the inner optimizer's state (the mask is a constant)."""

    inner_state: optax.OptState


def _mask_like(mask: PyTree, tree: PyTree) -> PyTree:
    """`mask` with `tree`'s structure: itself when the structures agree, else
    its leaves matched to `tree`'s by path. nnx.Optimizer hands the optimizer
    an nnx.State (of Variables to `init`, of arrays to `update`), whose paths
    are those of the plain-dict mask of the same params."""
    if jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(tree):
        return mask
    by_path = dict(flatten.paths_and_leaves(mask))
    paths = [path for path, _ in flatten.paths_and_leaves(tree)]
    if len(by_path) != len(jax.tree_util.tree_leaves(mask)) or sorted(paths) != sorted(by_path):
        raise ValueError(
            "freeze_pruned(tx, mask): the mask must have the params' structure, or the same leaf paths; "
            f"params paths {sorted('/'.join(p) for p in paths)}, "
            f"mask paths {sorted('/'.join(p) for p in by_path)}")
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(tree), [by_path[path] for path in paths])


def freeze_pruned(inner: optax.GradientTransformation, mask: PyTree) -> optax.GradientTransformation:
    """An optax optimizer that keeps pruned weights at exactly zero.

    For any inner transformation (sgd, adam, adamw, a chain with weight
    decay, ...): the gradient is zeroed at pruned entries before the inner
    update, so momenta and second moments of pruned weights stay 0, and the
    inner update is zeroed there afterwards, so decoupled weight decay or
    any transformation that mixes coordinates cannot revive them. Given
    `params`, the update at a pruned entry is −θ, which sets a weight that
    was not yet zero to exactly 0 on the first step (θ + (−θ) = 0); with
    pruned weights already zero (`apply_mask`) it is −0.0 and θ stays +0.0.
    `jnp.where`, not multiplication: 0·NaN is NaN.

      tx = kpjax.freeze_pruned(optax.adamw(1e-3, weight_decay=1e-4), mask)
      params = kpjax.apply_mask(params, mask)
      opt_state = tx.init(params)  # then the usual optax loop

    Args:
      inner: the optimizer to wrap.
      mask: bool pytree like the params (True = keep); may be traced, so a
        jitted step can take the mask as an argument and need not recompile
        for every mask. A plain-dict mask also serves params with the same
        leaf paths in another structure, as the nnx.State that
        ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` passes.

    Returns:
      An `optax.GradientTransformation` with state `FreezePrunedState`.
    """

    def init(params):
        # nnx.Optimizer passes Variables: their values are the parameters.
        check_mask(jax.tree_util.tree_map(lambda p: getattr(p, "value", p), params),
                   _mask_like(mask, params), "freeze_pruned(tx, mask)")
        return FreezePrunedState(inner.init(params))

    def update(updates, state, params=None):
        tree_mask = _mask_like(mask, updates)
        updates = apply_mask(updates, tree_mask)
        new_updates, inner_state = inner.update(updates, state.inner_state, params)
        if params is None:
            new_updates = apply_mask(new_updates, tree_mask)
        else:
            new_updates = jax.tree_util.tree_map(
                lambda u, m, p: jnp.where(m, u, -p).astype(u.dtype), new_updates, tree_mask, params)
        return new_updates, FreezePrunedState(inner_state)

    return optax.GradientTransformation(init, update)


def reset_moments(tx: optax.GradientTransformation, opt_state: optax.OptState, where: PyTree) -> optax.OptState:
    """The optimizer state with the entries `where` (bool pytree like the
    params) of every params-shaped leaf set to 0 (momentum, Adam's first and
    second moments; counts and other leaves untouched).

    For a mask that changes during training: a weight that is kept again
    (RigL's grown connections) starts without the stale momentum of the time
    before it was pruned. `opt_state` is `tx`'s state or that of
    `freeze_pruned(tx, mask)`.
    """
    if isinstance(opt_state, FreezePrunedState):
        return FreezePrunedState(reset_moments(tx, opt_state.inner_state, where))
    return optax.tree_utils.tree_map_params(
        tx, lambda v, w: jnp.where(w, jnp.zeros_like(v), v), opt_state, where,
        transform_non_params=lambda v: v)
