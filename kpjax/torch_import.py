"""Import PyTorch checkpoints into Flax variables without PyTorch.

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
PyTorch ones (`layer1.0.conv1` -> `layer1_0/conv1`):
conv weights OIHW -> HWIO kernels, dense weights (out, in) -> (in, out)
kernels, BatchNorm weight/bias -> params scale/bias, running_mean/running_var
-> batch_stats mean/var (num_batches_tracked is dropped), and the rows of a
dense layer that reads a flattened conv map are permuted from PyTorch's
C, H, W flatten order to Flax's H, W, C (the caller names those layers:
`kpjax.models.ModelSpec.flattened_inputs`). This module knows no model
registry.

May import: jax, numpy, kpjax.flatten.
"""

import collections
from collections.abc import Callable, Iterable, Mapping
import io
import math
import os
import pickle
import pickletools
import sys
from typing import Any, NamedTuple
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from kpjax.flatten import count_params

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<name>Storage -> element type. Storage bytes are little-endian unless
# a zip archive's byteorder record says otherwise.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(jnp.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}

# Bounds on what a checkpoint may make the reader do, checked before the
# work is done: pickle nesting (the C unpickler and tuple hashing recurse on
# the C stack: a 200,000-deep tuple used as a dict key segfaults), the size
# of the object tree counting shared references once per use (a < 1 KB
# "billion laughs" pickle expands to 2^60 nodes when hashed or printed), the
# elements of all storages together (ResNet-56 has 0.86 M), and the bytes of
# a pickle record. Legitimate state dicts stay far below each; measured on the
# ShrinkBench files: MnistNet's object pickle has depth 5, 212 nodes and 1 KB,
# ResNet-20's depth 6, 1,772 nodes and 12 KB.
MAX_PICKLE_DEPTH = 64
MAX_PICKLE_NODES = 2_000_000
DEFAULT_MAX_ELEMENTS = 1 << 27  # 512 MiB of float32
MAX_PICKLE_BYTES = 64 << 20

_IN_PLACE_OPS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_MARK = object()


class TorchCheckpointError(ValueError):
    """A file that is not a readable PyTorch checkpoint (corrupt, truncated, ...)."""


class UnsafeCheckpointError(TorchCheckpointError):
    """A checkpoint whose pickle asks for a global the restricted reader refuses."""


class _StorageType(NamedTuple):
    """Stands in for a `torch.<T>Storage` class named in a pickle."""

    name: str
    dtype: np.dtype


class _Storage(NamedTuple):
    """A storage's elements (1-D, native byte order).

    `elements` is None while only the layout of a legacy file is being read
    (its raw data follows the pickle that references it).
    """

    elements: np.ndarray | None
    dtype: np.dtype
    numel: int


