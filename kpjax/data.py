"""Datasets as uint8 NumPy arrays, deterministic batches, and jitted preprocessing.

Sources (see `load_dataset`):
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
    of JPEG/PNG images (`kpjax.image_folder`); CIFAR-10 also loads from one
    whose classes are CIFAR-10's (e.g. a JPEG re-encoding).

Images stay uint8 NHWC on the host; `normalize` and `augment_cifar` are
jitted JAX functions applied to each batch on the device.

May import: jax, numpy, tensorflow_datasets (download only), kpjax.archives,
kpjax.image_folder.
"""

from __future__ import annotations

import functools
import hashlib
import gzip
import importlib.resources
import io
import itertools
import math
import os
import logging
import pickle
import socket
import tarfile
import urllib.parse
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import archives, image_folder

try:  # NumPy >= 2 moved the array internals to numpy._core.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_log = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "cifar10", "synthetic", "imagefolder")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
NUM_CLASSES = 10
CIFAR_PAD = 4


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


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    **synthetic_options,
) -> Dataset:
    """Loads a dataset as uint8 NHWC images and int32 labels.

    Args:
      name: "mnist", "cifar10", "synthetic" or "imagefolder".
      data_dir: for "imagefolder", the folder or archive (`kpjax.image_folder`);
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


def _load_mnist(data_dir, download: bool) -> Dataset:
    if data_dir is None and not download:
        package_dir = importlib.resources.files("kpjax") / "mnist_data"
        return _mnist_from_idx({
            key: (f"kpjax/mnist_data/{orig.filename}",
                  (package_dir / orig.filename).read_bytes())
            for key, orig in _MNIST_ORIGINALS.items()})
    paths = {}
    missing = []
    for key, orig in _MNIST_ORIGINALS.items():
        found = _find_mnist_file(data_dir, orig.filename) if data_dir is not None else None
        if found is None:
            missing.append(key)
        else:
            paths[key] = found
    if missing and download:
        fetched = _download([_MNIST_ORIGINALS[key] for key in missing], data_dir)
        paths.update({key: fetched[_MNIST_ORIGINALS[key].filename] for key in missing})
    elif missing:
        raise _not_found(
            "mnist", data_dir,
            [_MNIST_ORIGINALS[key].filename for key in missing],
            "(gzipped or not)")
    return _mnist_from_idx(
        {key: (str(path), Path(path).read_bytes()) for key, path in paths.items()})


def _find_mnist_file(data_dir, gz_name: str) -> Path | None:
    for candidate in (gz_name, gz_name.removesuffix(".gz")):
        path = Path(data_dir) / candidate
        if path.is_file():
            return path
    return None


def _load_cifar10(data_dir, download: bool) -> Dataset:
    if image_folder.is_image_folder(data_dir):
        folder = image_folder.load(data_dir)
        if folder.class_names != CIFAR10_CLASSES:
            raise ValueError(f"{data_dir}: an image folder with classes {list(folder.class_names)}, "
                             f"not CIFAR-10's {list(CIFAR10_CLASSES)}; use --data=imagefolder")
        if folder.train_images.shape[1:] != (32, 32, 3):
            raise ValueError(f"{data_dir}: images of shape {folder.train_images.shape[1:]}, "
                             "CIFAR-10's are (32, 32, 3)")
        return Dataset("cifar10", folder.train_images, folder.train_labels, folder.test_images,
                       folder.test_labels, NUM_CLASSES, f"image folder {folder.source}")
    if data_dir is not None:
        for original, read in ((_CIFAR10_BINARY, _read_cifar10_binary),
                               (_CIFAR10_PYTHON, _read_cifar10_python)):
            path = Path(data_dir) / original.filename
            if path.is_file():
                return read(path)
    if not download:
        raise _not_found("cifar10", data_dir,
                         [_CIFAR10_BINARY.filename, _CIFAR10_PYTHON.filename], "(either)")
    fetched = _download([_CIFAR10_BINARY], data_dir)
    return _read_cifar10_binary(fetched[_CIFAR10_BINARY.filename])


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


def parse_idx(content: bytes, what: str = "IDX data",
              expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parses an IDX file (the MNIST format) holding unsigned bytes.

    Layout: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions
    d, then d big-endian uint32 sizes, then the row-major data. Gzipped content
    (magic 1f 8b) is decompressed first.

    Args:
      content: the file's bytes, gzipped or not.
      what: a name for the data in error messages (e.g. the file's path).
      expected_shape: when given, the header must declare this example shape
        and at most this many examples, checked before a gzipped body is
        inflated (which is then bounded by the declared size).

    Returns:
      A uint8 array of the stored shape.

    Raises:
      ValueError: corrupt or truncated content, or a type other than uint8.
    """
    if expected_shape is not None:
        content = _idx_bytes(content, what, expected_shape)
    else:
        content = _gunzip_if_gzipped(content, what)
    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise ValueError(
            f"{what}: not an IDX file (magic number {content[:4].hex() or 'missing'}; "
            f"expected 0000 then type and number of dimensions).")
    dtype_code, ndim = content[2], content[3]
    if dtype_code != _IDX_UINT8:
        raise ValueError(
            f"{what}: IDX data type 0x{dtype_code:02x} is not supported; expected 0x08 (uint8).")
    if ndim == 0:
        raise ValueError(f"{what}: IDX header declares 0 dimensions.")
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise ValueError(f"{what}: truncated IDX header ({len(content)} bytes, "
                         f"{header_size} needed for {ndim} dimensions).")
    shape = tuple(int(s) for s in np.frombuffer(content, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    found = len(content) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise ValueError(f"{what}: IDX data {problem}: shape {shape} needs {expected} "
                         f"bytes, found {found}.")
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape).copy()


def _idx_bytes(content: bytes, what: str, expected_shape: tuple[int, ...]) -> bytes:
    """The IDX file's bytes, inflated if gzipped, after checking its header
    (read from the first inflated bytes) against `expected_shape`: the same
    example shape and at most as many examples (a subset is fine). Inflation
    is bounded by the size the declared shape needs."""
    header_size = 4 + 4 * len(expected_shape)
    declared = _idx_shape(_gunzip_if_gzipped(content, what, prefix=header_size), what)
    if (len(declared) != len(expected_shape) or declared[1:] != tuple(expected_shape[1:])
            or declared[0] > expected_shape[0]):
        raise ValueError(f"{what}: IDX header declares shape {declared}; expected at most "
                         f"{tuple(expected_shape)}.")
    return _gunzip_if_gzipped(content, what, limit=header_size + math.prod(declared))


def _idx_shape(header: bytes, what: str) -> tuple[int, ...]:
    if len(header) < 4 or header[:2] != b"\x00\x00":
        raise ValueError(f"{what}: not an IDX file (magic number {header[:4].hex() or 'missing'}).")
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return tuple(int(s) for s in np.frombuffer(header, ">u4", count=(len(header) - 4) // 4, offset=4))
    return tuple(int(s) for s in np.frombuffer(header, ">u4", count=ndim, offset=4))


def _gunzip_if_gzipped(content: bytes, what: str, limit: int = 1 << 30,
                       prefix: int | None = None) -> bytes:
    """`content` inflated if gzipped, streaming: never more than `limit` bytes
    (a gzip bomb is refused, not inflated); only the first `prefix` bytes
    when given (to read a header)."""
    if content[:2] != b"\x1f\x8b":
        return content[:prefix] if prefix is not None else content
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = inflater.decompress(content, (prefix if prefix is not None else limit) + 1)
    except zlib.error as e:
        raise ValueError(f"{what}: corrupt or truncated gzip data ({e}).") from e
    if prefix is not None:
        return out[:prefix]
    if len(out) > limit:
        raise ValueError(f"{what}: gzip data inflates beyond {limit:,} bytes, more than "
                         "the dataset's file can hold; refusing it.")
    if not inflater.eof:
        raise ValueError(f"{what}: corrupt or truncated gzip data (the stream ends early).")
    return out


def _mnist_from_idx(files: Mapping[str, tuple[str, bytes]]) -> Dataset:
    """Builds the MNIST Dataset from {key: (description, raw file bytes)}."""
    arrays = {}
    for key, (what, content) in files.items():
        content = _idx_bytes(content, what, _MNIST_SHAPES[key])
        _verify_sha256(content, _MNIST_IDX_SHA256[key], f"{what} (uncompressed)")
        arrays[key] = parse_idx(content, what)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        what = files[f"{split}_images"][0]
        if images.ndim != 3:
            raise ValueError(f"{what}: expected images of shape (N, H, W), got {images.shape}.")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"MNIST {split}: {len(images)} images but labels of shape "
                             f"{labels.shape}.")
    return Dataset(
        name="mnist",
        train_images=arrays["train_images"][..., None],
        train_labels=_checked_labels(arrays["train_labels"], "MNIST train labels"),
        test_images=arrays["test_images"][..., None],
        test_labels=_checked_labels(arrays["test_labels"], "MNIST test labels"),
        num_classes=NUM_CLASSES)


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


def _read_tar_members(path: Path, original: _Original, prefix: str, names: tuple[str, ...],
                      max_member: int = _CIFAR_PICKLE_BUDGET) -> dict[str, bytes]:
    """Reads named members of an original archive, verifying its sha256.

    The tar is streamed through a gzip decoder capped at `_CIFAR_TAR_BUDGET`
    bytes, and each member's declared size is checked against `max_member`
    before it is read: a bomb or a wrong file is refused without inflating it.
    """
    if path.stat().st_size > 2 * original.size:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, far more than the original "
                         f"{original.filename} ({original.size:,}); refusing it.")
    content = path.read_bytes()
    _verify_sha256(content, original.sha256, str(path))
    wanted = {prefix + n: n for n in names}
    found: dict[str, bytes] = {}
    try:
        stream = archives.LimitedReader(gzip.GzipFile(fileobj=io.BytesIO(content)), _CIFAR_TAR_BUDGET,
                                str(path))
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as archive:
            for member in archive:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                if member.size > max_member:
                    raise ValueError(
                        f"{path}: member {member.name} has {member.size:,} bytes, expected "
                        f"at most {max_member:,}; not the original archive.")
                found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated archive ({e}).") from e
    missing = [prefix + n for n in names if n not in found]
    if missing:
        raise ValueError(f"{path}: archive lacks {', '.join(missing)}.")
    return found


def _cifar_dataset(batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Dataset:
    """Assembles the Dataset from {batch name: (CHW-flat uint8 images, labels)}."""

    def split(names):
        images = np.concatenate([batches[n][0] for n in names])
        labels = np.concatenate([batches[n][1] for n in names])
        images = images.reshape((-1, *_CIFAR_SHAPE_CHW)).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), _checked_labels(labels, "CIFAR-10 labels")

    train_images, train_labels = split(_CIFAR_TRAIN_BATCHES)
    test_images, test_labels = split((_CIFAR_TEST_BATCH,))
    return Dataset("cifar10", train_images, train_labels, test_images, test_labels,
                   NUM_CLASSES)


def _read_cifar10_binary(path: Path) -> Dataset:
    """Reads `cifar-10-binary.tar.gz`: records of 1 label byte + 3072 CHW bytes."""
    names = tuple(n + ".bin" for n in (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH))
    record_size = 1 + int(np.prod(_CIFAR_SHAPE_CHW))
    raw = _read_tar_members(path, _CIFAR10_BINARY, "cifar-10-batches-bin/", names,
                            max_member=10000 * record_size)
    batches = {}
    for name, content in raw.items():
        if len(content) % record_size:
            raise ValueError(f"{path}: {name} has {len(content)} bytes, not a multiple of "
                             f"the {record_size}-byte record size (truncated?).")
        records = np.frombuffer(content, np.uint8).reshape(-1, record_size)
        batches[name.removesuffix(".bin")] = (records[:, 1:], records[:, 0])
    return _cifar_dataset(batches)


def _read_cifar10_python(path: Path) -> Dataset:
    """Reads `cifar-10-python.tar.gz`: pickled {b'data': (n, 3072), b'labels': [...]}."""
    names = (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH)
    raw = _read_tar_members(path, _CIFAR10_PYTHON, "cifar-10-batches-py/", names)
    batches = {}
    for name, content in raw.items():
        what = f"{path}: {name}"
        try:
            batch = restricted_unpickle(content)
        except Exception as e:  # Untrusted bytes: any failure means a corrupt file.
            raise ValueError(f"{what}: cannot unpickle ({e}).") from e
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"{what}: expected a dict with b'data' and b'labels', got {keys}.")
        data = batch[b"data"]
        labels = np.asarray(batch[b"labels"])
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != int(np.prod(_CIFAR_SHAPE_CHW)) or len(labels) != len(data)):
            raise ValueError(f"{what}: expected uint8 data of shape (n, 3072) and n labels, "
                             f"got data {getattr(data, 'shape', type(data))}, "
                             f"{len(labels)} labels.")
        batches[name] = (data, labels)
    return _cifar_dataset(batches)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only builtin containers/scalars and NumPy arrays.

    Pickled ndarrays call numpy's `_reconstruct`, `ndarray` and `dtype`; every
    other global (os.system, builtins.eval, ...) is refused, so loading an
    untrusted pickle cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only NumPy arrays, lists, "
                f"dicts, strings and numbers are allowed.") from None


def restricted_unpickle(content: bytes):
    """Unpickles data that may hold only builtin values and NumPy arrays.

    Python 2 strings come back as bytes (as in the original CIFAR-10 pickles).

    Args:
      content: the pickle's bytes.

    Returns:
      The unpickled object.

    Raises:
      pickle.UnpicklingError: the pickle references any other global.
    """
    return _ArrayUnpickler(io.BytesIO(content), encoding="bytes").load()


# ----------------------------------------------------------------------------
# Synthetic data.


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
