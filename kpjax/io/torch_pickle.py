"""The restricted unpickler of PyTorch checkpoints: it executes nothing from
the file.

It rebuilds only tensors, their storages and `collections.OrderedDict`, and
refuses every other global (`os.system`, arbitrary classes, ...) with
`UnsafeCheckpointError`; the pickle's opcode structure (depth, node count,
in-place operations on shared objects) is checked before anything is
rebuilt. The file formats around the pickles are `kpjax.io.torch_file`.

May import: ml_dtypes, numpy.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<name>Storage -> element type. Storage bytes are little-endian unless
# a zip archive's byteorder record says otherwise.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
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
