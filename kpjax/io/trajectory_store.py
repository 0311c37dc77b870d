"""Out-of-core snapshot trajectories: Θ on disk, one row per training step.

A store is one file holding Θ, shape (T+1, N), row-major, in float32,
float16 or bfloat16, behind a small header:

  bytes 0–7    magic b"\\x93KPJTRJ1"
  bytes 8–15   rows written so far (uint64 little-endian; updated after data)
  bytes 16–23  length L of the JSON header (uint64 little-endian)
  bytes 24–    JSON {"num_params": N, "num_snapshots": T+1, "dtype": ...,
               "metadata": {...}}; data starts at the next multiple of 4096.

Why this layout (measured on the 2-core dev VM, see BUILD_NOTES.md):
- Row-major makes each snapshot (or a flush of k snapshots) one contiguous
  write, the natural order while training.
- The Gram pass reads column panels, i.e. T+1 strided segments. Read in
  segments of ≥ 128 KB (`read_chunk_bytes` / (T+1) per row) this ran at or
  above the sequential read rate here (the virtual disk is host-cached:
  635 MB/s sequential, ≥ 2.5 GB/s for 16 KB–1 MB segments after
  fadvise(DONTNEED)); on a seek-bound disk 1 MB segments still cost ~one seek
  per MB. A chunked (block-column) layout would turn every row append into
  N/block scattered writes, for no measured gain.
- Reads use `os.preadv` into fresh buffers, not `np.memmap`: pages of a
  memmap stay mapped and count towards the process's RSS as it sweeps a
  40 GB file, while pread buffers are freed, so peak memory is bounded by
  the read chunk (≤ 3 × `read_chunk_bytes`: the chunk in use, the next one
  prefetched by a thread, and one a caller may still hold).
- Not .npy: `np.save` cannot describe bfloat16 (it becomes raw void 'V2'),
  and the rows-written count makes an interrupted recording detectable.
  Not tensorstore (installed with orbax) or zarr (not installed): chunked
  formats pay off for compression and cloud storage; here the data are
  incompressible floats on a local disk, and raw preads need no dependency.

The store duck-types the arrays that `kpjax.koopman` takes (`shape`, `ndim`,
`dtype`, `store[:, a:b]`), so `koopman.gram(store)`, `fit_trajectory(store)`
and `fixed_point_mode(store, fit)` run out of core unchanged.

The recorder that fills a store while training is
`kpjax.train.recording.record_trajectory_to_store`.

May import: numpy, ml_dtypes, kpjax.flatten, kpjax.koopman.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Any

import ml_dtypes
import numpy as np

from kpjax.flatten import FlatSpec
from kpjax.koopman.blocked import DEFAULT_BLOCK_SIZE

MAGIC = b"\x93KPJTRJ1"
_FIXED_HEADER = 24
_ALIGN = 4096
STORAGE_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# Columns read per chunk are read_chunk_bytes / ((T+1)·itemsize), rounded to
# a multiple of koopman's block so its blocks never straddle two chunks.
DEFAULT_READ_CHUNK_BYTES = 256 << 20


def spec_metadata(spec: FlatSpec) -> dict[str, Any]:
    """The JSON-serializable part of a FlatSpec: leaf paths, shapes, offsets, N.

    The pytree structure itself is not stored; `unravel_selected` needs the
    params (or the FlatSpec) of the run.
    """
    return {
        "paths": ["/".join(p) for p in spec.paths],
        "shapes": [list(s) for s in spec.shapes],
        "offsets": list(spec.offsets),
        "size": spec.size,
    }


def _storage_dtype(dtype: Any) -> tuple[str, np.dtype]:
    for name, dt in STORAGE_DTYPES.items():
        if dtype == name or (not isinstance(dtype, str) and np.dtype(dtype) == dt):
            return name, dt
    raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class TrajectoryStore:
    """An open on-disk Θ; use `create_store` / `open_store`, not the constructor.

    Attributes:
      path: the file.
      num_params: N.
      num_snapshots: T+1, the rows the file has room for.
      rows: rows written so far; `shape` is (rows, N).
      dtype: the storage dtype (numpy; bfloat16 from ml_dtypes).
      metadata: the user metadata dict given at creation.
    """

    def __init__(self, path, fd, header, header_length, rows, writable, read_chunk_bytes):
        self.path = os.fspath(path)
        self._fd = fd
        self.num_params = int(header["num_params"])
        self.num_snapshots = int(header["num_snapshots"])
        self.dtype_name, self.dtype = _storage_dtype(header["dtype"])
        self.metadata = header.get("metadata", {})
        self.rows = rows
        self._writable = writable
        self._data_offset = _data_offset(header_length)
        self._row_bytes = self.num_params * self.dtype.itemsize
        per_row = max(1, read_chunk_bytes // max(1, self.num_snapshots * self.dtype.itemsize))
        self._chunk_columns = max(DEFAULT_BLOCK_SIZE, per_row // DEFAULT_BLOCK_SIZE * DEFAULT_BLOCK_SIZE)
        self._cache: tuple[int, int, np.ndarray] | None = None  # (chunk, rows, data)
        self._prefetch: tuple[int, int, concurrent.futures.Future] | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    # -- array protocol used by kpjax.koopman --------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.num_params)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, key) -> np.ndarray:
        """`store[r0:r1, c0:c1]` (steps of 1) as a numpy array in the storage dtype."""
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
            raise TypeError(f"index a TrajectoryStore with two slices, store[r0:r1, c0:c1]; got {key!r}")
        (r0, r1, rs), (c0, c1, cs) = (k.indices(n) for k, n in zip(key, self.shape))
        if rs != 1 or cs != 1:
            raise TypeError("TrajectoryStore slices must have step 1")
        r1, c1 = max(r0, r1), max(c0, c1)
        if (r0, r1) == (0, self.rows) and c1 > c0:
            chunk = c0 // self._chunk_columns
            base = chunk * self._chunk_columns
            if c1 <= base + self._chunk_columns:
                return self._chunk(chunk)[:, c0 - base : c1 - base]
        return self._read(r0, r1, c0, c1)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop−1 (whole snapshots), (stop−start, N)."""
        return self[start:stop, :]

    def row_range(self, start: int, stop: int) -> "RowRange":
        """Snapshots start..stop−1 as an array-like of their own (a window of
        the trajectory, for `kpjax.koopman`), read on demand."""
        if not 0 <= start < stop <= self.rows:
            raise ValueError(f"rows {start}..{stop} are not within the {self.rows} written")
        return RowRange(self, start, stop)

    # -- reading --------------------------------------------------------------

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0), self.dtype)
        raw = out.view(np.uint8)
        itemsize = self.dtype.itemsize
        for i in range(r1 - r0):
            dest = memoryview(raw[i])
            offset = self._data_offset + (r0 + i) * self._row_bytes + c0 * itemsize
            while len(dest):
                n = os.preadv(self._fd, [dest], offset)
                if n == 0:
                    raise ValueError(f"{self.path}: file ended early (truncated while open?)")
                dest, offset = dest[n:], offset + n
        return out

    def _read_chunk(self, chunk: int, rows: int) -> np.ndarray:
        c0 = chunk * self._chunk_columns
        return self._read(0, rows, c0, min(c0 + self._chunk_columns, self.num_params))

    def _chunk(self, chunk: int) -> np.ndarray:
        # Sequential sweeps (gram, combine_snapshots) ask for chunks in order:
        # serve from the cache and read the next chunk in the background.
        if self._cache is not None and self._cache[:2] == (chunk, self.rows):
            return self._cache[2]
        if self._prefetch is not None and self._prefetch[:2] == (chunk, self.rows):
            data = self._prefetch[2].result()
        else:
            data = self._read_chunk(chunk, self.rows)
        self._cache = (chunk, self.rows, data)
        self._prefetch = None
        if (chunk + 1) * self._chunk_columns < self.num_params:
            future = self._reader.submit(self._read_chunk, chunk + 1, self.rows)
            self._prefetch = (chunk + 1, self.rows, future)
        return data

    # -- writing --------------------------------------------------------------

    def append(self, rows: Any) -> None:
        """Writes snapshots after the last row: (N,) or (k, N), cast to the storage dtype.

        The data go in one contiguous write, then the header's row count.
        """
        if not self._writable:
            raise ValueError(f"{self.path} is open read-only (open_store(..., mode='r+') to append)")
        data = np.asarray(rows)
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2 or data.shape[1] != self.num_params:
            raise ValueError(
                f"rows must have shape (N,) or (k, N) with N = {self.num_params}, got {np.shape(rows)}"
            )
        if self.rows + data.shape[0] > self.num_snapshots:
            raise ValueError(
                f"{self.path} holds {self.num_snapshots} snapshots; {self.rows} written, "
                f"cannot append {data.shape[0]} more"
            )
        data = np.ascontiguousarray(data.astype(self.dtype, copy=False))
        offset = self._data_offset + self.rows * self._row_bytes
        _write_all(self._fd, memoryview(data.view(np.uint8)).cast("B"), offset)
        self.rows += data.shape[0]
        os.pwrite(self._fd, self.rows.to_bytes(8, "little"), len(MAGIC))
        self._cache = self._prefetch = None

    def sync(self) -> None:
        """Flushes written rows to the disk (fsync)."""
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._reader.shutdown(wait=True)
        self._cache = self._prefetch = None
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({self.path!r}, rows={self.rows}/{self.num_snapshots}, "
            f"N={self.num_params}, dtype={self.dtype_name})"
        )


