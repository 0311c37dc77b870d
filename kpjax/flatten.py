"""Flattening the selected (prunable) leaves of a parameter pytree into θ ∈ R^N.

One definition of the flat layout that the Koopman fit (Θ's columns), the
scores and masks (`kpjax.pruning`) and the trajectory recorder share, and of
parameter counts.

May import: jax, numpy.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Path = tuple[str, ...]
Select = Union[PyTree, Callable[[Path, Any], bool]]


class FlatSpec(NamedTuple):
    """Where each selected leaf of a pytree lives in the flat vector θ ∈ R^N.

    Static and hashable: `paths`, `shapes` and `offsets` of the selected leaves
    in tree-flatten order, the tree structure and which leaves are selected.
    """

    treedef: Any
    selected: tuple[bool, ...]
    paths: tuple[Path, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int


def path_names(path: Sequence[Any]) -> Path:
    """A jax key path as a tuple of plain strings, e.g. ('conv1', 'kernel').

    A trailing ``.value`` attribute is dropped: it is where a flax.nnx
    Variable keeps its array, so an nnx.State names its leaves as the plain
    dict of the same params does (a dict key 'value' is kept).
    """
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def paths_and_leaves(tree: PyTree) -> list[tuple[Path, Any]]:
    """Every leaf of `tree` with its path as plain strings, in tree-flatten order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_names(p), leaf) for p, leaf in leaves]


def _selected_flags(params: PyTree, select: Select) -> tuple[bool, ...]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    if callable(select):
        return tuple(bool(select(path_names(p), leaf)) for p, leaf in leaves_with_path)
    sel_leaves, sel_def = jax.tree_util.tree_flatten(select)
    if sel_def != treedef:
        raise ValueError(
            "select pytree does not match params: "
            f"params structure {treedef}, select structure {sel_def}"
        )
    return tuple(bool(np.all(np.asarray(s))) for s in sel_leaves)


def flat_spec(params: PyTree, select: Select) -> FlatSpec:
    """The FlatSpec of the leaves of `params` chosen by `select`.

    Args:
      params: a parameter pytree (arrays or ShapeDtypeStructs).
      select: a bool pytree like params (True = selected leaf) or a filter
        `fn(path: tuple[str, ...], leaf) -> bool`.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = _selected_flags(params, select)
    paths, shapes, offsets, size = [], [], [], 0
    for (p, leaf), flag in zip(leaves_with_path, flags):
        if flag:
            paths.append(path_names(p))
            shapes.append(tuple(int(d) for d in np.shape(leaf)))
            offsets.append(size)
            size += int(np.prod(np.shape(leaf), dtype=np.int64))
    if size == 0:
        raise ValueError("select chose no parameters: nothing to flatten")
    return FlatSpec(treedef, flags, tuple(paths), tuple(shapes), tuple(offsets), size)


def ravel_selected(params: PyTree, select: Select) -> tuple[jax.Array, FlatSpec]:
    """θ: the selected leaves of `params` raveled and concatenated, and its spec.

    Returns:
      (flat, spec) with flat of shape (spec.size,) in tree-flatten order.
    """
    spec = flat_spec(params, select)
    return ravel_with_spec(params, spec), spec


def ravel_with_spec(params: PyTree, spec: FlatSpec) -> jax.Array:
    """θ for a known spec (jit-friendly: the spec is static)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if treedef != spec.treedef:
        raise ValueError(
            f"params structure {treedef} does not match the spec's {spec.treedef}"
        )
    parts = [jnp.ravel(x) for x, s in zip(leaves, spec.selected) if s]
    return jnp.concatenate(parts)


def unravel_selected(flat: jax.Array, spec: FlatSpec, params: PyTree) -> PyTree:
    """Inverse of `ravel_selected`: put θ back into the selected leaves.

    Non-selected leaves are taken from `params`; selected leaves keep the dtype
    of `flat`.
    """
    if flat.shape != (spec.size,):
        raise ValueError(f"flat vector has shape {flat.shape}, spec needs ({spec.size},)")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if treedef != spec.treedef:
        raise ValueError(
            f"params structure {treedef} does not match the spec's {spec.treedef}"
        )
    out, k = [], 0
    for leaf, s in zip(leaves, spec.selected):
        if s:
            start, shape = spec.offsets[k], spec.shapes[k]
            n = int(np.prod(shape, dtype=np.int64))
            out.append(flat[start : start + n].reshape(shape))
            k += 1
        else:
            out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def count_params(params: PyTree, select: Select | None = None) -> int:
    """Number of parameters: every entry of every leaf, or of the selected leaves.

    Args:
      params: a pytree of arrays or ShapeDtypeStructs.
      select: None (count all), or as for `flat_spec`.
    """
    leaves = jax.tree_util.tree_leaves(params)
    flags = (True,) * len(leaves) if select is None else _selected_flags(params, select)
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x, s in zip(leaves, flags) if s))
