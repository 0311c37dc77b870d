"""`load_dataset`: datasets as uint8 NHWC NumPy arrays with int32 labels.

Sources:
  * MNIST shipped inside the package (`kpjax/mnist_data/`, original IDX files,
    CC BY-SA 3.0, Y. LeCun, C. Cortes, C. J. C. Burges): the default, no
    network, no flags.
  * The original archives a user downloaded, read from `data_dir`: the four
    MNIST IDX files, CIFAR-10 `cifar-10-binary.tar.gz` or
    `cifar-10-python.tar.gz`. Files are checked by sha256; a file whose hash
    differs is used anyway, with an `UnverifiedDataWarning`.
  * `download=True`: TFDS's download manager fetches, checksums and caches the
    original archives (no TensorFlow needed), then the same parsers read them.
  * `"synthetic"`: random images with a class-dependent mean, for smoke runs.
  * `"imagefolder"`: any `train/<class>/*`, `test/<class>/*` folder or archive
    of JPEG/PNG images (`kpjax.data.image_folder`); CIFAR-10 also loads from one
    whose classes are CIFAR-10's (e.g. a JPEG re-encoding).

May import: numpy, kpjax.data.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from kpjax.data import image_folder
from kpjax.data.cifar10 import (_load_cifar10)
from kpjax.data.mnist import (_find_mnist_file, _load_mnist)
from kpjax.data.sources import (DATASET_NAMES, DataNotFoundError, Dataset, _CIFAR10_BINARY, _CIFAR10_PYTHON, _MNIST_ORIGINALS, _not_found)
from kpjax.data.synthetic import synthetic_dataset
from kpjax.data.transforms import Normalization


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    **synthetic_options,
) -> Dataset:
    """Loads a dataset as uint8 NHWC images and int32 labels.

    Args:
      name: "mnist", "cifar10", "synthetic" or "imagefolder".
      data_dir: for "imagefolder", the folder or archive (`kpjax.data.image_folder`);
        for CIFAR-10, also such an image folder with CIFAR-10's class names.
        Otherwise a directory holding the original downloads: for MNIST the four
        IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
        `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`), for
        CIFAR-10 `cifar-10-binary.tar.gz` or `cifar-10-python.tar.gz`. With
        `download=True` it is also where missing archives are downloaded to.
        MNIST without `data_dir` (and without `download`) is read from the copy
        shipped in the package.
      download: fetch missing original archives with TFDS's download manager
        (needs internet), into `data_dir` or else TFDS's `downloads` cache.
      **synthetic_options: keyword arguments of `synthetic_dataset`; only for
        name="synthetic".

    Returns:
      The `Dataset`.

    Raises:
      ValueError: unknown name, options for the wrong source, corrupt files.
      DataNotFoundError: the files are not there; the message lists the ways to
        provide them.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}.")
    if name == "synthetic":
        if data_dir is not None or download:
            raise ValueError("The synthetic dataset takes no data_dir and no download.")
        return synthetic_dataset(**synthetic_options)
    if synthetic_options:
        raise ValueError(
            f"Options {sorted(synthetic_options)} only apply to name='synthetic'.")
    try:
        if name == "imagefolder":
            if download:
                raise ValueError("An image folder is read from data_dir; there is nothing to download.")
            check_available(name, data_dir)
            folder = image_folder.load(data_dir)
            return Dataset("imagefolder", folder.train_images, folder.train_labels,
                           folder.test_images, folder.test_labels, len(folder.class_names),
                           f"image folder {folder.source}")
        if name == "mnist":
            return _load_mnist(data_dir, download)
        return _load_cifar10(data_dir, download)
    except MemoryError:
        raise ValueError(f"Not enough memory to load {name}.") from None


def check_available(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = False
) -> None:
    """Raises what `load_dataset` would for missing files, without reading them.

    For validating a configuration before any training: an unknown name is a
    ValueError, absent originals (and no `download`) a `DataNotFoundError`
    listing the ways to provide them. Synthetic data is always available.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}.")
    if name == "imagefolder":
        if not image_folder.is_image_folder(data_dir):
            raise _not_image_folder(data_dir)
        return
    if name == "synthetic" or download or (name == "mnist" and data_dir is None):
        return
    if name == "mnist":
        missing = [o.filename for o in _MNIST_ORIGINALS.values()
                   if _find_mnist_file(data_dir, o.filename) is None]
        if missing:
            raise _not_found("mnist", data_dir, missing, "(gzipped or not)")
        return
    if data_dir is None or not (image_folder.is_image_folder(data_dir) or any(
            (Path(data_dir) / o.filename).is_file() for o in (_CIFAR10_BINARY, _CIFAR10_PYTHON))):
        raise _not_found("cifar10", data_dir,
                         [_CIFAR10_BINARY.filename, _CIFAR10_PYTHON.filename],
                         "(either), or an image folder / archive of CIFAR-10's classes")


def _not_image_folder(data_dir) -> DataNotFoundError:
    return DataNotFoundError(
        f"--data=imagefolder needs --data_dir=<a folder with train/<class>/ and test/<class>/ "
        f"JPEG or PNG images, or a .tar, .tar.gz, .tgz or .zip of one>; got {data_dir!r}")


def image_folder_spec(data_dir) -> tuple[tuple[int, int, int], int]:
    """(image shape (H, W, C), number of classes) of an image-folder dataset, for
    building a model before training; decodes (and caches) it on first use."""
    if not image_folder.is_image_folder(data_dir):
        raise _not_image_folder(data_dir)
    info = os.stat(data_dir)
    return _image_folder_spec(os.path.abspath(os.fspath(data_dir)), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=8)
def _image_folder_spec(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, int, int], int]:
    folder = image_folder.load(path)  # (mtime, size) key the memo: a changed file is read again
    return tuple(folder.train_images.shape[1:]), len(folder.class_names)


def image_normalization(images: np.ndarray) -> Normalization:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (for an image
    folder, which has no published constants)."""
    x = images.reshape(-1, images.shape[-1])
    # Sums over row chunks: a float64 copy of CIFAR-sized data would be 1.2 GB.
    total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), 1 << 20):
        chunk = x[start : start + (1 << 20)].astype(np.float64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    mean = total / len(x) / 255.0
    std = np.sqrt(np.maximum(squares / len(x) / 255.0**2 - mean**2, 1e-12))
    return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))
