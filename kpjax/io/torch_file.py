"""Reading PyTorch checkpoint files without PyTorch: `load_torch_file`.

Reading (`load_torch_file`) understands both formats `torch.save` writes and
executes nothing from the file: a restricted unpickler rebuilds only tensors,
their storages and `collections.OrderedDict`, and refuses every other global
(`os.system`, arbitrary classes, ...) with `UnsafeCheckpointError`.

**The legacy format** (`torch.save(..., _use_new_zipfile_serialization=False)`
and every file written before torch 1.6, e.g. ShrinkBench's `mnistnet.pt` and
akamaster's `resnet20-12fca82f.th`) is a plain byte stream:

1. five pickles, one after the other:
   the magic number 0x1950a86a20f9469cfc6c; the protocol version 1001; a
   system-info dict (`little_endian`, `type_sizes`; informational); the saved
   object; the list of storage keys, in the order their data follows;
2. for each key of that list, the storage's element count as a little-endian
   int64, then its elements, raw and little-endian.

Inside the object pickle a tensor is a call
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
backward_hooks)` (`_rebuild_tensor(storage, offset, size, stride)` in files
from torch < 0.4), with offset and strides counted in elements. The storage
argument is a persistent id, the tuple
`('storage', torch.<T>Storage, key, location, numel, view)` where the class
names the element type (`FloatStorage` = float32, `LongStorage` = int64, ...),
location is the device it was saved from (ignored: everything loads on the
host) and `view` is None or `(view_key, offset, size)` for a slice of the
storage `key`. Tensors sharing a storage share its key.

**The zip format** (torch >= 1.6 default) is a zip archive with one top-level
folder (its name is arbitrary, usually `archive`) holding `data.pkl` (the
saved object, pickled as above but with 5-tuple persistent ids
`('storage', torch.<T>Storage, key, location, numel)`), one record
`data/<key>` per storage with its raw bytes, and optionally `byteorder`
(`little` or `big`, the byte order of those raw bytes; little when absent)
and `version`.

Mapping (`state_dict_to_variables`, `import_torch_checkpoint`) turns a
PyTorch state dict into Flax variables shaped like a template (the caller's
model, e.g. `jax.eval_shape` of its `init`) whose submodule names mirror the

May import: numpy, kpjax.io.torch_pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
import io
import os
from typing import Any
import zipfile

import numpy as np

from kpjax.io.torch_pickle import (DEFAULT_MAX_ELEMENTS, LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                                   MAX_PICKLE_BYTES, TorchCheckpointError, _describe,
                                   _native_elements, _Storage, _StorageRef, _unpickle)


class _Budget:
    """Elements of all storages together, refused beyond `limit` before any
    is allocated."""

    def __init__(self, path: str, limit: int):
        self.path, self.limit, self.used = path, limit, 0

    def take(self, ref: _StorageRef) -> None:
        self.used += ref.numel
        if self.used > self.limit:
            raise TorchCheckpointError(
                f"{self.path}: refusing storages of more than {self.limit:,} elements in all "
                f"(storage {_describe(ref.key)} brings the total to {self.used:,}); "
                "raise max_elements if the checkpoint is really that large")


def _load_legacy(data: bytes, path: str, budget: _Budget, layout_only: bool = False) -> Any:
    stream = io.BytesIO(data)
    magic = _unpickle(stream, path, "magic number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError(
            f"{path}: not a PyTorch checkpoint: neither a zip archive nor a legacy "
            f"torch.save stream (magic number {_describe(magic)}, expected "
            f"{LEGACY_MAGIC_NUMBER:#x})")
    version = _unpickle(stream, path, "protocol version")
    if version != LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(
            f"{path}: unsupported legacy protocol version {_describe(version)}, "
            f"expected {LEGACY_PROTOCOL_VERSION}")
    if not isinstance(_unpickle(stream, path, "system info"), dict):
        raise TorchCheckpointError(f"{path}: the system-info record is not a dict")

    # The storages' raw bytes follow the object pickle, so the object is read
    # twice: once to learn which storages it references (dtype, size), then,
    # with their bytes located, to build the tensors.
    object_start = stream.tell()
    refs: dict[str, _StorageRef] = {}

    def record_storage(ref: _StorageRef) -> _Storage:
        if ref.key not in refs:
            budget.take(ref)
        known = refs.setdefault(ref.key, ref)
        if (known.dtype, known.numel) != (ref.dtype, ref.numel):
            raise TorchCheckpointError(
                f"{path}: storage {ref.key!r} referenced as both {known.numel} x "
                f"{known.dtype} and {ref.numel} x {ref.dtype}")
        return _Storage(None, ref.dtype, ref.numel)

    layout = _unpickle(stream, path, "saved object", record_storage)
    keys = _unpickle(stream, path, "storage key list")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise TorchCheckpointError(f"{path}: the storage key record is not a list of str")
    if sorted(keys) != sorted(refs):
        raise TorchCheckpointError(
            f"{path}: the storage key list ({len(keys)} keys) does not match the "
            f"{len(refs)} storages the saved object references")

    elements: dict[str, np.ndarray] = {}
    offset = stream.tell()
    if layout_only:
        return layout
    for i, key in enumerate(keys):
        ref = refs[key]
        nbytes = ref.numel * ref.dtype.itemsize
        what = f"storage {i + 1}/{len(keys)} (key {key!r}, {ref.numel} x {ref.dtype})"
        if offset + 8 + nbytes > len(data):
            raise TorchCheckpointError(
                f"{path}: truncated: {what} needs {8 + nbytes} bytes at byte "
                f"{offset}, the file has {max(len(data) - offset, 0)} left")
        count = int.from_bytes(data[offset:offset + 8], "little", signed=True)
        if count != ref.numel:
            raise TorchCheckpointError(
                f"{path}: corrupt: {what} has element count {count} in its header "
                f"at byte {offset}, expected {ref.numel}")
        elements[key] = _native_elements(data, ref.dtype, ref.numel, offset + 8, "little")
        offset += 8 + nbytes

    stream.seek(object_start)
    return _unpickle(
        stream, path, "saved object",
        lambda ref: _Storage(elements[ref.key], ref.dtype, ref.numel))


def _load_zip(archive: zipfile.ZipFile, path: str, budget: _Budget,
              layout_only: bool = False) -> Any:
    pickles = [n for n in archive.namelist()
               if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise TorchCheckpointError(
            f"{path}: a zip checkpoint must hold exactly one <folder>/data.pkl, "
            f"found {pickles or 'none'}")
    prefix = pickles[0][:-len("data.pkl")]
    names = set(archive.namelist())
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise TorchCheckpointError(
                f"{path}: byteorder record says {byteorder!r}, expected 'little' or 'big'")
    cache: dict[str, _Storage] = {}

    def read_storage(ref: _StorageRef) -> _Storage:
        if ref.key in cache:
            storage = cache[ref.key]
            if (storage.dtype, storage.numel) != (ref.dtype, ref.numel):
                raise TorchCheckpointError(
                    f"{path}: storage {ref.key!r} referenced as both {storage.numel} x "
                    f"{storage.dtype} and {ref.numel} x {ref.dtype}")
            return storage
        record = f"{prefix}data/{ref.key}"
        if record not in names:
            raise TorchCheckpointError(f"{path}: missing storage record {_describe(record)}")
        budget.take(ref)
        declared = archive.getinfo(record).file_size
        if declared != ref.numel * ref.dtype.itemsize:  # checked before inflating
            raise TorchCheckpointError(
                f"{path}: storage record {_describe(record)} declares {declared:,} bytes, "
                f"expected {ref.numel} x {ref.dtype} = {ref.numel * ref.dtype.itemsize:,}")
        if layout_only:
            cache[ref.key] = _Storage(None, ref.dtype, ref.numel)
            return cache[ref.key]
        raw = archive.read(record)
        if len(raw) != ref.numel * ref.dtype.itemsize:
            raise TorchCheckpointError(
                f"{path}: storage record {record!r} has {len(raw)} bytes, expected "
                f"{ref.numel} x {ref.dtype} = {ref.numel * ref.dtype.itemsize}")
        cache[ref.key] = _Storage(
            _native_elements(raw, ref.dtype, ref.numel, 0, byteorder), ref.dtype, ref.numel)
        return cache[ref.key]

    if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
        raise TorchCheckpointError(
            f"{path}: refusing a data.pkl of {archive.getinfo(pickles[0]).file_size:,} bytes "
            f"(more than {MAX_PICKLE_BYTES:,}; ResNet-20's state dict pickles to 12 KB)")
    return _unpickle(io.BytesIO(archive.read(pickles[0])), path, "data.pkl",
                     read_storage, legacy=False)


def load_torch_file(path: str | os.PathLike, max_elements: int = DEFAULT_MAX_ELEMENTS,
                    layout_only: bool = False) -> Any:
    """Reads a file written by `torch.save` without PyTorch and without running its code.

    Hostile files are refused before the work they ask for: pickles nested
    too deep or expanding too far through shared references
    (`_check_pickle_structure`), storages beyond `max_elements` in all,
    zip members whose declared size disagrees with their storage (no
    inflating of a deflate bomb), and tensor views larger than their
    storage.

    Args:
        path: a zip-format (torch >= 1.6) or legacy-format checkpoint.
        max_elements: the most storage elements the file may hold in all.
        layout_only: read no tensor data: tensors come back as read-only
            zero-memory arrays of their shape and dtype (to compare a
            checkpoint with a model before materializing it).

    Returns:
        The saved object with tensors as numpy arrays (dtype, shape and
        element order as in PyTorch; each array owns its memory) inside
        dicts, OrderedDicts, lists, tuples, numbers and strings.

    Raises:
        FileNotFoundError: if `path` does not exist.
        UnsafeCheckpointError: if the pickle names a global other than those
            needed to rebuild tensors (a ValueError).
        TorchCheckpointError: if the file is corrupt, truncated or not a
            checkpoint (a ValueError naming the file and what was expected).
    """
    path = os.fspath(path)
    budget = _Budget(path, max_elements)
    size = os.path.getsize(path)
    if size > max_elements * 16 + MAX_PICKLE_BYTES:  # 16: the widest dtype, complex128
        raise TorchCheckpointError(
            f"{path}: refusing a file of {size:,} bytes (more than {max_elements:,} elements "
            "could fill); raise max_elements if the checkpoint is really that large")
    with open(path, "rb") as f:
        data = f.read()
    # As torch does, tell the formats apart by the first bytes (a zip local
    # file header); the raw floats of a legacy file may contain anything.
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return _load_zip(archive, path, budget, layout_only)
        except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as e:
            raise TorchCheckpointError(f"{path}: corrupt zip checkpoint: {e}") from e
    return _load_legacy(data, path, budget, layout_only)


def state_dict_from(obj: Any) -> dict[str, np.ndarray]:
    """Finds the state dict in a loaded checkpoint.

    Accepts a bare state dict or a dict wrapping one under 'state_dict' or
    'model_state_dict' (as training scripts save them, with epoch, accuracy,
    optimizer state beside it), and drops the 'module.' prefix that
    `torch.nn.DataParallel` adds to every key.

    Args:
        obj: what `load_torch_file` returned.

    Returns:
        {PyTorch parameter name: array}, in the checkpoint's order.

    Raises:
        ValueError: if no mapping of names to arrays is found.
    """
    if isinstance(obj, Mapping):
        for wrapper_key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(wrapper_key), Mapping):
                obj = obj[wrapper_key]
                break
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, np.ndarray)
                    for k, v in obj.items())):
        what = (f"a mapping with keys {[_describe(k) for k in list(obj)[:10]]}"
                if isinstance(obj, Mapping) else _describe(obj))
        raise ValueError(
            "expected a state dict ({name: tensor}) or a dict holding one under "
            f"'state_dict' or 'model_state_dict', got {what}")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)