class _StorageRef(NamedTuple):
    """What a persistent id says about a storage."""

    key: str
    dtype: np.dtype
    numel: int
    view: tuple[int, int] | None  # (offset, numel) of a slice, legacy files only


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and all(_is_int(v) for v in x)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors, storages, OrderedDicts and plain data; nothing else.

    Storages come from `load_storage(ref)`; tensors become numpy arrays.
    """

    def __init__(self, stream: io.BytesIO, path: str,
                 load_storage: Callable[[_StorageRef], _Storage] | None,
                 legacy: bool):
        super().__init__(stream)
        self._path = path
        self._load_storage = load_storage
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils":
            if name == "_rebuild_tensor_v2":
                return self._rebuild_tensor_v2
            if name == "_rebuild_tensor":
                return self._rebuild_tensor
            if name == "_rebuild_parameter":
                return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to load global '{module}.{name}': the "
            "restricted reader only rebuilds tensors (torch._utils._rebuild_tensor[_v2], "
            "_rebuild_parameter), torch.<T>Storage and collections.OrderedDict")

    def persistent_load(self, pid: Any) -> _Storage:
        ref = self._parse_persistent_id(pid)
        if self._load_storage is None:
            raise TorchCheckpointError(
                f"{self._path}: unexpected storage reference {ref.key!r} in a "
                "record that holds no tensors")
        storage = self._load_storage(ref)
        if ref.view is None:
            return storage
        offset, numel = ref.view
        if storage.elements is not None:
            storage = storage._replace(elements=storage.elements[offset:offset + numel])
        return storage._replace(numel=numel)

    def _parse_persistent_id(self, pid: Any) -> _StorageRef:
        size = 6 if self._legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and _is_int(pid[4]) and pid[4] >= 0):
            raise TorchCheckpointError(
                f"{self._path}: malformed storage id ({_describe(pid)}); expected "
                "('storage', torch.<T>Storage, key, location, numel"
                + (", view)" if self._legacy else ")"))
        _, storage_type, key, _, numel = pid[:5]
        view = None
        if self._legacy and pid[5] is not None:
            view_info = pid[5]
            if not (isinstance(view_info, tuple) and len(view_info) == 3
                    and _is_int(view_info[1]) and _is_int(view_info[2])
                    and 0 <= view_info[1] and 0 <= view_info[2]
                    and view_info[1] + view_info[2] <= numel):
                raise TorchCheckpointError(
                    f"{self._path}: malformed view ({_describe(view_info)}) of storage "
                    f"{_describe(key)} ({numel} elements); expected (view_key, offset, size) inside it")
            view = (view_info[1], view_info[2])
        return _StorageRef(key, storage_type.dtype, numel, view)

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any,
                        stride: Any) -> np.ndarray | None:
        if not isinstance(storage, _Storage):
            raise TorchCheckpointError(
                f"{self._path}: tensor built from {type(storage).__name__}, "
                "expected a storage reference")
        if not (_is_int(storage_offset) and storage_offset >= 0 and _is_int_tuple(size)
                and _is_int_tuple(stride) and len(size) == len(stride)
                and all(v >= 0 for v in size + stride)):
            raise TorchCheckpointError(
                f"{self._path}: malformed tensor layout offset={_describe(storage_offset)} "
                f"size={_describe(size)} stride={_describe(stride)}")
        if 0 in size:
            return np.empty(size, storage.dtype)
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise TorchCheckpointError(
                f"{self._path}: tensor of size {size}, stride {stride}, offset "
                f"{storage_offset} reaches element {last} of a storage of "
                f"{storage.numel} elements")
        count = math.prod(size)
        if count > storage.numel:
            # Stride 0 or overlapping strides: copying the view would allocate
            # more than the file holds (a 1-element storage viewed as 10^9).
            raise TorchCheckpointError(
                f"{self._path}: refusing a tensor of {count:,} elements viewed on a storage "
                f"of {storage.numel:,} (stride 0 or overlapping strides)")
        if storage.elements is None:  # a layout pass: shape and dtype, no memory
            return np.broadcast_to(np.zeros((), storage.dtype), size)
        view = np.lib.stride_tricks.as_strided(
            storage.elements[storage_offset:], shape=size,
            strides=tuple(s * storage.dtype.itemsize for s in stride), writeable=False)
        return view.copy()

    def _rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any,
                           stride: Any, requires_grad: Any, backward_hooks: Any,
                           metadata: Any = None) -> np.ndarray | None:
        del requires_grad, backward_hooks  # autograd state has no numpy meaning
        if metadata:
            raise TorchCheckpointError(
                f"{self._path}: tensor metadata ({_describe(metadata)}) is not supported")
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data: Any, requires_grad: Any,
                           backward_hooks: Any) -> Any:
        del requires_grad, backward_hooks
        return data


def _describe(x: Any) -> str:
    """A bounded description of an untrusted value for an error message: never
    its repr (a deep or shared structure makes repr hang)."""
    if isinstance(x, bool) or x is None:
        return repr(x)
    if isinstance(x, int):
        return repr(x) if x.bit_length() <= 64 else f"an int of {x.bit_length()} bits"
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, str):
        return repr(x[:40]) + ("..." if len(x) > 40 else "")
    if isinstance(x, (tuple, list, dict)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _check_pickle_structure(stream: io.BytesIO, path: str, record: str) -> None:
    """Refuses a pickle too deep or too large before it is unpickled.

    Simulates the pickle machine's stack on the opcode stream
    (`pickletools.genops`, which builds nothing), tracking for every stack
    entry its nesting depth and its node count with shared references
    (memo gets) counted at every use. Leaves `stream` where it was.

    Raises:
        TorchCheckpointError: depth > MAX_PICKLE_DEPTH, nodes >
            MAX_PICKLE_NODES, or an opcode stream that is not a pickle.
    """
    start = stream.tell()
    stack: list[Any] = []
    memo: dict[Any, tuple[int, int]] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
                continue
            if name == "MARK":
                stack.append(_MARK)
                continue
            if name == "DUP":
                stack.append(stack[-1])
                continue
            if name in ("STOP", "FRAME", "PROTO"):
                continue
            before = [s.name for s in op.stack_before]
            popped: list[tuple[int, int]] = []
            if "mark" in before:
                while stack[-1] is not _MARK:
                    popped.append(stack.pop())
                stack.pop()
                for _ in range(before.index("mark")):
                    popped.append(stack.pop())
            else:
                for _ in before:
                    popped.append(stack.pop())
            if _MARK in popped:
                raise ValueError("a mark where an object was expected")
            if not op.stack_after:
                continue
            if name in _IN_PLACE_OPS:  # the container is the deepest popped entry
                container, items = popped[-1], popped[:-1]
                depth = max([container[0]] + [1 + d for d, _ in items])
                nodes = container[1] + sum(n for _, n in items)
            elif popped:
                depth = 1 + max(d for d, _ in popped)
                nodes = 1 + sum(n for _, n in popped)
            else:
                depth, nodes = 0, 1
            if depth > MAX_PICKLE_DEPTH:
                raise TorchCheckpointError(
                    f"{path}: refusing {record}: objects nested deeper than "
                    f"{MAX_PICKLE_DEPTH} levels (ResNet-20's state dict has 6)")
            if nodes > MAX_PICKLE_NODES:
                raise TorchCheckpointError(
                    f"{path}: refusing {record}: it expands to more than {MAX_PICKLE_NODES:,} "
                    "objects through shared references (ResNet-20's state dict has 1,772)")
            stack.extend([(depth, nodes)] * len(op.stack_after))
    except TorchCheckpointError:
        raise
    except (ValueError, IndexError, KeyError, EOFError) as e:
        raise TorchCheckpointError(
            f"{path}: corrupt or truncated {record} (pickle at byte {start}): "
            f"{type(e).__name__}") from None
    finally:
        stream.seek(start)


def _native_elements(buffer: bytes, dtype: np.dtype, count: int, offset: int,
                     byteorder: str) -> np.ndarray:
    """`count` elements of `dtype` stored at `offset` in `byteorder` ('little'/'big')."""
    elements = np.frombuffer(buffer, dtype, count, offset)
    # byteswap, not a non-native dtype: ml_dtypes' bfloat16 has no byte order.
    return elements if byteorder == sys.byteorder else elements.byteswap()


def _unpickle(stream: io.BytesIO, path: str, record: str,
              load_storage: Callable[[_StorageRef], _Storage] | None = None,
              legacy: bool = True) -> Any:
    """Reads one pickle from `stream`, turning any failure into a clear error."""
    start = stream.tell()
    _check_pickle_structure(stream, path, record)
    try:
        return _RestrictedUnpickler(stream, path, load_storage, legacy).load()
    except TorchCheckpointError:
        raise
    except Exception as e:  # corrupt bytes surface as many exception types
        raise TorchCheckpointError(
            f"{path}: corrupt or truncated {record} (pickle at byte {start}): "
            f"{type(e).__name__}: {e}") from e


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


class _Target(NamedTuple):
    """Where a PyTorch tensor goes in the Flax variables, and how it is transformed."""

    path: tuple[str, ...]  # (collection, module..., leaf)
    transform: Callable[[np.ndarray], np.ndarray]


def _flax_module_path(torch_module: str) -> tuple[str, ...]:
    """'layer1.0.conv1' -> ('layer1_0', 'conv1'): indices join the container name."""
    parts: list[str] = []
    for part in torch_module.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return tuple(parts)


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(tree, Mapping) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _kernel_transform(chw: tuple[int, int, int] | None) -> Callable[[np.ndarray], np.ndarray]:
    def transform(w: np.ndarray) -> np.ndarray:
        if w.ndim == 4:  # conv (O, I, H, W) -> (H, W, I, O)
            return w.transpose(2, 3, 1, 0)
        if w.ndim == 2 and chw is not None and w.shape[1] == math.prod(chw):
            # Rows of the Flax kernel are indexed (h, w, c), PyTorch's columns (c, h, w).
            return w.reshape(w.shape[0], *chw).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
        if w.ndim == 2:  # dense (out, in) -> (in, out)
            return w.T
        return w  # a shape mismatch, reported by the caller

    return transform


def _keep(x: np.ndarray) -> np.ndarray:
    return x


def _flattened_chw(flattened_inputs: Mapping[str, str], params: Mapping[str, Any],
                   dense: str) -> tuple[int, int, int] | None:
    """(C, H, W) of the feature map that dense layer `dense` reads flattened."""
    conv = flattened_inputs.get(dense)
    conv_kernel = _subtree(params, (conv, "kernel")) if conv else None
    dense_kernel = _subtree(params, (dense, "kernel"))
    if conv_kernel is None or dense_kernel is None:
        return None
    channels = conv_kernel.shape[-1]
    side = math.isqrt(dense_kernel.shape[0] // channels)
    if side * side * channels != dense_kernel.shape[0]:
        raise ValueError(
            f"{dense} reads {dense_kernel.shape[0]} features, not a "
            f"square map of {conv}'s {channels} channels")
    return channels, side, side


def _target(torch_name: str, flattened_inputs: Mapping[str, str],
            template: Mapping[str, Any]) -> _Target | None:
    """The Flax destination of one state-dict entry, None if the model has none."""
    torch_module, _, leaf = torch_name.rpartition(".")
    module = _flax_module_path(torch_module)
    params = template.get("params", {})
    module_params = _subtree(params, module)
    module_stats = _subtree(template.get("batch_stats", {}), module)
    if not isinstance(module_params, Mapping):
        return None
    if "kernel" in module_params:
        chw = _flattened_chw(flattened_inputs, params, module[0]) if len(module) == 1 else None
        leaves = {"weight": ("params", "kernel", _kernel_transform(chw)),
                  "bias": ("params", "bias", _keep)}
    elif "scale" in module_params and isinstance(module_stats, Mapping):
        leaves = {"weight": ("params", "scale", _keep), "bias": ("params", "bias", _keep),
                  "running_mean": ("batch_stats", "mean", _keep),
                  "running_var": ("batch_stats", "var", _keep)}
    else:
        return None
    if leaf not in leaves:
        return None
    collection, flax_leaf, transform = leaves[leaf]
    return _Target((collection, *module, flax_leaf), transform)


def _is_batch_norm_counter(torch_name: str, template: Mapping[str, Any]) -> bool:
    torch_module, _, leaf = torch_name.rpartition(".")
    stats = _subtree(template.get("batch_stats", {}), _flax_module_path(torch_module))
    return leaf == "num_batches_tracked" and isinstance(stats, Mapping)


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _abbreviated(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(n if len(n) <= 120 else n[:120] + "..." for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_dict_to_variables(
    state_dict: Mapping[str, np.ndarray],
    template_variables: Mapping[str, Any],
    flattened_inputs: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    check_only: bool = False,
) -> dict[str, Any] | None:
    """Converts a PyTorch state dict to Flax variables shaped like a template.

    Args:
        state_dict: {PyTorch name: array} in PyTorch layout, e.g. from
            `state_dict_from(load_torch_file(path))`.
        template_variables: variables of the target model (arrays or
            `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape` of `init`);
            only shapes and dtypes are used.
        flattened_inputs: {dense layer: conv layer} for dense layers that
            read the conv's (pooled) output map flattened; their rows are
            permuted from C, H, W to H, W, C order (MnistNet: fc1 <- conv2).
        check_only: only check names and shapes (no arrays built); returns
            None.

    Returns:
        Variables with the template's structure ('params', and 'batch_stats'
        if the template has it), as jax arrays of the template's dtypes.

    Raises:
        ValueError: listing the template variables the state dict does not
            provide, the state-dict entries the model has no place for, and
            the shape mismatches (after the layout change), if any.
    """
    flattened_inputs = dict(flattened_inputs)
    values: dict[str, np.ndarray] = {}
    unexpected, mismatched, mismatched_targets = [], [], set()
    for torch_name, tensor in state_dict.items():
        target = _target(torch_name, flattened_inputs, template_variables)
        if target is None:
            if not _is_batch_norm_counter(torch_name, template_variables):
                unexpected.append(torch_name)
            continue
        leaf = _subtree(template_variables, target.path)
        if leaf is None or isinstance(leaf, Mapping):
            unexpected.append(torch_name)
            continue
        value = target.transform(np.asarray(tensor))
        flax_name = "/".join(target.path)
        if value.shape != tuple(leaf.shape):
            mismatched.append(
                f"{torch_name} {tuple(np.shape(tensor))} -> {flax_name} expects "
                f"{tuple(leaf.shape)} (got {value.shape} after the layout change)")
            mismatched_targets.add(flax_name)
            continue
        values[flax_name] = value

    template_paths = [_path_str(p) for p, _ in
                      jax.tree_util.tree_flatten_with_path(template_variables)[0]]
    missing = [p for p in template_paths
               if p not in values and p not in mismatched_targets]
    if missing or unexpected or mismatched:
        raise ValueError(
            "state dict does not fit the model's variables:\n"
            f"  missing ({len(missing)}): {_abbreviated(missing)}\n"
            f"  unexpected ({len(unexpected)}): {_abbreviated(unexpected)}\n"
            f"  shape mismatches ({len(mismatched)}): {_abbreviated(mismatched)}")
    if check_only:
        return None
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: jnp.asarray(values[_path_str(p)], dtype=leaf.dtype),
        template_variables)


def import_torch_checkpoint(
    path: str | os.PathLike,
    template_variables: Mapping[str, Any],
    flattened_inputs: Mapping[str, str] | Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Loads a PyTorch checkpoint as Flax variables shaped like a template.

    Args:
        path: checkpoint file (legacy or zip `torch.save` format) holding a
            state dict, bare or under 'state_dict', keys optionally prefixed
            'module.'.
        template_variables: the target model's variables or their shapes,
            e.g. ``jax.eval_shape(lambda: module.init(rng, x, train=False))``.
        flattened_inputs: as for `state_dict_to_variables`; for a
            `kpjax.models` model, its spec's ``flattened_inputs``.

    Returns:
        {'params': ...} plus {'batch_stats': ...} when the template has them,
        ready for `module.apply`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for an unreadable or unsafe file, or a state dict of
            another architecture (missing/unexpected keys, shape mismatches).
    """
    # A checkpoint holds the model and at most a few optimizer buffers of the
    # same size: anything far larger is refused before it is read. Then the
    # layout (names, shapes, dtypes) is compared with the model before any
    # tensor data is read.
    budget = 4 * count_params(template_variables) + (1 << 16)
    layout = state_dict_from(load_torch_file(path, budget, layout_only=True))
    state_dict_to_variables(layout, template_variables, flattened_inputs,
                            check_only=True)
    return state_dict_to_variables(state_dict_from(load_torch_file(path, budget)),
                                   template_variables, flattened_inputs)
