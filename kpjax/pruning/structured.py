"""Structured pruning: whole output channels and neurons, scored as groups and
physically removed, so that the pruned network is smaller and faster.

A group is one output unit u of a producing conv or dense layer: its filter
(kernel[..., u], bias[u]) and, after a conv with BatchNorm, BN's scale[u],
bias[u] and running statistics. Removing it also removes the consuming
layer's inputs from u, so the shrunk network computes exactly what the
network with the group zeroed computes (ReLU(BN(0)) = ReLU(β) = 0 once
β[u] = 0 too, and 0 feeds nothing on). Group scores reduce any per-weight
score (|θ|, |b₁φ₁|, |θ ⊙ Δθ_K|, ...) over the filter: the L2 norm (KMP on a
group is ‖(b₁φ₁)[group]‖₂, no new fit) or the L1 norm.

Declared per model family (`declared_groups`):
  * MnistNet: conv1 → conv2 → fc1 (fc1 reads conv2's pooled map flattened in
    (H, W, C) order) → fc2; fc2, the classifier, keeps its outputs.
  * CIFAR ResNets (option-A shortcuts): the channels a block adds to its
    shortcut are tied across every block of a stage (and zero-padded into
    the next), so they stay; each block's inner channels — conv1's outputs,
    bn1, conv2's inputs — are its own and form the groups, one per block
    (as Li et al. 2017 prune CIFAR ResNets).
  * VGG: every conv's output channels with its BatchNorm, read by the next
    conv; the last conv's by the classifier (from the 1x1 pooled map), as
    network slimming prunes VGG.

May import: jax, numpy, kpjax.flatten, kpjax.metrics, kpjax.models.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import metrics, models
from kpjax.flatten import count_params

PyTree = Any
Path = tuple[str, ...]


class Group(NamedTuple):
    """The output units of one layer, removable with what they feed.

    Attributes:
      name: the key of this layer's entries in groups/scores/keep dicts.
      producer: path of the module whose output units these are.
      norm: path of the BatchNorm normalizing them, or None.
      consumer: path of the module reading them.
      flattened: the consumer is a dense layer reading the producer's map
        flattened in (H, W, C) order.
    """

    name: str
    producer: Path
    norm: Path | None
    consumer: Path
    flattened: bool = False


def declared_groups(spec: models.ModelSpec, params: PyTree) -> list[Group]:
    """The model family's groups (module docstring), in forward order."""
    module = spec.module
    if isinstance(module, models.MnistNet):
        return [Group("conv1", ("conv1",), None, ("conv2",)),
                Group("conv2", ("conv2",), None, ("fc1",), flattened=True),
                Group("fc1", ("fc1",), None, ("fc2",))]
    if isinstance(module, models.ResNet):
        blocks = [f"layer{s + 1}_{b}" for s in range(len(module.widths))
                  for b in range(module.num_blocks)]
        return [Group(blk, (blk, "conv1"), (blk, "bn1"), (blk, "conv2")) for blk in blocks]
    if isinstance(module, models.VGG):
        n = len(module.widths)
        return [Group(f"conv{i}", (f"conv{i}",), (f"bn{i}",), (f"conv{i + 1}",) if i < n else ("classifier",))
                for i in range(1, n + 1)]
    raise ValueError(f"structured pruning declares MnistNet, the CIFAR ResNets and VGG, not {spec.name}")


