"""Text, jsonl and arrow/parquet inputs to binidx (the library behind `cli/prepare_data`).

Inputs are files or directories (searched recursively for `suffixes`, in sorted order). A
document is one line of a .jsonl file (its `text_field`), one row of a .parquet/.arrow file (its
`text_field` column), or the whole of any other file (UTF-8 text). Every document is tokenised with
the World tokenizer and written with EOD (0) appended, as RWKV-LM's json2binidx `--append-eod`
does. Tokenisation runs in `num_workers` processes; the output does not depend on their number.

Held-out split: `split_by="file"` holds out the ceil(val_fraction * files) files whose key (path
relative to its input directory) hashes lowest; `split_by="document"` holds out each document whose
"{file key}#{number}" hashes below val_fraction. Both are deterministic and independent of input
order and machine.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tqdm

from rwkvjax.data.binidx import BinIdxWriter
from rwkvjax.data.errors import DataError
from rwkvjax.data.magic_prime import compute_magic_prime
from rwkvjax.data.sources import ARROW_SUFFIXES, read_arrow_table
from rwkvjax.data.tokenizer import (EOD_ID, VOCAB_FILE, VOCAB_SIZE, WorldTokenizer,
                                    default_tokenizer)

DEFAULT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".jsonl") + ARROW_SUFFIXES
SPLITS = ("file", "document")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BATCH_CHARS = 1 << 20
_BATCH_DOCS = 1024


@dataclasses.dataclass(frozen=True)
class InputFile:
  """An input file and its key: its path relative to the input directory, or its name."""
  path: Path
  key: str


@dataclasses.dataclass(frozen=True)
class Document:
  """One document: `where` locates it in its file ("line 3", "row 2", "" for a whole file)."""
  file: InputFile
  number: int
  where: str
  text: str
  input_bytes: float


def expand_inputs(inputs: Sequence[str | os.PathLike],
                  suffixes: Sequence[str] = DEFAULT_SUFFIXES) -> list[InputFile]:
  """Files named by `inputs`: files as given, directories walked (sorted, hidden names skipped).

  Raises:
    DataError: for a missing path or a directory without matching files.
  """
  files = []
  for item in inputs:
    path = Path(item)
    if path.is_file():
      files.append(InputFile(path, path.name))
    elif path.is_dir():
      found = sorted(
          p for p in path.rglob("*")
          if p.is_file() and p.suffix in suffixes
          and not any(part.startswith(".") or part == "__pycache__"
                      for part in p.relative_to(path).parts))
      if not found:
        raise DataError(f"no input files ending in {', '.join(suffixes)} in the directory", path)
      files.extend(InputFile(p, p.relative_to(path).as_posix()) for p in found)
    else:
      raise DataError("no such file or directory", path)
  return files


class _BadDocuments:
  """Raises DataError for a bad document, or logs and counts it when skipping."""

  def __init__(self, skip: bool):
    self.skip = skip
    self.count = 0

  def __call__(self, file: InputFile, where: str, problem: str) -> None:
    problem = f"{where}: {problem}" if where else problem
    if not self.skip:
      raise DataError(problem, file.path)
    self.count += 1
    if self.count <= 10:
      logging.warning("skipping a document of %s: %s", file.path, problem)


def _check_text(text, file: InputFile, where: str, field: str, bad: _BadDocuments) -> bool:
  if not isinstance(text, str):
    bad(file, where, f"field {field!r} is {type(text).__name__}, expected a string")
  elif not text:
    bad(file, where, "empty document")
  elif (m := _SURROGATE.search(text)):
    bad(file, where, f"unpaired surrogate {m.group()!r} at character {m.start()} is not UTF-8")
  else:
    return True
  return False


def read_documents(file: InputFile, *, text_field: str, bad: _BadDocuments) -> Iterator[Document]:
  """The documents of one file, in order; bad ones go to `bad` (raise or skip)."""
  path, suffix = file.path, file.path.suffix
  number = 0
  if suffix == ".jsonl":
    with open(path, "rb") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"line {lineno}"
        try:
          record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
          bad(file, where, f"invalid UTF-8 at byte {e.start} of the line")
          continue
        except json.JSONDecodeError as e:
          bad(file, where, f"invalid JSON: {e}")
          continue
        if not isinstance(record, dict) or text_field not in record:
          bad(file, where, f"expected a JSON object with a {text_field!r} field")
          continue
        if _check_text(record[text_field], file, where, text_field, bad):
          yield Document(file, number, where, record[text_field], len(line))
          number += 1
  elif suffix in ARROW_SUFFIXES:
    column = read_arrow_table(path, [text_field]).column(text_field).to_pylist()
    per_row = os.path.getsize(path) / max(len(column), 1)
    for row, text in enumerate(column):
      where = f"row {row}"
      if _check_text(text, file, where, text_field, bad):
        yield Document(file, number, where, text, per_row)
        number += 1
  else:
    raw = path.read_bytes()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      bad(file, "", f"invalid UTF-8 at byte {e.start}: {e.reason}")
      return
    if _check_text(text, file, "", "text", bad):
      yield Document(file, 0, "", text, len(raw))


def _hash_fraction(key: str) -> float:
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2**64


def held_out_files(files: Sequence[InputFile], val_fraction: float) -> set[str]:
  """Keys of the ceil(val_fraction * len(files)) files with the lowest key hash."""
  count = math.ceil(val_fraction * len(files))
  return set(sorted((f.key for f in files), key=_hash_fraction)[:count])


_worker_tokenizer: WorldTokenizer | None = None


def _init_worker(vocab_file: str, backend: str) -> None:
  global _worker_tokenizer
  _worker_tokenizer = default_tokenizer(vocab_file, backend)


def _encode_texts(texts: list[str]) -> list[np.ndarray]:
  """Token ids with EOD appended, uint16 [n + 1] per text."""
  return [np.array(_worker_tokenizer.encode(t) + [EOD_ID], np.uint16) for t in texts]


class _Ready:
  """An already computed result with the `get()` of a pool's AsyncResult."""

  def __init__(self, value):
    self._value = value

  def get(self):
    return self._value


