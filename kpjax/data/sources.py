"""The original downloads: what they are, where a user's copy is looked for,
how a missing one is fetched (TFDS's download manager, no TensorFlow) and
verified (sha256; a differing file is used with an `UnverifiedDataWarning`).

May import: numpy, tensorflow_datasets (download only).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import urllib.parse
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

_log = logging.getLogger(__name__)
DATASET_NAMES = ("mnist", "cifar10", "synthetic", "imagefolder")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
NUM_CLASSES = 10


class Dataset(NamedTuple):
    """Train and test splits as host arrays.

    Attributes:
      name: "mnist", "cifar10", "synthetic" or "imagefolder".
      train_images: uint8 (N, H, W, C).
      train_labels: int32 (N,), values in [0, num_classes).
      test_images: uint8 (M, H, W, C).
      test_labels: int32 (M,).
      num_classes: number of classes.
      source: which files the arrays came from, when that is not the
        dataset's original (an image folder: its path and sha256).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str = ""


class DataNotFoundError(FileNotFoundError):
    """The requested dataset's files are not available on this machine."""


class UnverifiedDataWarning(UserWarning):
    """A data file's sha256 differs from the original's; it is used anyway."""


class _Original(NamedTuple):
    """An original download: where it lives and its archive checksum."""

    filename: str
    url: str
    size: int
    sha256: str


# The original MNIST downloads (TFDS's mirror of yann.lecun.com; same bytes).
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_MNIST_ORIGINALS = {
    "train_images": _Original(
        "train-images-idx3-ubyte.gz", _MNIST_URL + "train-images-idx3-ubyte.gz",
        9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train_labels": _Original(
        "train-labels-idx1-ubyte.gz", _MNIST_URL + "train-labels-idx1-ubyte.gz",
        28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "test_images": _Original(
        "t10k-images-idx3-ubyte.gz", _MNIST_URL + "t10k-images-idx3-ubyte.gz",
        1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "test_labels": _Original(
        "t10k-labels-idx1-ubyte.gz", _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
# MNIST is verified on the uncompressed IDX bytes: they are the same for the
# original downloads, the shipped files (recompressed) and unpacked copies.
_MNIST_IDX_SHA256 = {
    "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_CIFAR10_BINARY = _Original(
    "cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
_CIFAR10_PYTHON = _Original(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    170498071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
# The shapes the MNIST files must declare: checked on the IDX header, before
# the rest of a gzipped file is inflated.
_MNIST_SHAPES = {"train_images": (60000, 28, 28), "train_labels": (60000,),
                 "test_images": (10000, 28, 28), "test_labels": (10000,)}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
# Uncompressed bytes the CIFAR-10 tars may hold (the originals: 185 MB), and
# the size of one member of the python archive (31 MB); beyond that, an
# archive is refused while it is being read (a gzip bomb never inflates).
_CIFAR_TAR_BUDGET = 256 << 20
_CIFAR_PICKLE_BUDGET = 40 << 20
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_SHAPE_CHW = (3, 32, 32)


# ----------------------------------------------------------------------------
# Public entry point.


def _not_found(name: str, data_dir, filenames: list[str], note: str) -> DataNotFoundError:
    where = f"in data_dir={str(data_dir)!r}" if data_dir is not None else "(no data_dir given)"
    return DataNotFoundError(
        f"No {name} data found {where}. Provide it one of these ways:\n"
        f"  1. data_dir=<a directory holding the original downloads: "
        f"{', '.join(filenames)} {note}> (flag --data_dir);\n"
        f"  2. download=True on a machine with internet (flag --download): "
        f"TFDS's download manager fetches and caches the originals;\n"
        f"  3. name='synthetic' (flag --data=synthetic) for random images of the "
        f"right shape with a learnable signal, for smoke runs.")


def _download(originals: list[_Original], data_dir) -> dict[str, Path]:
    """Fetches original archives with TFDS's download manager (cached, checksummed).

    Returns:
      {original filename: local path of the downloaded file}.
    """
    # Imported here: TFDS is only needed for downloading and costs import time.
    import tensorflow_datasets as tfds

    if data_dir is None:
        download_dir = Path(tfds.core.constants.DATA_DIR) / "downloads"
    else:
        download_dir = Path(data_dir)
    url_infos = {
        orig.url: tfds.download.checksums.UrlInfo(
            size=orig.size, checksum=orig.sha256, filename=orig.filename)
        for orig in originals}
    _check_reachable(originals[0].url, download_dir)
    _log.info("downloading %s into %s (TFDS's download manager)",
              ", ".join(o.filename for o in originals), download_dir)
    manager = tfds.download.DownloadManager(
        download_dir=download_dir, url_infos=url_infos,
        force_checksums_validation=True)
    try:
        paths = manager.download({orig.filename: orig.url for orig in originals})
    except Exception as e:  # network and checksum failures come in many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataNotFoundError(
            f"download of {', '.join(o.filename for o in originals)} into {download_dir} "
            f"failed ({type(e).__name__}: {first})") from None
    return {filename: Path(path) for filename, path in paths.items()}


def _check_reachable(url: str, download_dir: Path, timeout: float = 5.0) -> None:
    """One connection attempt to the download host, so that a machine without
    network fails at once with one line instead of minutes of retries."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise DataNotFoundError(
            f"--download: cannot reach {host} ({type(e).__name__}: {e}); no network here? "
            f"Downloads would go to {download_dir}. Copy the original files into a folder "
            "and pass it as --data_dir instead.") from None


def _verify_sha256(content: bytes, expected: str, what: str) -> None:
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected:
        warnings.warn(
            f"{what}: sha256 {digest} differs from the original's {expected}; "
            f"using it anyway.", UnverifiedDataWarning, stacklevel=4)


# ----------------------------------------------------------------------------
# MNIST: IDX files.

_IDX_UINT8 = 0x08


def _checked_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array of labels, got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers, got {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"{what}: labels outside [0, {NUM_CLASSES}) "
                         f"(min {labels.min()}, max {labels.max()}).")
    return labels.astype(np.int32)


# ----------------------------------------------------------------------------
# CIFAR-10: the binary and the python archives.
