"""MNIST from its IDX files: the copy shipped in `kpjax/mnist_data/` (the
default: no network, no flags), a user's originals, or a download.

May import: numpy, kpjax.data.sources.
"""

from __future__ import annotations

import importlib.resources
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kpjax.data.sources import (Dataset, NUM_CLASSES, _IDX_UINT8, _MNIST_IDX_SHA256, _MNIST_ORIGINALS, _MNIST_SHAPES, _checked_labels, _download, _not_found, _verify_sha256)


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
