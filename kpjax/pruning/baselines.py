"""The baselines every method is compared with: magnitude (global, layerwise,
L1 filter norm), gradient (|θ ⊙ ∂L/∂θ|, global and layerwise) and random; each registered here.

May import: jax, kpjax.pruning.masks, kpjax.pruning.methods.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kpjax.pruning.masks import _check_same_structure, global_flat_mask, layerwise_flat_mask
from kpjax.pruning.methods import PruningMethod, from_tree_scores, register_method

PyTree = Any


def magnitude_scores(params: PyTree) -> PyTree:
    """|θ| (global magnitude pruning, GMP)."""
    return jax.tree_util.tree_map(jnp.abs, params)


def gradient_scores(params: PyTree, grads: PyTree) -> PyTree:
    """|θ ⊙ ∂L/∂θ| (gradient pruning; ShrinkBench uses one training batch)."""
    _check_same_structure(params, grads, "gradient_scores(params, grads)")
    return jax.tree_util.tree_map(lambda p, g: jnp.abs(p * g), params, grads)


def random_scores(params: PyTree, rng: jax.Array) -> PyTree:
    """I.i.d. uniform scores: random pruning, the baseline every method must beat."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(rng, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)]
    )


register_method("gmp", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), global_flat_mask, (),
    "global magnitude pruning: |θ|, one threshold", label="GMP",
    style=dict(color="tab:blue", marker="s", markersize=4, linestyle="--", linewidth=1.2)))
register_method("l1", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), global_flat_mask, (),
    "L1 filter norm (Li et al. 2017): |θ|, summed over each filter with --granularity=filter "
    "(gmp: the L2 norm); per weight the same as gmp", label="L1 norm", filter_norm="l1"))
register_method("layer_mag", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), layerwise_flat_mask, (),
    "layerwise magnitude pruning: |θ|, one threshold per tensor", label="layerwise magnitude"))
register_method("grad", PruningMethod(
    from_tree_scores(lambda i: gradient_scores(i.params, i.grads)), global_flat_mask, ("grads",),
    "global gradient pruning: |θ ⊙ ∂L/∂θ| on one batch", label="gradient pruning", filter_norm="l1",
    style=dict(color="tab:green", marker="v", markersize=4, linestyle="--", linewidth=1.2)))
register_method("layer_grad", PruningMethod(
    from_tree_scores(lambda i: gradient_scores(i.params, i.grads)), layerwise_flat_mask, ("grads",),
    "layerwise gradient pruning", label="layerwise gradient"))
register_method("random", PruningMethod(
    from_tree_scores(lambda i: random_scores(i.params, i.rng)), global_flat_mask, ("rng",),
    "uniformly random global pruning", label="random",
    style=dict(color="tab:gray", marker="x", linestyle=":")))
