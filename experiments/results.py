"""Result files of the experiments: atomic writes, resumable tables, summaries.

Every file is written to a temporary file in the same directory and renamed
over the target, so a killed run never leaves a half-written file. With
several processes (`experiments.processes`) every process computes the same
rows and only process 0 writes them. A table
is keyed by its cell columns; a rerun skips the cells already present.
Each cell's timing rows also name the commit that computed it (`COMMIT`),
since a resumed run's cells may come from several invocations.

May import: the standard library, kpjax.parallel.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

from kpjax import parallel

Row = dict[str, Any]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, and a worker
# thread creating files meanwhile would get the temporary 0.
_UMASK = _read_umask()


def atomic_write_bytes(path: str, content: bytes) -> None:
    """Writes `content` to `path` via a temporary file and an atomic rename
    (in process 0 only: the others computed the same content)."""
    if not parallel.is_primary():
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        # mkstemp creates the file 0600; result files should be readable like
        # any file `open(path, "w")` would create.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def git_commit() -> str:
    """The commit of this checkout (12 hex digits), marked when tracked files
    differ from it; "unknown" outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return (commit + (" (with uncommitted changes)" if dirty else "")) if commit else "unknown"


# Read once, at import (the process's start): a long run's code is what was
# checked out then, whatever is committed while it runs.
COMMIT = git_commit()


class ResultTable:
    """Rows of one experiment, saved as `<stem>.json` and `<stem>.csv`.

    The JSON file is the source of truth; the CSV is regenerated from it on
    every save and whenever the table is opened, so a run killed between
    the two writes, or a CSV cut short, is repaired by the next run (even
    one with nothing left to do). Columns in `timing_columns` (wall times)
    are kept out of the comparison files: they go to `timings.json/.csv`
    keyed by the cell and phase, with the commit that computed the cell
    (`COMMIT`), so two identical runs write byte-identical `<stem>.csv`.

    Args:
      workdir: the directory of the files.
      key: the columns that identify a cell (e.g. model, method, compression,
        seed); rows of one cell (its phases) are added together.
      stem: file name without extension.
      timing_columns: columns moved to the timings table.

    Raises:
      ValueError: `<stem>.json` is not a table of this tool (truncated,
        corrupt, rows without the key columns), naming the file and the way
        out.
    """

    def __init__(self, workdir: str, key: Sequence[str], stem: str = "results",
                 timing_columns: Sequence[str] = ()):
        self.json_path = os.path.join(workdir, f"{stem}.json")
        self.csv_path = os.path.join(workdir, f"{stem}.csv")
        self.key = tuple(key)
        self.timing_columns = tuple(timing_columns)
        self.rows: list[Row] = read_rows(self.json_path, self.key)
        self.timings = None
        if self.timing_columns:
            self.timings = ResultTable(workdir, self.key + ("phase",), stem="timings")
        if self.rows:
            self._write_csv()

    def cell(self, row: Row) -> tuple:
        return tuple(row[k] for k in self.key)

    def done(self, **cell: Any) -> bool:
        """Whether rows of this cell are already in the table."""
        wanted = tuple(cell[k] for k in self.key)
        return any(self.cell(r) == wanted for r in self.rows)

    def add_missing(self, rows: Iterable[Row]) -> None:
        """Adds those of `rows` whose cells are not in the table yet (rows
        recomputed by a resumed run are not added twice)."""
        new = [r for r in rows if not self.done(**{k: r[k] for k in self.key})]
        if new:
            self.add(new)

    def add(self, rows: Iterable[Row]) -> None:
        """Adds one cell's rows and rewrites the files atomically (JSON first)."""
        rows = list(rows)
        if self.timings is not None:
            self.timings.add([{**{k: r[k] for k in self.timings.key},
                               **{c: r[c] for c in self.timing_columns if c in r},
                               "commit": COMMIT} for r in rows])
            rows = [{k: v for k, v in r.items() if k not in self.timing_columns} for r in rows]
        self.rows.extend(rows)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.json_path, {"rows": self.rows})
        self._write_csv()

    def _write_csv(self) -> None:
        atomic_write_text(self.csv_path, rows_to_csv(self.rows))


def at_cutoff(rows: Iterable[Row], rcond: float) -> list[Row]:
    """The rows at rank cutoff `rcond` (the run's), with those that read no
    fit (rcond None): a table without its sensitivity rows at other cutoffs."""
    return [r for r in rows if r.get("rcond") is None or r["rcond"] == rcond]


def read_rows(path: str, key: Sequence[str] = ()) -> list[Row]:
    """The rows of a table's JSON file ([] when it does not exist).

    Raises:
      ValueError: unreadable, or rows without the `key` columns.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError("rows is not a list of objects")
        missing = sorted({k for r in rows for k in key if k not in r})
        if missing:
            raise KeyError(f"rows without {missing}: damaged, or written by an older kpjax "
                           "(before the typed variant columns such as rcond)")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is damaged or not a results file of this tool ({type(e).__name__}: {e}); "
            "move it away (its cells are then recomputed) or use another --workdir") from None
    return rows


def read_json(path: str, what: str) -> Any:
    """A JSON file of the workdir; a ValueError naming it if it is damaged."""
    try:
        with open(path) as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} ({what}) is damaged ({e}); delete it or use another --workdir") from None


def rows_to_csv(rows: Sequence[Row]) -> str:
    columns: list[str] = []
    for r in rows:
        columns.extend(c for c in r if c not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def group_mean_std(
    rows: Sequence[Row], by: Sequence[str], value: str
) -> dict[tuple, tuple[float, float, int]]:
    """{group: (mean, std, count)} of `value` over the rows of each group."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get(value) is None:
            continue
        groups.setdefault(tuple(r[k] for k in by), []).append(float(r[value]))
    return {g: (*mean_std(v), len(v)) for g, v in groups.items()}


def markdown_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def fmt_pm(stats: tuple[float, float, int] | None, scale: float = 100.0, digits: int = 2) -> str:
    if stats is None:
        return "–"
    mean, std, n = stats
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if n > 1 else f"{mean * scale:.{digits}f}"
