"""The one exception type of the data layer."""

from __future__ import annotations

import os


class DataError(ValueError):
  """Bad input data: the message names the file (when there is one) and the problem.

  Attributes:
    path: the offending file, or None for in-memory input (token ids, text).
    problem: what is wrong, in words.
  """

  def __init__(self, problem: str, path: str | os.PathLike | None = None):
    self.path = None if path is None else os.fspath(path)
    self.problem = problem
    super().__init__(problem if self.path is None else f"{self.path}: {problem}")
