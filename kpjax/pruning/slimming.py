"""Network slimming (Liu et al. 2017): a conv channel scored by the |γ| of
the BatchNorm after it, registered as bn_gamma.

The example of a method in a file of its own: a score function (pytree in,
pytree out), and one `register_method` call carrying every fact the
experiments need (label, family, needs, filter reduction, style). Training
with the L1 penalty on γ that the paper adds is up to the caller.

May import: jax, kpjax.pruning.masks, kpjax.pruning.methods.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kpjax.pruning.masks import global_flat_mask
from kpjax.pruning.methods import PruningMethod, from_tree_scores, register_method

PyTree = Any


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


register_method("bn_gamma", PruningMethod(
    from_tree_scores(lambda i: bn_gamma_scores(i.params)), global_flat_mask, (),
    "network slimming: |γ| of each conv channel's BatchNorm (meant for --granularity=filter)",
    label="|γ|"))
