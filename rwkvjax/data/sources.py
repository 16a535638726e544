"""Random-access record sources over files on disk (grain `RandomAccessDataSource`s).

* `JsonlSource`: one JSON object per line, located through a line-offset index built once on open.
* `ArrowSource`: Hugging Face `datasets` arrow files (Arrow IPC stream or file format) and parquet
  files, memory-mapped through pyarrow; a directory means all its .arrow/.parquet files, sorted.

`source[i]` is a dict (the record); `source.describe(i)` says where record i lives, for error
messages ("line 12", "row 7 of part-1.parquet").
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from rwkvjax.data.errors import DataError

ARROW_SUFFIXES = (".arrow", ".parquet")
_CHUNK = 1 << 24


def _line_index(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Start and end byte offsets (int64) of every non-blank line (end excludes the newline)."""
  newlines = []
  with open(path, "rb") as f:
    base = 0
    while chunk := f.read(_CHUNK):
      newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + base)
      base += len(chunk)
  ends = np.concatenate(newlines + [np.array([base], np.int64)]).astype(np.int64)
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
  return starts, ends


class JsonlSource:
  """Records of a JSON-lines file; blank lines (empty, or a lone "\\r") are skipped.

  Raises (on access):
    DataError: naming the file and line for invalid UTF-8, invalid JSON, or a non-object line.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise DataError("file not found", self.path)
    starts, ends = _line_index(self.path)
    self._mm = None
    with open(self.path, "rb") as f:
      if os.path.getsize(self.path):
        self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    lengths = ends - starts
    keep = lengths > 1
    if self._mm is not None:
      one = np.flatnonzero(lengths == 1)
      keep[one] = [self._mm[s] != 13 for s in starts[one]]
    self._starts, self._ends = starts[keep], ends[keep]
    self._linenos = np.flatnonzero(keep) + 1

  def __reduce__(self):
    return (JsonlSource, (self.path,))

  def _raw(self, start: int, end: int) -> bytes:
    return b"" if self._mm is None else self._mm[start:end]

  def __len__(self) -> int:
    return len(self._starts)

  def describe(self, i: int) -> str:
    return f"line {int(self._linenos[i])}"

  def __getitem__(self, i: int) -> dict[str, Any]:
    raw = self._raw(int(self._starts[i]), int(self._ends[i]))
    try:
      record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise DataError(f"{self.describe(i)}: invalid UTF-8 at byte {e.start} of the line",
                      self.path) from None
    except json.JSONDecodeError as e:
      raise DataError(f"{self.describe(i)}: invalid JSON: {e}", self.path) from None
    if not isinstance(record, dict):
      raise DataError(f"{self.describe(i)}: expected a JSON object, got {type(record).__name__}",
                      self.path)
    return record


def arrow_files(path: str | os.PathLike) -> list[Path]:
  """The .arrow/.parquet files a path names: itself, or those in the directory tree, sorted."""
  path = Path(path)
  if path.is_dir():
    files = sorted(p for p in path.rglob("*") if p.suffix in ARROW_SUFFIXES and p.is_file())
    if not files:
      raise DataError(f"no {'/'.join(ARROW_SUFFIXES)} files in the directory", path)
    return files
  if not path.is_file():
    raise DataError("file not found", path)
  if path.suffix not in ARROW_SUFFIXES:
    raise DataError(f"expected a {' or '.join(ARROW_SUFFIXES)} file", path)
  return [path]


def read_arrow_table(path: str | os.PathLike, columns: list[str] | None = None):
  """One file as a `pyarrow.Table` (memory-mapped), optionally only `columns`.

  Raises:
    DataError: naming the file when it is not readable as its format or lacks a column.
  """
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  path = Path(path)
  try:
    if path.suffix == ".parquet":
      names = pq.read_schema(path).names
      _check_columns(path, columns, names)
      return pq.read_table(path, columns=columns, memory_map=True)
    source = pa.memory_map(str(path))
    is_file_format = source.read(6) == b"ARROW1"
    source.seek(0)
    reader = pa.ipc.open_file(source) if is_file_format else pa.ipc.open_stream(source)
    table = reader.read_all()
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"cannot read as {path.suffix[1:]}: {e}", path) from None
  _check_columns(path, columns, table.column_names)
  return table if columns is None else table.select(columns)


def _check_columns(path: Path, columns: list[str] | None, names: list[str]) -> None:
  missing = sorted(set(columns or ()) - set(names))
  if missing:
    raise DataError(f"no column {missing} (columns: {names})", path)


class ArrowSource:
  """Rows of arrow/parquet files as dicts.

  Args:
    path: a .arrow or .parquet file, or a directory of them (rows of all files, in path order).
    columns: columns to read (default: all).
  """

  def __init__(self, path: str | os.PathLike, columns: list[str] | None = None):
    self.path = os.fspath(path)
    self._files = arrow_files(path)
    self._tables = [read_arrow_table(f, columns) for f in self._files]
    self._ends = np.cumsum([t.num_rows for t in self._tables], dtype=np.int64)

  def __reduce__(self):
    columns = self._tables[0].column_names if self._tables else None
    return (ArrowSource, (self.path, columns))

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def _locate(self, i: int) -> tuple[int, int]:
    if not 0 <= i < len(self):
      raise IndexError(f"row {i} out of range [0, {len(self)})")
    f = int(np.searchsorted(self._ends, i, side="right"))
    return f, i - (int(self._ends[f - 1]) if f else 0)

  def describe(self, i: int) -> str:
    f, row = self._locate(i)
    return f"row {row} of {self._files[f].name}"

  def __getitem__(self, i: int) -> dict[str, Any]:
    f, row = self._locate(i)
    return self._tables[f].slice(row, 1).to_pylist()[0]


def open_records(path: str | os.PathLike) -> JsonlSource | ArrowSource:
  """A record source for a .jsonl file, or an arrow/parquet file or directory."""
  if os.fspath(path).endswith(".jsonl"):
    return JsonlSource(path)
  return ArrowSource(path)
