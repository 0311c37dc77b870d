r"""A pruned model on disk: θ ⊙ m and its mask saved with orbax, a JSON
report of each layer's sparsity beside them, and the kept weights as
`jax.experimental.sparse.BCOO` arrays.

  directory/
    arrays/          orbax (StandardCheckpointer): {"params": θ ⊙ m, "mask": m,
                     and any further collections, e.g. "batch_stats"}
    sparsity.json    {"format", "total", "kept", "compression",
                     "layers": {path: {"shape", "size", "kept", "sparsity"}}}

The directory is written under a temporary name and renamed when complete,
so it is either whole or absent. Loading checks that the mask and the zeros
of θ agree with the report (a damaged or edited export is refused).

    kpjax.pruning.export_pruned("model_sparse", params, mask, batch_stats=stats)
    tree = kpjax.pruning.load_pruned("model_sparse")   # {"params", "mask", "batch_stats"}
    logits = module.apply({"params": tree["params"], "batch_stats": tree["batch_stats"]}, x, train=False)

May import: jax, numpy, orbax, kpjax.flatten, kpjax.parallel, kpjax.pruning.masks.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import sparse

from kpjax import flatten, parallel
from kpjax.pruning.masks import apply_mask, check_mask

PyTree = Any
FORMAT = "kpjax-pruned-v1"
_ARRAYS, _REPORT = "arrays", "sparsity.json"


def sparsity_report(params: PyTree, mask: PyTree) -> dict[str, Any]:
    """Per-leaf and total kept counts of `mask` (every leaf, prunable or not)."""
    check_mask(params, mask, "sparsity_report(params, mask)")
    layers, total, kept = {}, 0, 0
    for (path, p), m in zip(flatten.paths_and_leaves(params), jax.tree_util.tree_leaves(mask)):
        size, k = int(np.size(p)), int(np.sum(np.asarray(m)))
        layers["/".join(path)] = {"shape": list(np.shape(p)), "size": size, "kept": k,
                                  "sparsity": 1.0 - k / size if size else 0.0}
        total, kept = total + size, kept + k
    return {"format": FORMAT, "total": total, "kept": kept,
            "compression": total / max(kept, 1), "layers": layers}


def export_pruned(directory: str | os.PathLike, params: PyTree, mask: PyTree, **collections: PyTree) -> str:
    """Writes θ ⊙ m, m, the further `collections` (e.g. batch_stats=...) and
    the sparsity report to a new `directory`; returns its path.

    Raises:
      ValueError: the directory exists, or the mask does not fit the params.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise ValueError(f"export_pruned: {directory} exists; choose a new directory")
    if {"params", "mask"} & set(collections):
        raise ValueError("export_pruned: 'params' and 'mask' are the export's own names")
    report = sparsity_report(params, mask)
    tree = {"params": apply_mask(params, mask), "mask": mask, **collections}
    # With several processes (jax.distributed) every process saves its part
    # into one agreed temporary directory, and process 0 completes it.
    several = jax.process_count() > 1
    tmp = f"{directory}.tmp-{'job' if several else os.getpid()}"
    primary = parallel.is_primary()
    if primary:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    parallel.sync(f"export {directory}: begin")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, _ARRAYS), tree)
        if primary:
            with open(os.path.join(tmp, _REPORT), "w") as f:
                json.dump(report, f, indent=1)
            os.rename(tmp, directory)
    finally:
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)
    parallel.sync(f"export {directory}: done")
    return directory


def read_report(directory: str | os.PathLike) -> dict[str, Any]:
    """The sparsity report of an export; ValueError if missing or damaged."""
    path = os.path.join(os.fspath(directory), _REPORT)
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{directory} is not a kpjax pruned export (no {_REPORT})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged: {e}") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT or not isinstance(report.get("layers"), dict):
        raise ValueError(f"{path} is not a {FORMAT} report")
    return report


def load_pruned(directory: str | os.PathLike) -> dict[str, PyTree]:
    """The exported tree, {"params": θ ⊙ m, "mask": m, ...}, bit for bit as
    saved, after checking it against the report.

    Raises:
      ValueError: not an export, damaged arrays, or arrays that disagree
        with the report (a pruned weight that is not 0, other kept counts).
    """
    directory = os.path.abspath(os.fspath(directory))
    report = read_report(directory)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(os.path.join(directory, _ARRAYS))
    except Exception as e:  # orbax raises many types on damaged files
        raise ValueError(f"{directory}: the arrays cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict) or not {"params", "mask"} <= set(tree):
        raise ValueError(f"{directory}: the arrays hold no params and mask")
    params, mask = tree["params"], tree["mask"]
    try:
        found = sparsity_report(params, mask)
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from None
    if found["layers"] != report["layers"]:
        raise ValueError(f"{directory}: the mask disagrees with {_REPORT}")
    for (path, p), m in zip(flatten.paths_and_leaves(params), jax.tree_util.tree_leaves(mask)):
        if np.any(np.asarray(p)[~np.asarray(m)] != 0):
            raise ValueError(f"{directory}: {'/'.join(path)} has nonzero pruned weights")
    return tree


def to_bcoo(params: PyTree, mask: PyTree, min_ndim: int = 2) -> PyTree:
    """θ ⊙ m with every leaf of ndim ≥ `min_ndim` as a BCOO array holding
    exactly its kept entries (nse = kept count); other leaves dense.
    `leaf.todense()` gives θ ⊙ m back."""
    check_mask(params, mask, "to_bcoo(params, mask)")
    pruned = apply_mask(params, mask)

    def convert(p, m):
        if jnp.ndim(p) < min_ndim:
            return p
        return sparse.BCOO.fromdense(p, nse=int(jnp.sum(m)))

    return jax.tree_util.tree_map(convert, pruned, mask)