def _get(tree: PyTree, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def groups(spec: models.ModelSpec, params: PyTree) -> dict[str, int]:
    """The prunable groups of each layer: {group name: number of output units}."""
    return {g.name: int(_get(params, g.producer)["kernel"].shape[-1])
            for g in declared_groups(spec, params)}


def group_scores(spec: models.ModelSpec, scores: PyTree, norm: str = "l2") -> dict[str, jax.Array]:
    """Per-weight scores (a pytree like params) reduced over each unit's filter
    (kernel[..., u] and bias[u] when the layer has one): {name: (units,)} of
    ‖scores[filter]‖₂ (norm="l2") or ‖·‖₁ ("l1")."""
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    out = {}
    for g in declared_groups(spec, scores):
        layer = _get(scores, g.producer)
        kernel = jnp.asarray(layer["kernel"], jnp.float32)
        parts = [kernel.reshape(-1, kernel.shape[-1])]
        if "bias" in layer:
            parts.append(jnp.asarray(layer["bias"], jnp.float32)[None, :])
        flat = jnp.concatenate(parts)
        out[g.name] = (jnp.sqrt(jnp.sum(flat**2, axis=0)) if norm == "l2"
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


def unit_mask(spec: models.ModelSpec, params: PyTree, keep: dict[str, np.ndarray]) -> PyTree:
    """The bool pytree mask of everything the removed units take with them:
    their filters, BatchNorm's scale and bias after a conv, and the next
    layer's weights reading them. Its kept count is the shrunk network's
    parameter count (`shrink`)."""
    masks: dict[Path, dict[str, np.ndarray]] = {}

    def leaf(path: Path, name: str) -> np.ndarray:
        module = masks.setdefault(path, {})
        if name not in module:
            module[name] = np.ones(np.shape(_get(params, path)[name]), bool)
        return module[name]

    for g in declared_groups(spec, params):
        if g.name not in keep:
            continue
        k = np.asarray(keep[g.name], bool)
        producer = _get(params, g.producer)
        leaf(g.producer, "kernel")[..., ~k] = False
        if "bias" in producer:
            leaf(g.producer, "bias")[~k] = False
        if g.norm is not None:
            for name in ("scale", "bias"):
                leaf(g.norm, name)[~k] = False
        inputs = leaf(g.consumer, "kernel")
        if g.flattened:  # rows of the (H, W, C)-flattened map: channel is the fastest axis
            inputs.reshape(-1, k.size, inputs.shape[-1])[:, ~k, :] = False
        elif inputs.ndim == 4:
            inputs[:, :, ~k, :] = False
        else:
            inputs[~k, :] = False

    def leaf_mask(path, x):
        names = tuple(getattr(p, "key", None) for p in path)
        m = masks.get(names[:-1], {}).get(names[-1])
        return jnp.asarray(m) if m is not None else jnp.ones(x.shape, bool)
    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def _copy(tree: PyTree) -> PyTree:
    """Nested dicts of NumPy arrays, mutable."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _copy(v) for k, v in tree.items()}
    return np.asarray(tree)


def shrink(spec: models.ModelSpec, variables: PyTree, keep: dict[str, np.ndarray]
           ) -> tuple[models.ModelSpec, PyTree]:
    """A smaller model without the removed units, and its variables.

    Its logits equal those of `variables` masked by `unit_mask(spec, ...)`
    (BatchNorm in either mode: a removed unit's BN output is 0 there).
    """
    variables = _copy(variables)
    params = variables["params"]
    declared = declared_groups(spec, params)
    sizes = groups(spec, params)
    for name, n in sizes.items():
        if name not in keep or np.shape(keep[name]) != (n,) or not np.any(keep[name]):
            raise ValueError(f"keep[{name!r}] must be a bool vector of {n} with at least one True")
    for g in declared:
        k = np.asarray(keep[g.name], bool)
        producer = _get(params, g.producer)
        producer["kernel"] = producer["kernel"][..., k]
        if "bias" in producer:
            producer["bias"] = producer["bias"][k]
        if g.norm is not None:
            for collection in ("params", "batch_stats"):
                if collection in variables:
                    bn = _get(variables[collection], g.norm)
                    for leaf in list(bn):
                        bn[leaf] = bn[leaf][k]
        consumer = _get(params, g.consumer)
        inputs = consumer["kernel"]
        if g.flattened:  # rows of the (H, W, C)-flattened map: channel is the fastest axis
            rows = inputs.reshape(-1, sizes[g.name], inputs.shape[-1])[:, k, :]
            consumer["kernel"] = rows.reshape(-1, inputs.shape[-1])
        else:
            consumer["kernel"] = inputs[..., k, :] if inputs.ndim == 4 else inputs[k, :]
    kept = {name: int(np.sum(keep[name])) for name in sizes}
    if isinstance(spec.module, models.MnistNet):
        module = spec.module.clone(conv1_features=kept["conv1"], conv2_features=kept["conv2"],
                                   fc1_features=kept["fc1"])
    elif isinstance(spec.module, models.VGG):
        module = spec.module.clone(widths=tuple(kept[g.name] for g in declared))
    else:
        module = spec.module.clone(inner_widths=tuple(kept[g.name] for g in declared))
    return spec._replace(module=module), variables


def kept_units(spec: models.ModelSpec, mask: PyTree) -> dict[str, np.ndarray]:
    """The units a `unit_mask` keeps (a unit is kept when any entry of its
    filter is)."""
    out = {}
    for g in declared_groups(spec, mask):
        kernel = np.asarray(_get(mask, g.producer)["kernel"])
        out[g.name] = kernel.reshape(-1, kernel.shape[-1]).any(axis=0)
    return out


def theoretical_speedup(spec: models.ModelSpec, variables: PyTree, keep: dict[str, np.ndarray]) -> float:
    """Dense multiply-adds over the shrunk network's (ShrinkBench's theoretical
    speedup, counting the next layers' removed inputs too)."""
    small_spec, small = shrink(spec, variables, keep)
    dense = sum(metrics.layer_flops(spec.module, variables, spec.input_shape).values())
    return dense / sum(metrics.layer_flops(small_spec.module, small, spec.input_shape).values())


def fraction_for_compression(spec: models.ModelSpec, variables: PyTree, compression: float) -> float:
    """The largest fraction f of every group's units (`keep_units`) whose
    shrunk network has total / kept parameters ≥ `compression`.

    Raises:
      ValueError: even one unit per group leaves too many parameters (the
        parameters outside the groups — a ResNet's shortcut-tied channels,
        stem and classifier — bound the compression).
    """
    params = variables["params"]
    total = count_params(params)
    sizes = groups(spec, params)

    def achieved(f: float) -> float:
        keep = {name: np.arange(n) < max(1, int(round(f * n))) for name, n in sizes.items()}
        return total / count_params(shrink(spec, {"params": params}, keep)[1]["params"])

    if achieved(0.0) < compression:
        raise ValueError(f"compression {compression:g} is out of reach of filter pruning of "
                         f"{spec.name}: one unit per group leaves {total / achieved(0.0):,.0f} of "
                         f"{total:,} parameters (c = {achieved(0.0):.2f} at most)")
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if achieved(mid) >= compression else (low, mid)
    return max(low, 1e-9)
