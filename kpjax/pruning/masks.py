"""From scores to masks: the kept fraction of a compression, top-k masks
(global, signed, layerwise), masks applied, compared and counted.

Conventions follow ShrinkBench (the paper's harness):
- prunable parameters are the kernels and biases of conv and dense layers,
  never BatchNorm; the classifier can be included or excluded;
- the target is a compression ratio c = total / nonzero parameters, where the
  total counts every parameter (unprunable ones too);
- global pruning uses one threshold over all prunable scores, layerwise
  pruning one per tensor.

Scores are flat vectors over the prunable parameters θ ∈ R^N (layout
`kpjax.flatten.FlatSpec`) or pytrees like the params; masks are bool pytrees
like the params, True = keep, all-True on unprunable leaves.

May import: jax, numpy, kpjax.flatten.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import flatten
from kpjax.flatten import count_params

PyTree = Any


def _check_same_structure(a: PyTree, b: PyTree, what: str) -> None:
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        raise ValueError(f"{what}: pytrees have different structure:\n  {ta}\n  {tb}")


def check_mask(params: PyTree, mask: PyTree, what: str = "mask") -> None:
    """A mask for `params`: the same pytree structure, and every leaf boolean
    with exactly its parameter's shape (no broadcasting, no 0/1 or float
    masks: a 0.5 would be taken as "keep" by `jnp.where`). Static checks
    only (shapes and dtypes), so a traced mask passes through jit.

    Raises:
      ValueError: naming `what` and the first bad leaf.
    """
    _check_same_structure(params, mask, what)
    for (path, p), m in zip(flatten.paths_and_leaves(params), jax.tree_util.tree_leaves(mask)):
        name = "/".join(path) or "(root)"
        dtype = jnp.result_type(m)
        if dtype != jnp.bool_:
            raise ValueError(f"{what}: leaf {name} has dtype {dtype}, masks must be boolean (True = keep)")
        if jnp.shape(m) != jnp.shape(p):
            raise ValueError(f"{what}: leaf {name} has shape {jnp.shape(m)}, its parameter "
                             f"{jnp.shape(p)}")


def scores_from_flat(flat: jax.Array, spec: flatten.FlatSpec, params: PyTree) -> PyTree:
    """A score vector over `spec`'s leaves as a pytree like params (zeros elsewhere)."""
    zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), params)
    return flatten.unravel_selected(flat.astype(jnp.float32), spec, zeros)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def keep_fraction(compression: float, total: int, prunable_count: int) -> float:
    """Fraction f of prunable parameters to keep for compression c = total / nonzero.

    f = (total / prunable)·(1/c − 1) + 1 (unprunable parameters stay dense).

    Raises:
      ValueError: c < 1 or not finite; counts that are not positive integers
        or more prunable parameters than parameters; c beyond what pruning
        every prunable parameter can reach (total / (total − prunable)), or
        so close to it that round(f·prunable) keeps none.
    """
    try:
        c = float(compression)
    except (TypeError, ValueError):
        raise ValueError(f"compression ratio must be a number, got {compression!r}") from None
    if not np.isfinite(c) or c < 1.0:
        raise ValueError(f"compression ratio must be a finite number >= 1, got {compression}")
    total = _check_count(total, "total (the parameter count)")
    prunable_count = _check_count(prunable_count, "prunable_count")
    if prunable_count > total:
        raise ValueError(f"prunable_count {prunable_count} exceeds total {total}: "
                         "the prunable parameters are a subset of all of them")
    f = (total / prunable_count) * (1.0 / c - 1.0) + 1.0
    if f <= 0.0 or round(f * prunable_count) < 1:
        unprunable = total - prunable_count
        limit = total / (unprunable + 1)  # keeping one prunable parameter
        raise ValueError(
            f"compression {c} is impossible: it would keep none of the {prunable_count} prunable "
            f"parameters ({unprunable} of {total} are not prunable), so compression is at most "
            f"{limit:.4g} (one prunable weight kept)")
    return f


