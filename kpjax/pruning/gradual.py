r"""Pruning during training: a registered method's mask at a schedule point,
and IMP's rewind.

At a point t of a `kpjax.pruning.schedules.SparsitySchedule` with target
s_t, the mask keeps the round((1 − s_t)·N) best scores of the method among
the N prunable parameters, choosing only among the weights the current mask
still keeps (m_t ⊆ m_{t−1}: a pruned weight is never revived, as in Zhu &
Gupta and in IMP). Any method of the registry serves (GMP, KMP from a fit
of the last window, SNIP, ...), with its own threshold (global, signed or
per tensor).

IMP with rewinding (Frankle et al. 2020) resets the kept weights to the
stored θ(k) after each pruning: θ ← θ(k) ⊙ m.

May import: jax, kpjax.flatten, kpjax.pruning.masks, kpjax.pruning.methods.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from kpjax import flatten
from kpjax.pruning.masks import apply_mask, mask_from_flat
from kpjax.pruning.methods import PruneInputs, get_method, method_flat_scores

PyTree = Any


def sparsity_flat_mask(name: str, flat_scores: jax.Array, spec: flatten.FlatSpec, sparsity: float,
                       current: Optional[jax.Array] = None) -> jax.Array:
    """Method `name`'s flat mask at sparsity s over the prunable parameters:
    round((1 − s)·N) kept, by its own threshold, nested in `current`.

    Args:
      flat_scores: from `method_flat_scores`.
      spec: the FlatSpec of the prunable parameters.
      sparsity: s in [0, 1), the pruned fraction of the prunable parameters.
      current: optional bool (N,), the mask in force; only its kept entries
        may stay kept.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return get_method(name).flat_mask_fn(flat_scores, spec, 1.0 - sparsity, among=current)


def sparsity_mask(name: str, inputs: PruneInputs, sparsity: float, current: Optional[PyTree] = None) -> PyTree:
    """`sparsity_flat_mask` of method `name` on `inputs`, as a bool pytree
    like the params (True on unprunable leaves); `current` a mask pytree."""
    spec = flatten.flat_spec(inputs.params, inputs.select)
    among = None if current is None else flatten.ravel_with_spec(current, spec).astype(bool)
    keep = sparsity_flat_mask(name, method_flat_scores(name, inputs), spec, sparsity, among)
    return mask_from_flat(keep, spec, inputs.params)


def sparsity_of(mask: PyTree, select: PyTree) -> float:
    """The pruned fraction of the prunable parameters under `mask`."""
    kept = total = 0
    for m, s in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(select)):
        if s:
            kept += int(jnp.sum(m))
            total += int(jnp.size(m))
    if not total:
        raise ValueError("sparsity_of: no prunable parameters")
    return 1.0 - kept / total


def rewind(params_at_k: PyTree, mask: PyTree) -> PyTree:
    """θ(k) ⊙ m: IMP's rewind of the kept weights to the stored step-k
    weights (bit-exact copies; pruned entries exactly 0)."""
    return apply_mask(jax.tree_util.tree_map(jnp.array, params_at_k), mask)
