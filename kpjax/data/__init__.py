"""Data: datasets as uint8 NumPy arrays, deterministic batches, and jitted
preprocessing.

  load_dataset, check_available          MNIST (shipped), CIFAR-10, synthetic, image folders (datasets.py)
  batches, batch_stream                  deterministic host batches, resumable by step (batches.py)
  normalize, augment_cifar               jitted per-batch preprocessing (transforms.py)

Submodules: `mnist`, `cifar10`, `synthetic`, `sources` (the originals,
downloads, checksums), `image_folder` and `archives` (untrusted folders and
archives of images), `shifts` (input corruptions).

May import: kpjax.data.
"""

from kpjax.data.batches import (batch_stream, batches, class_balanced_sample, epoch_permutation,
                                num_batches)
from kpjax.data.cifar10 import restricted_unpickle
from kpjax.data.datasets import check_available, image_folder_spec, image_normalization, load_dataset
from kpjax.data.mnist import parse_idx
from kpjax.data.sources import (CIFAR10_CLASSES, DATASET_NAMES, NUM_CLASSES, DataNotFoundError,
                                Dataset, UnverifiedDataWarning)
from kpjax.data.synthetic import synthetic_dataset
from kpjax.data.transforms import (CIFAR_PAD, NORMALIZATIONS, Normalization, augment_cifar,
                                   get_normalization, normalize)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR_PAD", "DATASET_NAMES", "DataNotFoundError", "Dataset", "NORMALIZATIONS",
    "NUM_CLASSES", "Normalization", "UnverifiedDataWarning", "augment_cifar", "batch_stream",
    "batches", "check_available", "class_balanced_sample", "epoch_permutation", "get_normalization", "image_folder_spec",
    "image_normalization", "load_dataset", "normalize", "num_batches", "parse_idx",
    "restricted_unpickle", "synthetic_dataset",
]
