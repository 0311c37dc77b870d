"""Normalization and augmentation: jitted JAX functions applied to each batch
on the device (images stay uint8 NHWC on the host).

May import: jax, numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Pixels of zero padding on each side before CIFAR-10's random 32x32 crop.
CIFAR_PAD = 4


class Normalization(NamedTuple):
    """Per-channel mean and std of pixel values scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# CIFAR-10 has two conventions in the paper's harness, and they differ:
# "pretrained": the ImageNet statistics that the akamaster ResNet-20 (the
#   ShrinkBench pretrained weights) was trained with; use it with those weights.
# "shrinkbench": ShrinkBench's own CIFAR-10 loader statistics; ShrinkBench feeds
#   the pretrained weights with these, i.e. slightly shifted inputs.
# MNIST uses the usual (0.1307, 0.3081) in both.
NORMALIZATIONS = {
    ("mnist", "pretrained"): Normalization((0.1307,), (0.3081,)),
    ("mnist", "shrinkbench"): Normalization((0.1307,), (0.3081,)),
    ("cifar10", "pretrained"): Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("cifar10", "shrinkbench"): Normalization((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
}


def get_normalization(dataset: str, variant: str = "pretrained") -> Normalization:
    """The normalization constants of a dataset.

    Args:
      dataset: "mnist" or "cifar10" (for synthetic data, the dataset it mimics).
      variant: "pretrained" (default; the statistics the ShrinkBench/akamaster
        pretrained weights were trained with: ImageNet's for CIFAR-10) or
        "shrinkbench" (ShrinkBench's CIFAR-10 loader: mean (0.491, 0.482, 0.447),
        std (0.247, 0.243, 0.262)). The two differ for CIFAR-10 only.

    Returns:
      The `Normalization` (mean, std), per channel.
    """
    try:
        return NORMALIZATIONS[(dataset, variant)]
    except KeyError:
        raise ValueError(
            f"No normalization for dataset={dataset!r}, variant={variant!r}; known: "
            f"{sorted(NORMALIZATIONS)}.") from None


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """Maps uint8 pixels to float32 (x / 255 - mean) / std, per channel.

    Args:
      images: (..., C) uint8 (or values in [0, 255]).
      mean: C (or 1) channel means of pixels in [0, 1].
      std: C (or 1) channel standard deviations.

    Returns:
      float32 array of the same shape.
    """
    num_channels = images.shape[-1]
    for what, value in (("mean", mean), ("std", std)):
        value = jnp.asarray(value)
        if value.ndim > 1 or value.size not in (1, num_channels):
            raise ValueError(f"{what} has {value.size} values; images have "
                             f"{num_channels} channels.")
    return _normalize(images, mean, std)


@jax.jit
def _normalize(images, mean, std):
    scaled = images.astype(jnp.float32) / 255.0
    return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment_cifar(rng: jax.Array, images: jax.Array) -> jax.Array:
    """CIFAR training augmentation: random 32x32 crop of the 4-padded image + flip.

    Each example gets its own crop offset (uniform in [0, 8]^2 in the zero-padded
    image, i.e. a shift by at most 4 pixels) and a horizontal flip with
    probability 1/2 (torchvision's RandomCrop(32, padding=4) and
    RandomHorizontalFlip). Padding is 0, which is black for uint8 input; apply it
    before `normalize` to match torchvision.

    Args:
      rng: a PRNG key.
      images: (N, H, W, C), uint8 or float.

    Returns:
      Augmented images, same shape and dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_cifar expects (N, H, W, C) images, got shape {images.shape}.")
    return _augment_cifar(rng, images)


@jax.jit
def _augment_cifar(rng, images):
    num, height, width, channels = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    offsets = jax.random.randint(crop_rng, (num, 2), 0, 2 * CIFAR_PAD + 1)
    padded = jnp.pad(images, ((0, 0), (CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0)))

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_rng, 0.5, (num,))
    return jnp.where(flip[:, None, None, None], cropped[:, :, ::-1], cropped)