class RowRange:
    """Rows start..stop−1 of a store, with the array protocol of the store."""

    def __init__(self, store: TrajectoryStore, start: int, stop: int):
        self.store, self.start, self.stop = store, start, stop
        self.dtype = store.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.stop - self.start, self.store.num_params)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
            raise TypeError(f"index a RowRange with two slices, rows[r0:r1, c0:c1]; got {key!r}")
        r0, r1, rs = key[0].indices(len(self))
        if rs != 1:
            raise TypeError("RowRange slices must have step 1")
        return self.store[self.start + r0 : self.start + max(r0, r1), key[1]]


def _data_offset(header_length: int) -> int:
    return -(-(_FIXED_HEADER + header_length) // _ALIGN) * _ALIGN


def create_store(
    path: str | os.PathLike,
    num_params: int,
    num_snapshots: int,
    dtype: Any = "float32",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    read_chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES,
) -> TrajectoryStore:
    """Creates an empty store for T+1 = `num_snapshots` rows of N = `num_params`.

    The file gets its full size at once (sparse until written), so a file
    cut short later is detected on open.

    Args:
      path: the file to create.
      num_params: N.
      num_snapshots: T+1.
      dtype: "float32", "float16" or "bfloat16" (or the numpy dtype). float16
        keeps 11 significant bits but underflows below 6e-8; bfloat16 keeps
        float32's range with 8 significant bits.
      metadata: JSON-serializable dict stored in the header (e.g.
        `spec_metadata(spec)`, the model name, the step range).
      overwrite: replace an existing file instead of raising FileExistsError.
      read_chunk_bytes: bytes per read chunk when sweeping columns.

    Returns:
      The store, open for appending.
    """
    if int(num_params) < 1 or int(num_snapshots) < 1:
        raise ValueError(f"need num_params ≥ 1 and num_snapshots ≥ 1, got {num_params}, {num_snapshots}")
    name, dt = _storage_dtype(dtype)
    header = {
        "num_params": int(num_params),
        "num_snapshots": int(num_snapshots),
        "dtype": name,
        "metadata": dict(metadata or {}),
    }
    try:
        encoded = json.dumps(header).encode()
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serializable: {e}") from None
    flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    try:
        offset = _data_offset(len(encoded))
        fixed = MAGIC + (0).to_bytes(8, "little") + len(encoded).to_bytes(8, "little")
        os.pwrite(fd, fixed + encoded, 0)
        os.ftruncate(fd, offset + int(num_snapshots) * int(num_params) * dt.itemsize)
    except BaseException:
        os.close(fd)
        raise
    return TrajectoryStore(path, fd, header, len(encoded), 0, True, read_chunk_bytes)


def open_store(
    path: str | os.PathLike, mode: str = "r", read_chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES
) -> TrajectoryStore:
    """Opens a store; mode "r" (read) or "r+" (read and append).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a store, a corrupt header, or a file shorter than its
        header says (truncated).
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trajectory store at {path}")
    fd = os.open(path, os.O_RDWR if mode == "r+" else os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        fixed = os.pread(fd, _FIXED_HEADER, 0)
        if len(fixed) < _FIXED_HEADER or fixed[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not a kpjax trajectory store (bad magic bytes)")
        rows = int.from_bytes(fixed[8:16], "little")
        length = int.from_bytes(fixed[16:24], "little")
        if _FIXED_HEADER + length > min(size, _FIXED_HEADER + (1 << 24)):
            raise ValueError(f"{path}: corrupt header (header length {length}, file size {size})")
        try:
            header = json.loads(os.pread(fd, length, _FIXED_HEADER).decode())
            n, capacity = int(header["num_params"]), int(header["num_snapshots"])
            _, dt = _storage_dtype(header["dtype"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt header ({e})") from None
        if n < 1 or capacity < 1 or rows > capacity:
            raise ValueError(
                f"{path}: corrupt header (N={n}, {capacity} snapshots, {rows} rows written)"
            )
        expected = _data_offset(length) + capacity * n * dt.itemsize
        if size < expected:
            raise ValueError(
                f"{path} is truncated: {size} bytes, the header ({capacity}×{n} {header['dtype']}) "
                f"needs {expected}"
            )
    except BaseException:
        os.close(fd)
        raise
    return TrajectoryStore(path, fd, header, length, rows, mode == "r+", read_chunk_bytes)
