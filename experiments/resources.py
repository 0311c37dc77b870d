"""What a config needs from the world: its model, its data, its devices.

A config (`experiments.config`) holds values; what they refer to is looked
up here. `model_spec(config)` builds the model (a registry name, an image
folder's classes and image shape, or a user's module by import path), and
`check_resources(config)` is the one check of everything a run will touch
before it trains: the devices, the data files, the image folder against the
model, and every compression against the model's prunable set. Each
binary's `run` calls it first, so a missing file or an unreachable
compression stops the run in a second, as a ValueError of one line
starting with the flag.

May import: jax, numpy, experiments.config, experiments.fields, experiments.user_model, kpjax.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from experiments import user_model
from experiments.config import DataConfig, PruneConfig, PruningFields
from experiments.fields import check
from kpjax import data, flatten, models, pruning
from kpjax.flatten import count_params
from kpjax.pruning import structured


def model_spec(config: DataConfig) -> models.ModelSpec:
    """The model; for --data=imagefolder with the data's classes and image shape.

    An image folder is decoded (and cached) on the first call.
    """
    shape, classes = None, data.NUM_CLASSES
    if config.data == "imagefolder":
        shape, classes = data.image_folder_spec(config.data_dir)
    if user_model.is_import_path(config.model):
        return user_model.spec(config.model, config.input_shape or shape or (), config.data, classes)
    if shape is None:
        return models.get_model(config.model)
    return models.get_model(config.model, classes)._replace(input_shape=shape)


def dataset_name(config: DataConfig) -> str:
    return config.data or model_spec(config).dataset


def prunable_set(config: PruningFields, spec: models.ModelSpec, params: Any) -> Any:
    """The bool pytree of the parameters the methods prune (ShrinkBench's set,
    the classifier only with --prune_classifier, biases only with --prune_biases)."""
    return pruning.prunable(params, include_classifier=config.prune_classifier,
                            classifier=spec.classifier, include_biases=config.prune_biases)


def check_resources(config: DataConfig) -> None:
    """Everything `config` refers to is there and fits, before any training.

    Raises:
      ValueError: too few devices for --devices or --batch_size, absent data
        files, an image folder the model cannot take, an unknown or unfit
        --model=module:Attr, or a compression the prunable set cannot reach.
    """
    available = len(jax.devices())
    check(config.devices <= available, f"--devices={config.devices}, but JAX sees {available} "
          "device(s) (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    processes = jax.process_count()
    check(processes == 1 or config.devices in (0, available),
          f"--devices={config.devices} with {processes} processes: every process's devices train; "
          f"use --devices=0 (all {available})")
    used = config.devices or available
    check(config.batch_size % used == 0, f"--batch_size={config.batch_size} does not divide over "
          f"{used} devices" + (f" ({processes} processes)" if processes > 1 else "")
          + f"; choose a multiple of {used}")
    try:
        data.check_available(dataset_name(config), config.data_dir, config.download)
    except data.DataNotFoundError as e:  # an OSError; the usage errors are ValueErrors
        raise ValueError(str(e)) from None
    spec = model_spec(config)
    if config.data == "imagefolder":
        try:
            models.variable_shapes(spec)
        except (ValueError, TypeError, ZeroDivisionError) as e:  # shapes that do not fit the layers
            raise ValueError(f"--model={config.model} cannot take the image folder's "
                             f"{'×'.join(map(str, spec.input_shape))} images "
                             f"({type(e).__name__}: {e})") from None
    if isinstance(config, PruningFields):
        _check_compressions(config, spec)
    if isinstance(config, PruneConfig) and config.granularity == "filter":
        zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), models.variable_shapes(spec))
        try:
            for c in config.compressions:
                structured.fraction_for_compression(spec, zeros, c)
        except ValueError as e:
            raise ValueError(f"--granularity=filter: {e}") from None


def _check_compressions(config: PruningFields, spec: models.ModelSpec) -> None:
    """Every compression is reachable with the model's prunable set."""
    params = models.variable_shapes(spec)["params"]
    select = prunable_set(config, spec, params)
    flat = flatten.flat_spec(params, select)
    for c in config.compressions:
        # The library's rule: at least one kept weight per prunable tensor
        # (below it global pruning must empty a layer and the network is cut).
        try:
            pruning.check_keep_fraction(pruning.keep_fraction(c, count_params(params), flat.size), flat)
        except ValueError as e:
            raise ValueError(f"--compressions: {c:g}: {e} (model {config.model}"
                             f"{'' if config.prune_classifier else ', classifier kept dense'})") from None
