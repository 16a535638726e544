"""The embedded default corpus: the Python standard library's own source files.

Every machine that runs rwkvjax has them (`sysconfig.get_paths()["stdlib"]`: ~1,700 `.py` files,
~32 MB, ~8.7M World tokens for CPython 3.12), so the demo training job needs no download. The
corpus is the stdlib's non-empty `*.py` files in sorted path order, without `site-packages` /
`dist-packages` (installed third-party code) and `__pycache__`. Files that are not valid UTF-8 are
skipped (3 in CPython 3.12's test data). Whole files are held out for validation
(`prepare.held_out_files`).

It is tokenised on first use into `{cache_dir}/stdlib-py{X}{Y}-{key}/{train,val}.bin/.idx` with a
`manifest.json`, and reused afterwards. The key hashes the interpreter version, the file list and
sizes, the options and the vocabulary, so a different Python gets its own build. The build
happens in a hidden temporary directory renamed into place, so an interrupted build is never
mistaken for a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from rwkvjax.data.prepare import InputFile, tokenize_files
from rwkvjax.data.tokenizer import VOCAB_SHA256

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "corpus"
_FORMAT = 1
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Paths of a built corpus: `train` and `val` are binidx prefixes."""
  train: str
  val: str
  manifest: dict


def stdlib_source_files(max_bytes: int | None = None) -> tuple[Path, list[Path]]:
  """The stdlib root and its `.py` files in sorted order, stopping before `max_bytes` is passed
  (at least one file)."""
  root = Path(sysconfig.get_paths()["stdlib"])
  files, total = [], 0
  for path in sorted(root.rglob("*.py")):
    if _EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1]) or not path.is_file():
      continue
    size = path.stat().st_size
    if size == 0:
      continue
    if max_bytes is not None and files and total + size > max_bytes:
      break
    files.append(path)
    total += size
  return root, files


def default_corpus(cache_dir: str | os.PathLike | None = None, *, max_bytes: int | None = None,
                   val_fraction: float = 0.02, num_workers: int = 0,
                   progress: bool = True) -> Corpus:
  """Builds (first call) or finds the stdlib corpus and returns its binidx prefixes.

  Args:
    cache_dir: where builds live (default: `.cache/corpus` in the repository, or
      $RWKVJAX_CACHE_DIR/corpus).
    max_bytes: use only the first files, up to this many bytes (small demos and tests).
    val_fraction: share of files held out (at least one file).
    num_workers: tokeniser processes (see `tokenize_files`). The default 0 tokenises in this
      process (a few seconds for the whole stdlib), which is safe to call from any script;
      worker processes are spawned, so a calling script needs an `if __name__ == "__main__"`
      guard.
    progress: show progress on stderr while building.
  """
  if cache_dir is None:
    env = os.environ.get("RWKVJAX_CACHE_DIR")
    cache_dir = Path(env) / "corpus" if env else DEFAULT_CACHE_DIR
  cache_dir = Path(cache_dir)
  root, files = stdlib_source_files(max_bytes)
  listing = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in files]
  identity = {"format": _FORMAT, "python": sys.version, "files": listing,
              "val_fraction": val_fraction, "vocab_sha256": VOCAB_SHA256}
  key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
  final = cache_dir / f"stdlib-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
  if not (final / "manifest.json").is_file():
    _build(root, files, final, val_fraction, num_workers, progress, key)
  manifest = json.loads((final / "manifest.json").read_text())
  return Corpus(train=str(final / "train"), val=str(final / "val"), manifest=manifest)


def _build(root: Path, files: list[Path], final: Path, val_fraction: float,
           num_workers: int, progress: bool, key: str) -> None:
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
  try:
    if progress:
      print(f"building the default corpus from {len(files)} stdlib files in {root} "
            f"into {final}", file=sys.stderr)
    inputs = [InputFile(p, p.relative_to(root).as_posix()) for p in files]
    summary = tokenize_files(
        inputs, tmp / "train", val_prefix=tmp / "val", val_fraction=val_fraction,
        split_by="file", num_workers=num_workers, skip_bad_documents=True, progress=progress)
    manifest = {
        "source": "CPython standard library .py files (sysconfig stdlib path)",
        "python": sys.version, "stdlib": str(root), "key": key, "files": len(files),
        "val_fraction": val_fraction, "skipped_documents": summary.skipped_documents,
        "train": dataclasses.asdict(summary.train) | {"prefix": "train"},
        "val": dataclasses.asdict(summary.val) | {"prefix": "val"},
        "vocab_sha256": VOCAB_SHA256,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tmp.chmod(0o755)
    try:
      os.rename(tmp, final)
    except OSError:
      if not (final / "manifest.json").is_file():  # not a concurrent build that finished first
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
