"""Reading untrusted archives without extracting them, within a byte budget.

Datasets arrive as .tar, .tar.gz or .zip files from anywhere. Nothing here
writes a member to disk; every member's name and type are checked before
its bytes are read (no absolute paths, no `..`, no links, no device files),
and decompression stops at a budget, so a bomb is refused, not inflated.

May import: nothing beyond the standard library.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import NamedTuple

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


class LimitedReader(io.RawIOBase):
    """A read-only stream that refuses to deliver more than `limit` bytes."""

    def __init__(self, stream, limit: int, what: str):
        self._stream, self._left, self._limit, self._what = stream, limit, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise ValueError(f"{self._what}: the archive inflates beyond {self._limit:,} bytes; "
                             "refusing it.")
        self._left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def is_archive(path: str | os.PathLike) -> bool:
    """Whether `path` names a file of a supported archive type (by suffix)."""
    name = os.fspath(path).lower()
    return name.endswith(ARCHIVE_SUFFIXES) and os.path.isfile(path)


class Member(NamedTuple):
    """A regular file of an archive or folder: its relative POSIX path and a
    function that reads its bytes (at most the budget's worth)."""

    name: str
    size: int
    read: Callable[[], bytes]


def safe_name(name: str, where: str) -> PurePosixPath:
    """The member name as a relative path; ValueError for an absolute one or `..`."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise ValueError(f"{where}: member {name!r} has an absolute path; refusing the archive.")
    if ".." in path.parts:
        raise ValueError(f"{where}: member {name!r} points outside the archive (..); "
                         "refusing the archive.")
    return path


def members(path: str | os.PathLike, max_bytes: int, max_member: int,
            directories: set[str] | None = None, progress: Callable[[float], None] | None = None
            ) -> Iterator[Member]:
    """The regular files of a folder or archive, in storage order.

    Args:
      path: a folder, or a .tar/.tar.gz/.tgz/.zip file.
      max_bytes: refuse once more than this many bytes were inflated / read.
      max_member: refuse a member declared larger than this.
      directories: if given, receives the relative paths of directory entries
        (so that empty folders can be reported).
      progress: called with the fraction of the source read so far.

    Raises:
      ValueError: a hostile or corrupt archive, naming the member.
    """
    where = os.fspath(path)
    if os.path.isdir(path):
        yield from _folder_members(where, max_bytes, max_member, directories, progress)
    elif where.lower().endswith(".zip"):
        yield from _zip_members(where, max_bytes, max_member, directories, progress)
    elif where.lower().endswith((".tar", ".tar.gz", ".tgz")):
        yield from _tar_members(where, max_bytes, max_member, directories, progress)
    else:
        raise ValueError(f"{where}: not a folder or a {', '.join(ARCHIVE_SUFFIXES)} archive")


def _check_size(size: int, name: str, where: str, max_member: int) -> None:
    if size > max_member:
        raise ValueError(f"{where}: member {name} has {size:,} bytes, more than the "
                         f"{max_member:,} allowed for one file; refusing the archive.")


def _tar_members(where, max_bytes, max_member, directories, progress):
    raw = open(where, "rb")
    total = max(os.fstat(raw.fileno()).st_size, 1)
    try:
        stream = raw
        if where.lower().endswith((".gz", ".tgz")):
            stream = gzip.GzipFile(fileobj=raw)
        limited = io.BufferedReader(LimitedReader(stream, max_bytes, where))
        with tarfile.open(fileobj=limited, mode="r|") as archive:
            for member in archive:
                name = safe_name(member.name, where)
                if member.issym() or member.islnk():
                    raise ValueError(f"{where}: member {member.name!r} is a link; refusing the archive.")
                if member.isdir():
                    if directories is not None:
                        directories.add(str(name))
                    continue
                if not member.isfile():
                    raise ValueError(f"{where}: member {member.name!r} is a device or special "
                                     "file; refusing the archive.")
                _check_size(member.size, member.name, where, max_member)
                content = archive.extractfile(member).read()
                if progress is not None:
                    progress(raw.tell() / total)
                yield Member(str(name), member.size, lambda c=content: c)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ValueError(f"{where}: corrupt or truncated archive ({e}).") from None
    except OSError as e:  # gzip's BadGzipFile and truncated streams
        raise ValueError(f"{where}: corrupt or truncated archive ({e}).") from None
    finally:
        raw.close()


def _zip_members(where, max_bytes, max_member, directories, progress):
    try:
        archive = zipfile.ZipFile(where)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{where}: corrupt zip archive ({e}).") from None
    with archive:
        infos = archive.infolist()
        budget = max_bytes
        for i, info in enumerate(infos):
            name = safe_name(info.filename, where)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ValueError(f"{where}: member {info.filename!r} is a link; refusing the archive.")
            if info.is_dir():
                if directories is not None:
                    directories.add(str(name))
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # zip writers often set no type bits
                raise ValueError(f"{where}: member {info.filename!r} is a device or special "
                                 "file; refusing the archive.")
            _check_size(info.file_size, info.filename, where, max_member)
            budget -= info.file_size
            if budget < 0:
                raise ValueError(f"{where}: the archive inflates beyond {max_bytes:,} bytes; "
                                 "refusing it.")

            def read(info=info):
                try:  # the declared size is checked; the stream is bounded by it
                    with archive.open(info) as f:
                        data = f.read(info.file_size + 1)
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                    raise ValueError(f"{where}: member {info.filename} is corrupt ({e}).") from None
                if len(data) > info.file_size:
                    raise ValueError(f"{where}: member {info.filename} inflates beyond its "
                                     "declared size; refusing the archive.")
                return data

            if progress is not None:
                progress((i + 1) / len(infos))
            yield Member(str(name), info.file_size, read)


def _folder_members(where, max_bytes, max_member, directories, progress):
    entries = []
    for root, dirs, files in os.walk(where, followlinks=False):
        rel_root = os.path.relpath(root, where)
        for d in sorted(dirs):
            full = os.path.join(root, d)
            if os.path.islink(full):
                raise ValueError(f"{where}: {os.path.join(rel_root, d)} is a link; refusing the folder.")
            if directories is not None:
                directories.add(os.path.normpath(os.path.join(rel_root, d)).replace(os.sep, "/"))
        dirs.sort()
        for f in sorted(files):
            entries.append(os.path.join(root, f))
    budget = max_bytes
    for i, full in enumerate(entries):
        rel = os.path.relpath(full, where).replace(os.sep, "/")
        info = os.lstat(full)
        if stat.S_ISLNK(info.st_mode):
            raise ValueError(f"{where}: {rel} is a link; refusing the folder.")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{where}: {rel} is a device or special file; refusing the folder.")
        _check_size(info.st_size, rel, where, max_member)
        budget -= info.st_size
        if budget < 0:
            raise ValueError(f"{where}: the folder holds more than {max_bytes:,} bytes; refusing it.")
        if progress is not None:
            progress((i + 1) / len(entries))
        yield Member(rel, info.st_size, lambda full=full, n=info.st_size: _read_file(full, n))


def _read_file(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)