@dataclasses.dataclass(frozen=True)
class SplitSummary:
  prefix: str
  documents: int
  tokens: int


@dataclasses.dataclass(frozen=True)
class PrepareSummary:
  """What `prepare_binidx` wrote. magic_prime is for the train split and ctx_len (None if unset
  or the data is too small)."""
  files: int
  input_bytes: int
  skipped_documents: int
  train: SplitSummary
  val: SplitSummary | None
  ctx_len: int | None
  magic_prime: int | None

  def lines(self) -> list[str]:
    out = [f"inputs: {self.files} files, {self.input_bytes:,} bytes; "
           f"skipped documents: {self.skipped_documents}"]
    for name, split in (("train", self.train), ("val", self.val)):
      if split is not None:
        out.append(f"{name}: {split.prefix}.bin/.idx: {split.documents:,} documents, "
                   f"{split.tokens:,} tokens")
    if self.ctx_len is not None and self.magic_prime is None:
      out.append(f"ctx_len {self.ctx_len}: no magic_prime (fewer than 3 windows of ctx_len)")
    elif self.ctx_len is not None:
      out.append(f"ctx_len {self.ctx_len}: magic_prime {self.magic_prime}, my_exit_tokens "
                 f"{self.train.tokens} (RWKV-LM: --data_file {self.train.prefix} --data_type "
                 f"binidx --ctx_len {self.ctx_len} --magic_prime {self.magic_prime} "
                 f"--my_exit_tokens {self.train.tokens})")
    return out


def _batches(docs: Iterator[Document]) -> Iterator[list[Document]]:
  batch, chars = [], 0
  for doc in docs:
    batch.append(doc)
    chars += len(doc.text)
    if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
      yield batch
      batch, chars = [], 0
  if batch:
    yield batch


def prepare_binidx(inputs: Sequence[str | os.PathLike], output_prefix: str | os.PathLike, *,
                   suffixes: Sequence[str] = DEFAULT_SUFFIXES, **kwargs) -> PrepareSummary:
  """Tokenises files and directories (`expand_inputs(inputs, suffixes)`) into binidx; the
  keyword arguments are those of `tokenize_files`."""
  return tokenize_files(expand_inputs(inputs, suffixes), output_prefix, **kwargs)


