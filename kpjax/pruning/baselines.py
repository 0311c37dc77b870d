"""The baselines every method is compared with: magnitude (global, layerwise,
L1 filter norm), gradient (|θ ⊙ ∂L/∂θ|, global and layerwise), random, and
network slimming's |γ|; each registered here.

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


def bn_gamma_scores(params: PyTree) -> PyTree:
    """Network slimming's |γ| (Liu et al. 2017): every weight of a conv's
    output channel u scores the |scale[u]| of the BatchNorm after that conv
    (convN → bnN in the same module, as the CIFAR ResNets name them); a
    filter's scores are then one value, so at filter granularity this ranks
    channels by |γ|. Kernels without a BatchNorm score 0 and biases 0."""
    def score(path, x):
        names = [getattr(p, "key", None) for p in path]
        module = params
        for key in names[:-2]:
            module = module[key]
        bn = str(names[-2]).replace("conv", "bn") if names[-2] else None
        if names[-1] == "kernel" and bn in module and bn != names[-2] and "scale" in module[bn]:
            return jnp.broadcast_to(jnp.abs(jnp.asarray(module[bn]["scale"], jnp.float32)), jnp.shape(x))
        return jnp.zeros(jnp.shape(x), jnp.float32)
    return jax.tree_util.tree_map_with_path(score, params)


register_method("gmp", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), global_flat_mask, (),
    "global magnitude pruning: |θ|, one threshold"))
register_method("l1", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), global_flat_mask, (),
    "L1 filter norm (Li et al. 2017): |θ|, summed over each filter with --granularity=filter "
    "(gmp: the L2 norm); per weight the same as gmp"))
register_method("layer_mag", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), layerwise_flat_mask, (),
    "layerwise magnitude pruning: |θ|, one threshold per tensor"))
register_method("grad", PruningMethod(
    from_tree_scores(lambda i: gradient_scores(i.params, i.grads)), global_flat_mask, ("grads",),
    "global gradient pruning: |θ ⊙ ∂L/∂θ| on one batch"))
register_method("layer_grad", PruningMethod(
    from_tree_scores(lambda i: gradient_scores(i.params, i.grads)), layerwise_flat_mask, ("grads",),
    "layerwise gradient pruning"))
register_method("random", PruningMethod(
    from_tree_scores(lambda i: random_scores(i.params, i.rng)), global_flat_mask, ("rng",),
    "uniformly random global pruning"))
register_method("bn_gamma", PruningMethod(
    from_tree_scores(lambda i: bn_gamma_scores(i.params)), global_flat_mask, (),
    "network slimming: |γ| of each conv channel's BatchNorm (meant for --granularity=filter)"))
