"""Atomic file writes: a file is either complete at its path or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
  """Yields a binary file in the target's directory; renames it onto `path` only if the block succeeds."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  """np.savez to `path` (exactly that name, no `.npz` appended) atomically."""
  with atomic_write(path) as f:
    np.savez(f, **arrays)
