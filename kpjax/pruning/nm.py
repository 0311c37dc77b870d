r"""N:M semi-structured masks: in every group of M consecutive weights along
a kernel's input dimension, the N with the largest |score| are kept (2:4 is
the layout of sparse tensor cores: groups along the reduction dimension of
y = x W, a Dense kernel's axis 0 and a conv kernel's input channels, HWIO
axis 2, as NVIDIA's ASP groups them).

Any score pytree works (|θ| for magnitude N:M, |b₁φ₁| for KMP N:M, ...).
Biases and other 1-D leaves stay dense (no GEMM reduction to sparsify); a
kernel whose input dimension is not a multiple of M is left dense or refused
(`indivisible`).

May import: jax, numpy, kpjax.flatten, kpjax.pruning.masks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import flatten
from kpjax.pruning.masks import _check_same_structure

PyTree = Any


def check_n_m(n: int, m: int) -> tuple[int, int]:
    """1 ≤ N ≤ M, both integers."""
    for value, name in ((n, "N"), (m, "M")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"N:M sparsity: {name} must be a positive integer, got {value!r}")
    if n > m:
        raise ValueError(f"N:M sparsity: N = {n} exceeds M = {m} (N of every M weights are kept)")
    return int(n), int(m)


def n_m_leaf_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
    """The N:M mask of one kernel (ndim ≥ 2; groups along axis −2, whose
    size must be a multiple of M); ties keep the lower index in the group."""
    s = jnp.moveaxis(jnp.abs(jnp.asarray(scores, jnp.float32)), -2, -1)
    inputs = s.shape[-1]
    groups = s.reshape(s.shape[:-1] + (inputs // m, m))
    order = jnp.argsort(-groups, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)  # rank of each weight in its group
    keep = (rank < n).reshape(s.shape)
    return jnp.moveaxis(keep, -1, -2)


def n_m_mask(scores: PyTree, select: PyTree, n: int, m: int, indivisible: str = "dense") -> PyTree:
    """N:M masks of the selected kernels, True elsewhere.

    Args:
      scores: pytree like the params (e.g. `scores_from_flat` of a method's).
      select: bool pytree, the prunable leaves; 1-D leaves among them stay
        dense.
      n, m: keep N of every M.
      indivisible: "dense" leaves a kernel whose input dimension is not a
        multiple of M dense; "error" refuses it.
    """
    n, m = check_n_m(n, m)
    if indivisible not in ("dense", "error"):
        raise ValueError(f"indivisible must be 'dense' or 'error', got {indivisible!r}")
    _check_same_structure(scores, select, "scores and the prunable selection")
    out = []
    for (path, s), sel in zip(flatten.paths_and_leaves(scores), jax.tree_util.tree_leaves(select)):
        shape = jnp.shape(s)
        if not sel or len(shape) < 2:
            out.append(jnp.ones(shape, bool))
            continue
        if shape[-2] % m:
            if indivisible == "error":
                raise ValueError(f"N:M sparsity: {'/'.join(path)} has input dimension {shape[-2]}, "
                                 f"not a multiple of M = {m}")
            out.append(jnp.ones(shape, bool))
            continue
        out.append(n_m_leaf_mask(s, n, m))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(scores), out)


def check_n_m_mask(mask: PyTree, select: PyTree, n: int, m: int) -> list[str]:
    """The selected kernels of `mask` whose every group of M holds exactly
    N kept weights (the others are dense or not N:M)."""
    n, m = check_n_m(n, m)
    sparse = []
    for (path, k), sel in zip(flatten.paths_and_leaves(mask), jax.tree_util.tree_leaves(select)):
        k = np.asarray(k)
        if sel and k.ndim >= 2 and k.shape[-2] % m == 0:
            counts = np.moveaxis(k, -2, -1).reshape(-1, m).sum(axis=1)
            if np.all(counts == n):
                sparse.append("/".join(path))
    return sparse
