"""Structured pruning: whole output channels and neurons, scored as groups and
physically removed, so that the pruned network is smaller and faster.

A group is one output unit u of a conv or dense layer l: its filter
(kernel[..., u] and bias[u]). Removing it also removes the next layer's
inputs from u, so the shrunk network computes exactly what the network
with the group's filter zeroed computes (ReLU(0) = 0 feeds nothing on).
Group scores reduce any per-weight score (|θ|, |b₁φ₁|, |θ ⊙ Δθ_K|, ...)
over the filter: the L2 norm (KMP on a group is ‖(b₁φ₁)[group]‖₂, no new
fit) or the L1 norm.

Declared per model family: MnistNet (conv1 → conv2 → fc1 → fc2; fc2, the
classifier, keeps its outputs). The CIFAR ResNets, whose option-A
shortcuts tie channels across blocks, are not declared yet.

May import: jax, numpy, kpjax.models.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import models

PyTree = Any
# MnistNet's chain: each prunable layer and the layer that reads its outputs.
_MNISTNET_CHAIN = (("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2"))


def _check_model(spec: models.ModelSpec) -> None:
    if not isinstance(spec.module, models.MnistNet):
        raise ValueError(f"structured pruning is declared for MnistNet models only, not {spec.name}")


def groups(spec: models.ModelSpec, params: PyTree) -> dict[str, int]:
    """The prunable groups of each layer: {layer: number of output units}."""
    _check_model(spec)
    return {layer: int(params[layer]["kernel"].shape[-1]) for layer, _ in _MNISTNET_CHAIN}


def group_scores(spec: models.ModelSpec, scores: PyTree, norm: str = "l2") -> dict[str, jax.Array]:
    """Per-weight scores (a pytree like params) reduced over each unit's filter:
    {layer: (units,)} of ‖scores[filter]‖₂ (norm="l2") or ‖·‖₁ ("l1")."""
    _check_model(spec)
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    out = {}
    for layer, _ in _MNISTNET_CHAIN:
        kernel = jnp.asarray(scores[layer]["kernel"], jnp.float32)
        bias = jnp.asarray(scores[layer]["bias"], jnp.float32)
        flat = jnp.concatenate([kernel.reshape(-1, kernel.shape[-1]), bias[None, :]])
        out[layer] = (jnp.sqrt(jnp.sum(flat**2, axis=0)) if norm == "l2"
                      else jnp.sum(jnp.abs(flat), axis=0))
    return out


def keep_units(scores: dict[str, jax.Array], fraction: float) -> dict[str, np.ndarray]:
    """In every layer, the round(f·units) units with the largest scores (at
    least one; ties keep the lower index)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = {}
    for layer, s in scores.items():
        s = np.asarray(s)
        k = max(1, int(round(fraction * s.size)))
        order = np.argsort(-s, kind="stable")
        mask = np.zeros(s.size, bool)
        mask[order[:k]] = True
        keep[layer] = mask
    return keep


def unit_mask(params: PyTree, keep: dict[str, np.ndarray]) -> PyTree:
    """The bool pytree mask that zeroes the removed units' filters."""
    def leaf_mask(path, x):
        names = [getattr(p, "key", None) for p in path]
        layer, leaf = names[0], names[-1]
        if layer in keep and leaf in ("kernel", "bias"):
            return jnp.broadcast_to(jnp.asarray(keep[layer]), x.shape)
        return jnp.ones(x.shape, bool)
    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def shrink(spec: models.ModelSpec, variables: PyTree, keep: dict[str, np.ndarray]
           ) -> tuple[models.ModelSpec, PyTree]:
    """A smaller MnistNet without the removed units, and its variables.

    Its logits equal those of `variables` masked by `unit_mask(keep)`.
    """
    _check_model(spec)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    sizes = groups(spec, params)
    for layer, n in sizes.items():
        if layer not in keep or np.shape(keep[layer]) != (n,) or not np.any(keep[layer]):
            raise ValueError(f"keep[{layer!r}] must be a bool vector of {n} with at least one True")
    new = {k: dict(v) for k, v in params.items()}
    for layer, nxt in _MNISTNET_CHAIN:
        k = np.asarray(keep[layer], bool)
        new[layer]["kernel"] = new[layer]["kernel"][..., k]
        new[layer]["bias"] = new[layer]["bias"][k]
        inputs = new[nxt]["kernel"]
        if nxt == "fc1":  # fc1 reads conv2's pooled map flattened in (H, W, C) order
            channels = params["conv2"]["kernel"].shape[-1]
            rows = inputs.reshape(-1, channels, inputs.shape[-1])[:, k, :]
            new[nxt]["kernel"] = rows.reshape(-1, inputs.shape[-1])
        else:
            new[nxt]["kernel"] = inputs[..., k, :] if inputs.ndim == 4 else inputs[k, :]
    module = spec.module.clone(conv1_features=int(keep["conv1"].sum()),
                               conv2_features=int(keep["conv2"].sum()),
                               fc1_features=int(keep["fc1"].sum()))
    return spec._replace(module=module), {"params": new}