def tokenize_files(
    files: Sequence[InputFile], output_prefix: str | os.PathLike, *,
    val_prefix: str | os.PathLike | None = None, text_field: str = "text",
    val_fraction: float = 0.0, split_by: str = "file", ctx_len: int | None = None,
    num_workers: int | None = None, skip_bad_documents: bool = False, progress: bool = True,
    vocab_file: str | os.PathLike = VOCAB_FILE, tokenizer_backend: str = "auto",
) -> PrepareSummary:
  """Tokenises the documents of `files` into `{output_prefix}.bin/.idx` (and a held-out
  `{val_prefix}` pair).

  Args:
    files: the input files with their split keys (see `expand_inputs`).
    output_prefix: the train binidx prefix.
    val_prefix: the held-out binidx prefix (default `{output_prefix}_val`); used when
      val_fraction > 0.
    text_field: the jsonl key / arrow column holding the text.
    val_fraction: share held out, in [0, 1).
    split_by: "file" or "document".
    ctx_len: report the magic prime for this context length.
    num_workers: tokeniser processes (0: tokenise in this process; default min(cpus, 8)).
    skip_bad_documents: skip (and count) empty documents, invalid UTF-8, bad JSON lines and
      missing fields instead of raising.
    progress: show a progress bar on stderr.
    vocab_file, tokenizer_backend: the World tokenizer to use.

  Raises:
    DataError: naming the file (and line or row) of a bad document, unless skipped; or when a
      split would be empty. Nothing is left behind on error.
  """
  if split_by not in SPLITS:
    raise ValueError(f"split_by must be one of {SPLITS}, got {split_by!r}")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
  if not files:
    raise DataError("no input files", output_prefix)
  if val_fraction > 0 and split_by == "file" and len(files) < 2:
    raise DataError("holding out by file needs at least 2 input files; use split_by='document'",
                    files[0].path)
  held_out = held_out_files(files, val_fraction) if split_by == "file" else set()
  val_prefix = os.fspath(val_prefix) if val_prefix is not None else f"{output_prefix}_val"
  num_workers = min(os.cpu_count() or 1, 8) if num_workers is None else num_workers
  bad = _BadDocuments(skip_bad_documents)
  total_bytes = sum(f.path.stat().st_size for f in files)

  def is_val(doc: Document) -> bool:
    if val_fraction == 0:
      return False
    if split_by == "file":
      return doc.file.key in held_out
    return _hash_fraction(f"{doc.file.key}#{doc.number}") < val_fraction

  docs = (d for f in files for d in read_documents(f, text_field=text_field, bad=bad))
  with contextlib.ExitStack() as stack:
    train = stack.enter_context(BinIdxWriter(output_prefix, vocab_size=VOCAB_SIZE))
    val = (stack.enter_context(BinIdxWriter(val_prefix, vocab_size=VOCAB_SIZE))
           if val_fraction > 0 else None)
    bar = stack.enter_context(tqdm.tqdm(total=total_bytes, unit="B", unit_scale=True,
                                        desc="tokenizing", file=sys.stderr,
                                        disable=not progress))
    if num_workers == 0:
      _init_worker(os.fspath(vocab_file), tokenizer_backend)
      submit = lambda texts: _Ready(_encode_texts(texts))
    else:
      pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
          num_workers, _init_worker, (os.fspath(vocab_file), tokenizer_backend)))
      submit = lambda texts: pool.apply_async(_encode_texts, (texts,))

    def write(batch: list[Document], result) -> None:
      for doc, ids in zip(batch, result.get()):
        (val if is_val(doc) else train).add_document(ids)
      bar.update(sum(d.input_bytes for d in batch))

    pending = collections.deque()  # at most 2 batches per worker in flight: bounded memory
    for batch in _batches(docs):
      pending.append((batch, submit([d.text for d in batch])))
      if len(pending) >= 2 * max(num_workers, 1):
        write(*pending.popleft())
    while pending:
      write(*pending.popleft())
    for name, writer in (("train", train), ("val", val)):
      if writer is not None and writer.num_documents == 0:
        raise DataError(f"the {name} split has no documents (val_fraction={val_fraction}, "
                        f"split_by={split_by!r}, skipped {bad.count})", writer.prefix)
    bar.update(total_bytes - bar.n)

  train_summary = SplitSummary(os.fspath(output_prefix), train.num_documents, train.num_tokens)
  val_summary = None if val is None else SplitSummary(val_prefix, val.num_documents,
                                                      val.num_tokens)
  magic_prime = None
  if ctx_len is not None and train.num_tokens // ctx_len >= 3:
    magic_prime = compute_magic_prime(train.num_tokens, ctx_len)
  return PrepareSummary(files=len(files), input_bytes=total_bytes,
                        skipped_documents=bad.count, train=train_summary, val=val_summary,
                        ctx_len=ctx_len, magic_prime=magic_prime)
