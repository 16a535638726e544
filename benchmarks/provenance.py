"""Which code a benchmark row measured: the checkout's commit, marked when the files differ from it."""

from __future__ import annotations

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def commit() -> str:
  """The checkout's short commit hash, + "+changes" when tracked files differ from it (uncommitted work, or a copied
  working tree whose git metadata is older than its files, as on the device machine), or "unknown" outside git."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

  head = git("rev-parse", "--short", "HEAD")
  if head.returncode != 0 or not head.stdout.strip():
    return "unknown"
  changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  return head.stdout.strip() + ("+changes" if changed else "")
