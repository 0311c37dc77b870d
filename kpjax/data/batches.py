"""Deterministic batches on the host: the order of an epoch is fixed by
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted
one would (`batch_stream(start_step=...)`).

May import: numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng((seed, epoch)).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches `batches` yields for `num_examples` examples."""
    _check_batch_size(batch_size)
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields one epoch of (images, labels) batches, on the host.

    With shuffle, the order is `epoch_permutation(len(images), seed, epoch)`:
    the same (seed, epoch) gives the same batches, and each epoch visits every
    example once. As in PyTorch's DataLoader, the last batch may be smaller
    unless drop_remainder (a smaller batch costs one extra jit compilation).

    Args:
      images: (N, ...) array, typically uint8 NHWC.
      labels: (N,) array.
      batch_size: examples per batch.
      seed: shuffling seed.
      epoch: epoch index; each epoch gets its own order.
      shuffle: if False, examples come in stored order (seed/epoch unused).
      drop_remainder: drop the last batch if it is smaller than batch_size.

    Yields:
      (images[idx], labels[idx]) for consecutive index blocks idx.
    """
    _check_batch_size(batch_size)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    num_examples = len(images)
    order = (epoch_permutation(num_examples, seed=seed, epoch=epoch) if shuffle
             else None)
    for b in range(num_batches(num_examples, batch_size, drop_remainder=drop_remainder)):
        if order is None:
            block = slice(b * batch_size, (b + 1) * batch_size)
        else:
            block = order[b * batch_size:(b + 1) * batch_size]
        yield images[block], labels[block]


def batch_stream(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Training batches over consecutive epochs, from global step `start_step` on.

    Step s is batch s mod B of epoch s // B (B batches an epoch), so a run
    resumed at step s sees exactly the batches an uninterrupted run would.
    Never ends; take what you need with `itertools.islice`.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    per_epoch = num_batches(len(images), batch_size, drop_remainder=drop_remainder)
    if per_epoch == 0:
        raise ValueError(f"{len(images)} examples make no batch of {batch_size}.")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        epoch_batches = batches(images, labels, batch_size, seed=seed, epoch=epoch,
                                drop_remainder=drop_remainder)
        yield from itertools.islice(epoch_batches, skip, None)
        epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------
# Normalization and augmentation (JAX, jitted).


def class_balanced_sample(images: np.ndarray, labels: np.ndarray, per_class: int, *,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` examples of every class, the first of each in a seeded
    shuffle (GraSP's `GraSP_fetch_data`, which takes them from a shuffled
    loader), ordered by position in that shuffle.

    Raises:
      ValueError: per_class < 1, or a class with fewer than `per_class` examples.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < per_class:
        raise ValueError(f"class {classes[np.argmin(counts)]} has {counts.min()} examples, "
                         f"fewer than per_class={per_class}")
    shuffled = labels[order]
    # The rank of each example within its class, in shuffled order.
    rank = np.empty(len(order), np.int64)
    for c in classes:
        where = np.flatnonzero(shuffled == c)
        rank[where] = np.arange(len(where))
    chosen = order[rank < per_class]
    return images[chosen], labels[chosen]
