"""Evaluation metrics: top-k accuracy counts, model size, FLOPs and speedup.

Conventions follow ShrinkBench (the paper's harness): FLOPs are the
multiply-adds of conv and dense layers (biases, activations, pooling and
BatchNorm are not counted); the theoretical speedup of a pruned model is
dense FLOPs / Σ_layers FLOPs · (kernel density); accuracies are weighted by
examples, not batches.

May import: flax, jax, numpy, kpjax.flatten.
"""

from collections.abc import Mapping, Sequence
import functools
from typing import Any

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from kpjax.flatten import count_params

Path = tuple[str, ...]


def accuracy_counts(
    logits: jax.Array, labels: jax.Array, ks: Sequence[int] = (1, 5)
) -> dict[str, jax.Array]:
    """Number of examples whose label is among the k highest logits.

    The one top-k of kpjax (training metrics, evaluation, experiments). Ties
    are broken by class index, as PyTorch's `topk` and `jax.lax.top_k` do
    (so ShrinkBench's numbers are reproduced): the label's rank is the number
    of classes with a larger logit plus the number with an equal logit and a
    lower index. A NaN logit ranks above the label, and a NaN label logit
    is never correct (a diverged model scores 0, not 1). Constant logits
    therefore make only the examples of class 0 top-1 correct. Jittable; sum
    the dicts of several batches with `jax.tree.map(jnp.add, a, b)` and
    divide with `accuracies`.

    Args:
        logits: (B, C) scores.
        labels: (B,) integer class ids in [0, C).
        ks: the k of each top-k count, k >= 1 (k >= C counts every example
            whose label logit is not NaN).

    Returns:
        {"top{k}": correct count for each k, "examples": B}, int32 scalars.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (B, C) and labels (B,), got {logits.shape} and {labels.shape}")
    for k in ks:
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got k={k}")
    labels = labels.astype(jnp.int32)
    label_logits = jnp.take_along_axis(logits, labels[:, None], axis=1)
    classes = jnp.arange(logits.shape[1], dtype=jnp.int32)[None, :]
    # ~(a <= b) rather than a > b: true when either side is NaN.
    above = ~(logits <= label_logits)
    tied_before = (logits == label_logits) & (classes < labels[:, None])
    rank = jnp.sum(above | tied_before, axis=1)
    counts = {f"top{k}": jnp.sum(rank < k, dtype=jnp.int32) for k in ks}
    counts["examples"] = jnp.asarray(labels.shape[0], jnp.int32)
    return counts


def accuracies(counts: Mapping[str, Any]) -> dict[str, float]:
    """Fractions from (summed) `accuracy_counts`.

    Args:
        counts: {"top{k}": correct, ..., "examples": n} with n > 0.

    Returns:
        {"top{k}": correct / n} as Python floats.
    """
    examples = int(counts["examples"])
    if examples <= 0:
        raise ValueError("accuracies of zero examples are undefined")
    return {key: int(value) / examples for key, value in counts.items() if key != "examples"}


def model_size(params: Any, mask: Any = None) -> tuple[int, int]:
    """Total and nonzero parameter counts.

    Args:
        params: parameter pytree.
        mask: optional bool pytree like params (True = kept). When given, the
            kept entries are counted, whatever their values; otherwise the
            entries of params that are nonzero (ShrinkBench's `model_size`).

    Returns:
        (total, nonzero).
    """
    total = count_params(params)
    if mask is None:
        nonzero = sum(int(np.count_nonzero(leaf)) for leaf in jax.tree.leaves(params))
    else:
        if jax.tree.structure(mask) != jax.tree.structure(params):
            raise ValueError("mask must have the same pytree structure as params")
        nonzero = sum(int(np.count_nonzero(leaf)) for leaf in jax.tree.leaves(mask))
    return total, nonzero


def layer_flops(module: nn.Module, variables: Any, input_shape: Sequence[int]) -> dict[Path, int]:
    """Multiply-adds per example of every conv and dense layer.

    Traces `module.apply(variables, x, train=False)` abstractly (no compute) and
    records each nn.Conv / nn.Dense call: conv H_out·W_out·k_h·k_w·C_in·C_out
    (/groups), dense in·out (times any leading positions).

    Args:
        module: a Flax module whose `__call__(x, train=...)` follows kpjax's
            model API.
        variables: its variables ({'params': ...} and any other collections);
            arrays or `jax.ShapeDtypeStruct`s.
        input_shape: one example's shape, e.g. (H, W, C).

    Returns:
        {module path: multiply-adds}, where the module path (e.g.
        ("layer1_0", "conv1")) indexes the params pytree: the layer's kernel
        is params[path...]["kernel"].

    Raises:
        ValueError: if a 'kernel' parameter belongs to no counted layer call.
    """
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be positive ints, got {input_shape!r}")
    flops: dict[Path, int] = {}

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        layer = context.module
        if context.method_name == "__call__" and isinstance(layer, (nn.Conv, nn.Dense)):
            kernel_size = int(np.prod(layer.get_variable("params", "kernel").shape))
            positions = out.size // out.shape[-1]  # output pixels; the batch is 1
            path = tuple(layer.path)
            flops[path] = flops.get(path, 0) + positions * kernel_size
        return out

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(count):
        jax.eval_shape(functools.partial(module.apply, train=False), variables, x)

    uncounted = [path for path in _kernel_paths(variables["params"]) if path not in flops]
    if uncounted:
        raise ValueError(
            f"kernels of layers that are not nn.Conv/nn.Dense calls, FLOPs unknown: {uncounted}")
    return flops


def flops(flops_by_layer: Mapping[Path, int], params: Any, mask: Any = None) -> tuple[int, float]:
    """(dense, remaining) multiply-adds per example: Σ_l F_l and Σ_l F_l·d_l,
    F_l the multiply-adds of layer l, d_l the density of its kernel (bias
    sparsity is ignored, as in ShrinkBench: `flops` and `flops_nz`).

    Args:
        flops_by_layer: `layer_flops` output.
        params: parameter pytree (nested dicts).
        mask: optional bool pytree like params (True = kept); d_l is the kept
            fraction of the kernel's mask. Without a mask, d_l is the nonzero
            fraction of the kernel itself.
    """
    flat_params = traverse_util.flatten_dict(params)
    flat_kept = flat_params if mask is None else traverse_util.flatten_dict(mask)
    dense = 0
    remaining = 0.0
    for path, layer in flops_by_layer.items():
        key = tuple(path) + ("kernel",)
        if key not in flat_params or key not in flat_kept:
            raise ValueError(f"no kernel at {key} in params and mask")
        kernel, kept = flat_params[key], flat_kept[key]
        if np.shape(kept) != np.shape(kernel):
            raise ValueError(f"mask shape {np.shape(kept)} != kernel shape {np.shape(kernel)} at {key}")
        dense += layer
        remaining += layer * np.count_nonzero(np.asarray(kept)) / np.size(kernel)
    if dense == 0:
        raise ValueError("no FLOPs to compare: flops_by_layer is empty")
    return dense, remaining


def theoretical_speedup(
    flops_by_layer: Mapping[Path, int], params: Any, mask: Any = None
) -> float:
    """Dense FLOPs / FLOPs left after pruning (ShrinkBench's speedup), from `flops`.

    Returns:
        The speedup, >= 1; inf if every counted kernel is fully pruned.
    """
    dense, remaining = flops(flops_by_layer, params, mask)
    return float(dense / remaining) if remaining > 0 else float("inf")


def _kernel_paths(params: Any) -> list[Path]:
    return [key[:-1] for key in traverse_util.flatten_dict(params) if key[-1] == "kernel"]
