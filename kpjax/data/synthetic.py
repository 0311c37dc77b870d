"""Synthetic data for smoke runs: random images with a class-dependent mean.

May import: numpy, kpjax.data.sources.
"""

from __future__ import annotations


import numpy as np

from kpjax.data.sources import (Dataset, NUM_CLASSES)

_SYNTHETIC_CHUNK = 1024


def synthetic_dataset(
    image_shape: tuple[int, int, int] = (28, 28, 1),
    num_train: int = 1024,
    num_test: int = 256,
    num_classes: int = NUM_CLASSES,
    noise: int = 96,
    seed: int = 0,
) -> Dataset:
    """Random uint8 images whose mean depends on the class: learnable, fast.

    Each class c has a template T_c with integer pixels uniform in [0, 255]; an
    image of class c is clip(T_c + ε, 0, 255) with integer ε uniform in
    [-noise, noise] per pixel (integer arithmetic: a CIFAR-sized set takes a few
    seconds). Labels are balanced (k mod num_classes, shuffled).

    Args:
      image_shape: (H, W, C), e.g. (28, 28, 1) MNIST-like or (32, 32, 3) CIFAR-like.
      num_train: number of training examples.
      num_test: number of test examples.
      num_classes: number of classes.
      noise: amplitude of the pixel noise, in uint8 units (0 to 255).
      seed: the same seed gives the same dataset.

    Returns:
      The `Dataset`, named "synthetic".
    """
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}.")
    if num_train < 1 or num_test < 1 or num_classes < 2 or not 0 <= noise <= 255:
        raise ValueError(
            f"Need num_train, num_test >= 1, num_classes >= 2, 0 <= noise <= 255; got "
            f"{num_train}, {num_test}, {num_classes}, {noise}.")
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(num_classes, *image_shape), dtype=np.int16)

    def split(size):
        labels = rng.permutation(np.arange(size) % num_classes).astype(np.int32)
        images = np.empty((size, *image_shape), np.uint8)
        # In chunks: int16 temporaries of a whole split would be 4x the images.
        for start in range(0, size, _SYNTHETIC_CHUNK):
            chunk = labels[start:start + _SYNTHETIC_CHUNK]
            values = templates[chunk] + rng.integers(
                -noise, noise + 1, size=(len(chunk), *image_shape), dtype=np.int16)
            images[start:start + len(chunk)] = np.clip(values, 0, 255)
        return images, labels

    train_images, train_labels = split(num_train)
    test_images, test_labels = split(num_test)
    return Dataset("synthetic", train_images, train_labels, test_images, test_labels,
                   num_classes)


# ----------------------------------------------------------------------------
# Batching (host, NumPy).