def _top_k_mask(scores: jax.Array, k: int, among: Optional[jax.Array] = None) -> jax.Array:
    """Keep the k largest scores (of those `among` allows); ties keep the
    lower flat index.

    Sorting by (−score, index) with a stable sort makes the kept count exactly
    k whatever the ties, and the choice deterministic. Entries outside
    `among` rank below every allowed one, so with k ≤ |among| the mask is
    nested in it.
    """
    if among is not None:
        scores = jnp.where(among, scores, -jnp.inf)
    order = jnp.argsort(-scores, stable=True)
    keep = jnp.zeros(scores.shape, bool)
    return keep.at[order[:k]].set(True)


def check_keep_fraction(fraction: float, spec: flatten.FlatSpec) -> None:
    """f in (0, 1], keeping at least one weight per prunable tensor overall
    (the command line's rule: below that, global pruning must empty a layer
    and the network is cut)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"keep fraction must be in (0, 1], got {fraction}")
    kept, tensors = int(round(fraction * spec.size)), len(spec.paths)
    if kept < tensors:
        raise ValueError(f"keep fraction {fraction:.4g} keeps {kept} of {spec.size} prunable parameters, "
                         f"fewer than one per prunable tensor ({tensors})")


def _check_finite(flat: jax.Array, spec: flatten.FlatSpec) -> None:
    finite = np.asarray(jnp.isfinite(flat))
    if not finite.all():
        first = int(np.argmin(finite))
        leaf = int(np.searchsorted(spec.offsets, first, side="right")) - 1
        raise ValueError(f"scores of {'/'.join(spec.paths[leaf])} contain NaN or Inf")


def _check_among(among: Optional[jax.Array], spec: flatten.FlatSpec, kept: list[int],
                 what: str) -> Optional[jax.Array]:
    """`among` as a bool (N,) array holding at least the kept count of each
    part (`kept`: one count for a global mask, one per tensor otherwise)."""
    if among is None:
        return None
    among = jnp.asarray(among)
    if among.dtype != jnp.bool_ or among.shape != (spec.size,):
        raise ValueError(f"{what}: among must be a bool ({spec.size},) array, got {among.dtype} {among.shape}")
    ends = list(spec.offsets[1:]) + [spec.size]
    parts = [(0, spec.size, "all prunable parameters")] if len(kept) == 1 else \
        [(s, e, "/".join(path)) for s, e, path in zip(spec.offsets, ends, spec.paths)]
    allowed = np.asarray(among)
    for (s, e, name), k in zip(parts, kept):
        if int(allowed[s:e].sum()) < k:
            raise ValueError(f"{what}: keeping {k} of {name} needs that many allowed, only "
                             f"{int(allowed[s:e].sum())} are (a sparsity below the current one?)")
    return among


def global_flat_mask(flat: jax.Array, spec: flatten.FlatSpec, fraction: float,
                     among: Optional[jax.Array] = None) -> jax.Array:
    """One threshold over all scores: keep the round(f·N) largest |scores|.

    Args:
      flat: scores over the prunable parameters θ ∈ R^N (layout `spec`).
      spec: the FlatSpec of the prunable leaves.
      fraction: f in (0, 1], from `keep_fraction`.
      among: optional bool (N,): only these may be kept (the current mask,
        so that gradual pruning's masks are nested, m_{t+1} ⊆ m_t).

    Returns:
      Bool (N,), True = keep.
    """
    check_keep_fraction(fraction, spec)
    _check_finite(flat, spec)
    k = int(round(fraction * spec.size))
    among = _check_among(among, spec, [k], "global_flat_mask")
    return _top_k_mask(jnp.abs(flat.astype(jnp.float32)), k, among)


def global_signed_flat_mask(flat: jax.Array, spec: flatten.FlatSpec, fraction: float,
                            among: Optional[jax.Array] = None) -> jax.Array:
    """One threshold over signed scores: keep the round(f·N) largest (GraSP)."""
    check_keep_fraction(fraction, spec)
    _check_finite(flat, spec)
    k = int(round(fraction * spec.size))
    among = _check_among(among, spec, [k], "global_signed_flat_mask")
    return _top_k_mask(flat.astype(jnp.float32), k, among)


def layerwise_flat_mask(flat: jax.Array, spec: flatten.FlatSpec, fraction: float,
                        among: Optional[jax.Array] = None) -> jax.Array:
    """One threshold per tensor: keep round(f·size) largest |scores| of each."""
    check_keep_fraction(fraction, spec)
    _check_finite(flat, spec)
    ends = list(spec.offsets[1:]) + [spec.size]
    ks = [int(round(fraction * (e - s))) for s, e in zip(spec.offsets, ends)]
    among = _check_among(among, spec, ks, "layerwise_flat_mask")
    parts = [_top_k_mask(jnp.abs(flat[s:e].astype(jnp.float32)), k, None if among is None else among[s:e])
             for s, e, k in zip(spec.offsets, ends, ks)]
    return jnp.concatenate(parts)


def mask_from_flat(keep: jax.Array, spec: flatten.FlatSpec, params: PyTree) -> PyTree:
    """The bool pytree like params of a flat mask (True on unprunable leaves)."""
    ones = jax.tree_util.tree_map(lambda x: jnp.ones(jnp.shape(x), bool), params)
    return flatten.unravel_selected(keep, spec, ones)


def _tree_mask(flat_mask_fn, scores: PyTree, select: PyTree, fraction: float) -> PyTree:
    _check_same_structure(scores, select, "scores and the prunable selection")
    spec = flatten.flat_spec(scores, select)
    return mask_from_flat(flat_mask_fn(flatten.ravel_with_spec(scores, spec), spec, fraction),
                          spec, scores)


def global_mask(scores: PyTree, select: PyTree, fraction: float) -> PyTree:
    """`global_flat_mask` on pytrees: scores and mask like params.

    Args:
      scores: pytree like params.
      select: bool pytree, the prunable leaves (e.g. from `prunable`).
      fraction: f in (0, 1], from `keep_fraction`.
    """
    return _tree_mask(global_flat_mask, scores, select, fraction)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """θ ⊙ m: pruned entries set to exactly zero.

    Raises:
      ValueError: the mask is not a bool pytree of params' shapes (`check_mask`).
    """
    check_mask(params, mask, "apply_mask(params, mask)")
    return jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def compression_ratio(params: PyTree, mask: Optional[PyTree] = None) -> float:
    """ShrinkBench's compression: total parameters / nonzero parameters of θ ⊙ m."""
    if mask is not None:
        params = apply_mask(params, mask)
    leaves = jax.tree_util.tree_leaves(params)
    nonzero = sum(int(jnp.count_nonzero(x)) for x in leaves)
    return count_params(params) / max(nonzero, 1)


def mask_jaccard(a: PyTree, b: PyTree, select: PyTree) -> float:
    """|A ∩ B| / |A ∪ B| of the kept prunable parameters of two masks."""
    check_mask(a, b, "mask_jaccard(a, b)")
    check_mask(a, a, "mask_jaccard(a, b)")  # a's own dtype (b was checked against a's shapes)
    inter = union = 0
    for x, y, s in zip(*(jax.tree_util.tree_leaves(t) for t in (a, b, select))):
        if s:
            inter += int(jnp.sum(x & y))
            union += int(jnp.sum(x | y))
    return inter / union if union else 1.0


def mask_distance(a: PyTree, b: PyTree, select: PyTree) -> float:
    """Normalized Hamming distance of two masks over the prunable parameters:
    the fraction whose keep/prune decision differs (You et al.'s early-bird
    mask distance; 0 for equal masks, 1 for complements)."""
    check_mask(a, b, "mask_distance(a, b)")
    check_mask(a, a, "mask_distance(a, b)")  # a's own dtype (b was checked against a's shapes)
    differ = count = 0
    for x, y, s in zip(*(jax.tree_util.tree_leaves(t) for t in (a, b, select))):
        if s:
            differ += int(jnp.sum(x != y))
            count += int(np.size(x))
    if not count:
        raise ValueError("mask_distance: no prunable parameters")
    return differ / count


def early_bird_index(distances: list[float], patience: int = 5, eps: float = 0.1) -> int | None:
    """Where an early-bird ticket is drawn (You et al. 2020): the first i such
    that the `patience` distances ending at i are all below eps; distances[i]
    compares masks i and i+1, so the ticket is mask i+1. None if never."""
    if patience < 1 or not eps > 0:
        raise ValueError(f"patience must be >= 1 and eps > 0, got {patience}, {eps}")
    run = 0
    for i, d in enumerate(distances):
        run = run + 1 if d < eps else 0
        if run >= patience:
            return i
    return None
