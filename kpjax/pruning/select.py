"""Which parameters are prunable: ShrinkBench's set, as a bool pytree.

May import: jax, kpjax.flatten.
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from kpjax import flatten

PyTree = Any

_PRUNABLE_LEAVES = ("kernel", "bias")

# ---------------------------------------------------------------------------
# Which parameters are prunable.


def prunable(
    params: PyTree, include_classifier: bool = True, classifier: Optional[str] = None,
    include_biases: bool = True,
) -> PyTree:
    """ShrinkBench's prunable set as a bool pytree like `params`.

    A leaf is prunable when it is the `kernel` or `bias` of a module that owns
    a `kernel` (conv or dense); BatchNorm owns `scale`/`bias`, no kernel, so it
    is never prunable. The paper prunes the classifier too (default); pass
    include_classifier=False and its module name to exclude it.
    """
    if not include_classifier and not classifier:
        raise ValueError("include_classifier=False needs the classifier's module name")
    entries = flatten.paths_and_leaves(params)
    owners = {path[:-1] for path, _ in entries if path and path[-1] == "kernel"}
    if not include_classifier and not any(o and o[-1] == classifier for o in owners):
        raise ValueError(
            f"classifier {classifier!r} is not a conv/dense module of params; modules: "
            f"{sorted('/'.join(o) for o in owners)}"
        )
    flags = []
    for path, _ in entries:
        owner = path[:-1]
        ok = bool(path) and path[-1] in _PRUNABLE_LEAVES and owner in owners
        if ok and not include_classifier and owner and owner[-1] == classifier:
            ok = False
        if ok and not include_biases and path[-1] == "bias":
            ok = False
        flags.append(ok)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)
