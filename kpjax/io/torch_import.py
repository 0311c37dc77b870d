"""PyTorch state dicts into Flax variables shaped like a template.

`state_dict_to_variables` and `import_torch_checkpoint` turn a PyTorch state
dict (read by `kpjax.io.torch_file.load_torch_file`) into Flax variables
shaped like a template (the caller's model, e.g. `jax.eval_shape` of its
`init`) whose submodule names mirror the PyTorch ones (`layer1.0.conv1` ->
`layer1_0/conv1`): conv weights OIHW -> HWIO kernels, dense weights
(out, in) -> (in, out) kernels, BatchNorm weight/bias -> params scale/bias,
running_mean/running_var -> batch_stats mean/var (num_batches_tracked is
dropped), and the rows of a dense layer that reads a flattened conv map are
permuted from PyTorch's C, H, W flatten order to Flax's H, W, C (the caller
names those layers: `kpjax.models.ModelSpec.flattened_inputs`). This module
knows no model registry. It is the face of PyTorch import: the reader's
`load_torch_file`, `state_dict_from` and errors are importable from here.

May import: jax, numpy, kpjax.flatten, kpjax.io.torch_file, kpjax.io.torch_pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.flatten import count_params
from kpjax.io.torch_file import load_torch_file, state_dict_from
from kpjax.io.torch_pickle import TorchCheckpointError, UnsafeCheckpointError


class _Target(NamedTuple):
    """Where a PyTorch tensor goes in the Flax variables, and how it is transformed."""

    path: tuple[str, ...]  # (collection, module..., leaf)
    transform: Callable[[np.ndarray], np.ndarray]


def _flax_module_path(torch_module: str) -> tuple[str, ...]:
    """'layer1.0.conv1' -> ('layer1_0', 'conv1'): indices join the container name."""
    parts: list[str] = []
    for part in torch_module.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return tuple(parts)


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(tree, Mapping) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _kernel_transform(chw: tuple[int, int, int] | None) -> Callable[[np.ndarray], np.ndarray]:
    def transform(w: np.ndarray) -> np.ndarray:
        if w.ndim == 4:  # conv (O, I, H, W) -> (H, W, I, O)
            return w.transpose(2, 3, 1, 0)
        if w.ndim == 2 and chw is not None and w.shape[1] == math.prod(chw):
            # Rows of the Flax kernel are indexed (h, w, c), PyTorch's columns (c, h, w).
            return w.reshape(w.shape[0], *chw).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
        if w.ndim == 2:  # dense (out, in) -> (in, out)
            return w.T
        return w  # a shape mismatch, reported by the caller

    return transform


def _keep(x: np.ndarray) -> np.ndarray:
    return x


def _flattened_chw(flattened_inputs: Mapping[str, str], params: Mapping[str, Any],
                   dense: str) -> tuple[int, int, int] | None:
    """(C, H, W) of the feature map that dense layer `dense` reads flattened."""
    conv = flattened_inputs.get(dense)
    conv_kernel = _subtree(params, (conv, "kernel")) if conv else None
    dense_kernel = _subtree(params, (dense, "kernel"))
    if conv_kernel is None or dense_kernel is None:
        return None
    channels = conv_kernel.shape[-1]
    side = math.isqrt(dense_kernel.shape[0] // channels)
    if side * side * channels != dense_kernel.shape[0]:
        raise ValueError(
            f"{dense} reads {dense_kernel.shape[0]} features, not a "
            f"square map of {conv}'s {channels} channels")
    return channels, side, side


def _target(torch_name: str, flattened_inputs: Mapping[str, str],
            template: Mapping[str, Any]) -> _Target | None:
    """The Flax destination of one state-dict entry, None if the model has none."""
    torch_module, _, leaf = torch_name.rpartition(".")
    module = _flax_module_path(torch_module)
    params = template.get("params", {})
    module_params = _subtree(params, module)
    module_stats = _subtree(template.get("batch_stats", {}), module)
    if not isinstance(module_params, Mapping):
        return None
    if "kernel" in module_params:
        chw = _flattened_chw(flattened_inputs, params, module[0]) if len(module) == 1 else None
        leaves = {"weight": ("params", "kernel", _kernel_transform(chw)),
                  "bias": ("params", "bias", _keep)}
    elif "scale" in module_params and isinstance(module_stats, Mapping):
        leaves = {"weight": ("params", "scale", _keep), "bias": ("params", "bias", _keep),
                  "running_mean": ("batch_stats", "mean", _keep),
                  "running_var": ("batch_stats", "var", _keep)}
    else:
        return None
    if leaf not in leaves:
        return None
    collection, flax_leaf, transform = leaves[leaf]
    return _Target((collection, *module, flax_leaf), transform)


def _is_batch_norm_counter(torch_name: str, template: Mapping[str, Any]) -> bool:
    torch_module, _, leaf = torch_name.rpartition(".")
    stats = _subtree(template.get("batch_stats", {}), _flax_module_path(torch_module))
    return leaf == "num_batches_tracked" and isinstance(stats, Mapping)


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _abbreviated(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(n if len(n) <= 120 else n[:120] + "..." for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_dict_to_variables(
    state_dict: Mapping[str, np.ndarray],
    template_variables: Mapping[str, Any],
    flattened_inputs: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    check_only: bool = False,
) -> dict[str, Any] | None:
    """Converts a PyTorch state dict to Flax variables shaped like a template.

    Args:
        state_dict: {PyTorch name: array} in PyTorch layout, e.g. from
            `state_dict_from(load_torch_file(path))`.
        template_variables: variables of the target model (arrays or
            `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape` of `init`);
            only shapes and dtypes are used.
        flattened_inputs: {dense layer: conv layer} for dense layers that
            read the conv's (pooled) output map flattened; their rows are
            permuted from C, H, W to H, W, C order (MnistNet: fc1 <- conv2).
        check_only: only check names and shapes (no arrays built); returns
            None.

    Returns:
        Variables with the template's structure ('params', and 'batch_stats'
        if the template has it), as jax arrays of the template's dtypes.

    Raises:
        ValueError: listing the template variables the state dict does not
            provide, the state-dict entries the model has no place for, and
            the shape mismatches (after the layout change), if any.
    """
    flattened_inputs = dict(flattened_inputs)
    values: dict[str, np.ndarray] = {}
    unexpected, mismatched, mismatched_targets = [], [], set()
    for torch_name, tensor in state_dict.items():
        target = _target(torch_name, flattened_inputs, template_variables)
        if target is None:
            if not _is_batch_norm_counter(torch_name, template_variables):
                unexpected.append(torch_name)
            continue
        leaf = _subtree(template_variables, target.path)
        if leaf is None or isinstance(leaf, Mapping):
            unexpected.append(torch_name)
            continue
        value = target.transform(np.asarray(tensor))
        flax_name = "/".join(target.path)
        if value.shape != tuple(leaf.shape):
            mismatched.append(
                f"{torch_name} {tuple(np.shape(tensor))} -> {flax_name} expects "
                f"{tuple(leaf.shape)} (got {value.shape} after the layout change)")
            mismatched_targets.add(flax_name)
            continue
        values[flax_name] = value

    template_paths = [_path_str(p) for p, _ in
                      jax.tree_util.tree_flatten_with_path(template_variables)[0]]
    missing = [p for p in template_paths
               if p not in values and p not in mismatched_targets]
    if missing or unexpected or mismatched:
        raise ValueError(
            "state dict does not fit the model's variables:\n"
            f"  missing ({len(missing)}): {_abbreviated(missing)}\n"
            f"  unexpected ({len(unexpected)}): {_abbreviated(unexpected)}\n"
            f"  shape mismatches ({len(mismatched)}): {_abbreviated(mismatched)}")
    if check_only:
        return None
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: jnp.asarray(values[_path_str(p)], dtype=leaf.dtype),
        template_variables)


def import_torch_checkpoint(
    path: str | os.PathLike,
    template_variables: Mapping[str, Any],
    flattened_inputs: Mapping[str, str] | Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Loads a PyTorch checkpoint as Flax variables shaped like a template.

    Args:
        path: checkpoint file (legacy or zip `torch.save` format) holding a
            state dict, bare or under 'state_dict', keys optionally prefixed
            'module.'.
        template_variables: the target model's variables or their shapes,
            e.g. ``jax.eval_shape(lambda: module.init(rng, x, train=False))``.
        flattened_inputs: as for `state_dict_to_variables`; for a
            `kpjax.models` model, its spec's ``flattened_inputs``.

    Returns:
        {'params': ...} plus {'batch_stats': ...} when the template has them,
        ready for `module.apply`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for an unreadable or unsafe file, or a state dict of
            another architecture (missing/unexpected keys, shape mismatches).
    """
    # A checkpoint holds the model and at most a few optimizer buffers of the
    # same size: anything far larger is refused before it is read. Then the
    # layout (names, shapes, dtypes) is compared with the model before any
    # tensor data is read.
    budget = 4 * count_params(template_variables) + (1 << 16)
    layout = state_dict_from(load_torch_file(path, budget, layout_only=True))
    state_dict_to_variables(layout, template_variables, flattened_inputs,
                            check_only=True)
    return state_dict_to_variables(state_dict_from(load_torch_file(path, budget)),
                                   template_variables, flattened_inputs)


__all__ = ["TorchCheckpointError", "UnsafeCheckpointError", "import_torch_checkpoint", "load_torch_file",
           "state_dict_from", "state_dict_to_variables"]
