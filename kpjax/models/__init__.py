"""Models by name: MnistNet, the CIFAR ResNets and VGG-16, with tiny test variants.

`get_model(name)` returns a `ModelSpec`; every module is called as
`module.apply(variables, x, train=...)` with NHWC float32 inputs, and
`module.init(rng, x, train=False)` gives {'params'} (+ {'batch_stats'} for
ResNets and VGG). Parameter names mirror the PyTorch state dicts of the pretrained
checkpoints.

May import: flax, jax, kpjax.flatten, kpjax.models.
"""

from collections.abc import Callable
import functools
from typing import Literal, NamedTuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from kpjax.flatten import count_params
from kpjax.models.mnistnet import MnistNet
from kpjax.models.resnet import BasicBlock, ResNet, shortcut_option_a
from kpjax.models.vgg import VGG, VGG16_POOLS, VGG16_WIDTHS


class ModelSpec(NamedTuple):
    """A model and what a caller needs to feed and prune it.

    Attributes:
        name: registry name, e.g. "resnet20".
        module: the Flax module.
        input_shape: one example's shape (H, W, C).
        classifier: name of the final dense submodule ('fc2' or 'linear').
        dataset: the dataset the model is built for.
        flattened_inputs: (dense layer, conv layer) pairs: dense layers that
            read the conv's (pooled) output map flattened in H, W, C order
            (PyTorch flattens C, H, W; `kpjax.io.torch_import` permutes them).
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, int, int]
    classifier: str
    dataset: Literal["mnist", "cifar10"]
    flattened_inputs: tuple[tuple[str, str], ...] = ()


_MNIST_SHAPE = (28, 28, 1)
_CIFAR_SHAPE = (32, 32, 3)


def _mnistnet(name: str, num_classes: int, **widths: int) -> ModelSpec:
    return ModelSpec(name, MnistNet(num_classes=num_classes, **widths),
                     _MNIST_SHAPE, "fc2", "mnist", (("fc1", "conv2"),))


def _resnet(name: str, num_classes: int, num_blocks: int,
            widths: tuple[int, ...] = (16, 32, 64)) -> ModelSpec:
    return ModelSpec(name, ResNet(num_blocks, widths, num_classes),
                     _CIFAR_SHAPE, "linear", "cifar10")


def _vgg(name: str, num_classes: int, widths: tuple[int, ...] = VGG16_WIDTHS) -> ModelSpec:
    # The classifier reads a 1x1 map: no flattening order to declare.
    return ModelSpec(name, VGG(widths, VGG16_POOLS, num_classes), _CIFAR_SHAPE, "classifier", "cifar10")


# name -> (name, num_classes) -> ModelSpec.
MODELS: dict[str, Callable[[str, int], ModelSpec]] = {
    "mnistnet": _mnistnet,
    "mnistnet_tiny": functools.partial(
        _mnistnet, conv1_features=4, conv2_features=8, fc1_features=16),
    "resnet20": functools.partial(_resnet, num_blocks=3),
    "resnet32": functools.partial(_resnet, num_blocks=5),
    "resnet44": functools.partial(_resnet, num_blocks=7),
    "resnet56": functools.partial(_resnet, num_blocks=9),
    "resnet_tiny": functools.partial(_resnet, num_blocks=1, widths=(4, 8, 16)),
    "vgg16": _vgg,
    "vgg_tiny": functools.partial(_vgg, widths=(4, 4, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16)),
}


def init_variables(spec: ModelSpec, seed: int) -> dict:
    """The model's variables {'params'} (+ {'batch_stats'}) initialized with `seed`."""
    return spec.module.init(jax.random.PRNGKey(seed),
                            jnp.zeros((1, *spec.input_shape), jnp.float32), train=False)


def variable_shapes(spec: ModelSpec) -> dict:
    """The shapes and dtypes of `init_variables` (jax.ShapeDtypeStructs), nothing computed."""
    return jax.eval_shape(lambda: init_variables(spec, 0))


def get_model(name: str, num_classes: int = 10) -> ModelSpec:
    """Looks up a model by name.

    Args:
        name: one of `MODELS` ("mnistnet", "resnet20", "resnet32", "resnet44",
            "resnet56", "vgg16", "mnistnet_tiny", "resnet_tiny", "vgg_tiny").
        num_classes: outputs of the classifier.

    Returns:
        The model's `ModelSpec`.

    Raises:
        ValueError: for an unknown name or num_classes < 1.
    """
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return MODELS[name](name, num_classes)


def scale_width(spec: ModelSpec, factor: float) -> ModelSpec:
    """The model with every hidden width (conv channels, dense units) multiplied
    by `factor` and rounded (at least 1); depth, input and classes unchanged.

    The small-dense control of pruning (Liu et al. 2019, "Rethinking the
    value of network pruning"): a dense network as small as a pruned one.
    """
    if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
        raise ValueError(f"width factor must be in (0, 1], got {factor!r}")
    module = spec.module

    def width(w: int) -> int:
        return max(1, round(w * factor))

    if isinstance(module, MnistNet):
        module = module.clone(conv1_features=width(module.conv1_features),
                              conv2_features=width(module.conv2_features),
                              fc1_features=width(module.fc1_features))
    elif isinstance(module, (ResNet, VGG)):
        module = module.clone(widths=tuple(width(w) for w in module.widths))
    else:
        raise ValueError(f"no width scaling declared for {spec.name}")
    return spec._replace(module=module)


def width_for_params(spec: ModelSpec, max_params: int) -> tuple[ModelSpec, float]:
    """The widest `scale_width(spec, f)` with at most `max_params` parameters
    (batch statistics are not parameters), and f; by bisection on f, since the
    count grows with f (about as f²)."""
    def count(f: float) -> int:
        return count_params(variable_shapes(scale_width(spec, f))["params"])

    low, high = 0.0, 1.0
    if count(high) <= max_params:
        return spec, 1.0
    if count(1e-9) > max_params:  # every width at 1 is still too big
        raise ValueError(f"{spec.name} has more than {max_params:,} parameters at width 1")
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if count(mid) <= max_params else (low, mid)
    return scale_width(spec, max(low, 1e-9)), max(low, 1e-9)


__all__ = [
    "MODELS", "BasicBlock", "MnistNet", "ModelSpec", "ResNet", "get_model", "init_variables",
    "VGG", "VGG16_POOLS", "VGG16_WIDTHS", "scale_width", "shortcut_option_a", "variable_shapes",
    "width_for_params",
]
