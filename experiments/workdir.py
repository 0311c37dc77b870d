"""A workdir's integrity: one run at a time, no stale temporary files.

`claim(workdir)` takes an exclusive `fcntl.flock` on `<workdir>/.lock` for
the life of the run; a second run on the same workdir stops at once with
"workdir ... in use by pid N" instead of interleaving its rows with the
first's. The kernel drops the lock when the process ends, however it ends
(kill -9 included), so a crashed run never leaves the workdir locked.
`refuse_if_in_use` gives a summarize-only reader the same line.
While holding the lock, the `.tmp-*` files of an interrupted atomic write
(`experiments.results`) are removed.

With several processes (`experiments.processes`) the run is one job: process
0 takes the lock and the others learn its outcome, so every process goes on
or every process stops with process 0's line.

May import: the standard library, jax, numpy, kpjax.parallel.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
from collections.abc import Iterator

import jax
import numpy as np

from kpjax import parallel

LOCK_NAME = ".lock"
_TMP_PATTERNS = (".tmp-*", os.path.join("*", ".tmp-*"))


class WorkdirInUseError(ValueError):
    """Another process holds the workdir (a ValueError: a usage error)."""


def _lock_or_refuse(workdir: str, fd: int) -> None:
    """Takes the exclusive lock on the open lock file `fd`, or names its holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        raise WorkdirInUseError(f"workdir {workdir} in use by pid {holder}; wait for that run to end, "
                                "or use another --workdir") from None


@contextlib.contextmanager
def claim(workdir: str) -> Iterator[None]:
    """Holds `workdir` exclusively for the `with` block (creating it if needed).

    Raises:
      WorkdirInUseError: another process holds it (with several processes:
        another job holds it; raised in every process of this job).
    """
    if jax.process_count() == 1:
        with _claimed(workdir):
            yield
        return
    if not parallel.is_primary():
        _agree(None)  # process 0's outcome
        yield
        return
    held = contextlib.ExitStack()
    refusal = ""
    try:
        held.enter_context(_claimed(workdir))
    except (WorkdirInUseError, OSError) as e:  # the others must not wait for a process that stopped
        refusal = str(e)
    _agree(refusal)
    if refusal:
        raise WorkdirInUseError(refusal)
    with held:
        yield


def _agree(refusal: str | None) -> None:
    """Process 0's refusal ("" for none) to every process; raises it in the others."""
    from jax.experimental import multihost_utils
    text = (refusal or "").encode()[:1024].ljust(1024)
    got = bytes(multihost_utils.broadcast_one_to_all(np.frombuffer(text, np.uint8)))
    got = got.decode(errors="replace").strip()  # the cut at 1024 bytes may split a character
    if got and refusal is None:
        raise WorkdirInUseError(got)


@contextlib.contextmanager
def _claimed(workdir: str) -> Iterator[None]:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_or_refuse(workdir, fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(workdir)
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_if_in_use(workdir: str) -> None:
    """For a reader that writes only summaries (`--summarize_only`): stops
    with the same "in use by pid N" line while a run holds `workdir`, whose
    result files are still growing. Probes the lock and lets it go at once;
    creates nothing.

    Raises:
      WorkdirInUseError: another process holds it.
    """
    path = os.path.join(workdir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        _lock_or_refuse(workdir, fd)
    finally:
        os.close(fd)  # releases the probe's lock


def remove_stale_temporaries(workdir: str) -> list[str]:
    """Deletes the `.tmp-*` files an interrupted atomic write left behind
    (in the workdir and its immediate subfolders); returns their paths."""
    stale = sorted({p for pattern in _TMP_PATTERNS for p in glob.glob(os.path.join(workdir, pattern))})
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return stale
