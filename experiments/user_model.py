"""A user's Flax Linen model by import path: `--model=mypkg.nets:MyNet`.

The experiments call every model as kpjax's registry models are called,
`module.apply(variables, x, train=...)` on NHWC float32 images. A user's
module is taken as it is when its `__call__` has a `train` argument, and
wrapped in `DropTrain` otherwise (a module that computes the same in
training and evaluation: no dropout, no batch statistics). Its
`kpjax.models.ModelSpec` names the classifier (the last Dense layer
created, the one the logits come from) so that --prune_classifier=false
can keep it dense.

`Attr` is a Linen module class, built with `num_classes=` when it has that
field and without arguments otherwise, or a function of no arguments that
returns a module. Every way of getting this wrong is a ValueError of one
line naming the --model flag.

May import: flax, numpy, kpjax.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Any

import numpy as np
from flax import linen as nn

from kpjax import models

_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# The image shapes of the datasets a user's model can default to (the
# registry's MNIST and CIFAR-10 models take the same).
IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def is_import_path(name: str) -> bool:
    """Whether `name` reads as module.path:Attr (syntax only: nothing is imported)."""
    return isinstance(name, str) and _IMPORT_PATH.fullmatch(name) is not None


class DropTrain(nn.Module):
    """`inner` called as kpjax's models are: `train` accepted, and dropped."""

    inner: nn.Module

    def __call__(self, x, train: bool = False):
        del train  # inner computes the same in training and evaluation
        return self.inner(x)


def load_module(path: str, num_classes: int) -> nn.Module:
    """The Linen module `path` (module.path:Attr) names, with a `train` argument.

    Raises:
      ValueError: no such module or attribute, or not a Flax Linen module.
    """
    module_name, attr = path.split(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model={path}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ValueError(f"--model={path}: module {module_name} has no attribute {attr}")
        found = getattr(found, part)
    if isinstance(found, type) and issubclass(found, nn.Module):
        takes_classes = any(f.name == "num_classes" for f in dataclasses.fields(found))
        module = found(num_classes=num_classes) if takes_classes else found()
    elif callable(found) and not isinstance(found, type) and not isinstance(found, nn.Module):
        module = found()
        if not isinstance(module, nn.Module):
            raise ValueError(f"--model={path}: {attr}() returned {type(module).__name__}, "
                             "not a Flax Linen module")
    else:
        raise ValueError(f"--model={path}: {attr} is not a Flax Linen module class nor a "
                         "function of no arguments returning one")
    return module if _takes_train(module) else DropTrain(module)


def _takes_train(module: nn.Module) -> bool:
    parameters = inspect.signature(type(module).__call__).parameters.values()
    return any(p.name == "train" or p.kind is p.VAR_KEYWORD for p in parameters)


def classifier_name(params: Any) -> str | None:
    """The name of the last Dense layer (2-D kernel) in creation order: Flax
    keeps params in the order the layers were called, the logits' last."""
    last = None

    def walk(tree, name):
        nonlocal last
        for key, value in tree.items():
            if isinstance(value, dict) or hasattr(value, "items"):
                walk(value, key)
            elif key == "kernel" and len(np.shape(value)) == 2:
                last = name
    walk(params, None)
    return last


def spec(path: str, input_shape: tuple[int, ...], dataset: str | None,
         num_classes: int) -> models.ModelSpec:
    """The `ModelSpec` of the user's model `path`.

    Args:
      input_shape: one example's shape; () for the dataset's image shape.
      dataset: --data (None: mnist); synthetic and image-folder data are
        normalized as mnist is, unless cifar10 is given.
      num_classes: the classifier's outputs, when the module takes them.
    """
    module = load_module(path, num_classes)
    dataset = dataset if dataset in IMAGE_SHAPES else "mnist"
    shape = tuple(input_shape) or IMAGE_SHAPES[dataset]
    partial = models.ModelSpec(path, module, shape, "", dataset)
    try:
        params = models.variable_shapes(partial)["params"]
    except (ValueError, TypeError, ZeroDivisionError) as e:  # inputs that do not fit the layers
        raise ValueError(f"--model={path} cannot take {'×'.join(map(str, shape))} inputs "
                         f"({type(e).__name__}: {e})") from None
    classifier = classifier_name(params)
    if classifier is None:
        raise ValueError(f"--model={path} has no Dense layer (a 2-D kernel) to classify with")
    return partial._replace(classifier=classifier)
