"""CIFAR-10 from its original archives (binary or python; the pickles read by
a restricted unpickler), or from an image folder of CIFAR-10's classes.

May import: numpy, kpjax.data.archives, kpjax.data.image_folder, kpjax.data.sources.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from kpjax.data import archives, image_folder
from kpjax.data.sources import (CIFAR10_CLASSES, Dataset, NUM_CLASSES, _CIFAR10_BINARY, _CIFAR10_PYTHON, _CIFAR_PICKLE_BUDGET, _CIFAR_SHAPE_CHW, _CIFAR_TAR_BUDGET, _CIFAR_TEST_BATCH, _CIFAR_TRAIN_BATCHES, _Original, _checked_labels, _download, _not_found, _verify_sha256)

try:  # NumPy >= 2 moved the array internals to numpy._core.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


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
