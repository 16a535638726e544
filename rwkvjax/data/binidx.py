"""Megatron "MMIDIDX" binidx files, the token format RWKV-LM trains on.

A dataset is a pair of files sharing a prefix:

* `{prefix}.bin`: the token stream, documents back to back, little-endian `dtype` integers;
* `{prefix}.idx`: the index, all little-endian:

    offset  size     content
    0       9        magic b"MMIDIDX\\x00\\x00"
    9       8        <Q version = 1
    17      1        <B dtype code (DTYPE_CODES)
    18      8        <Q n = number of documents
    26      8        <Q m = len(doc_idx) (n + 1 as written by Megatron and json2binidx)
    34      4n       int32 sizes: tokens per document
    34+4n   8n       int64 pointers: byte offset of each document in the .bin
    34+12n  8m       int64 doc_idx: 0, 1, ..., n

RWKV-LM's json2binidx writes uint16 tokens (code 8) for the 65536-token World vocabulary and
appends EOD (token 0) to every document. RWKV-LM's trainer ignores document boundaries: it reads
the .bin as one stream of `len(.bin) / itemsize` tokens.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rwkvjax.data.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = 34
# Megatron's codes for the integer dtypes. Codes 6 and 7 are float64 in RWKV-LM's table and
# cannot hold token ids, so they are rejected.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16), 4: np.dtype(np.int32),
    5: np.dtype(np.int64), 8: np.dtype(np.uint16),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}
_SCAN_TOKENS = 1 << 24


def split_prefix(path: str | os.PathLike) -> str:
  """`data/x`, `data/x.bin` and `data/x.idx` all name the dataset prefix `data/x`."""
  path = os.fspath(path)
  return path[:-4] if path.endswith((".bin", ".idx")) else path


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id fits (vocab_size <= 65536), else int32."""
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class BinIdx:
  """A memory-mapped binidx dataset, validated on open.

  Attributes:
    prefix: the path without `.bin`/`.idx`.
    bin_path, idx_path: the two files.
    dtype: the token dtype (numpy).
    sizes: int32 [n_docs], tokens per document.
    pointers: int64 [n_docs], byte offset of each document in the .bin.
    doc_idx: int64 [m], Megatron's document index.
    tokens: read-only memmap, dtype [num_tokens]: the whole .bin as one stream (what RWKV-LM reads).

  Raises:
    DataError: naming the file, when a file is missing, the index header or length is wrong, or
      the .bin size does not match what the index describes.
  """

  def __init__(self, path: str | os.PathLike):
    self.prefix = split_prefix(path)
    self.bin_path = self.prefix + ".bin"
    self.idx_path = self.prefix + ".idx"
    for p in (self.idx_path, self.bin_path):
      if not os.path.isfile(p):
        raise DataError("binidx file not found", p)
    self.dtype, self.sizes, self.pointers, self.doc_idx = _read_index(self.idx_path)
    expected = int(self.sizes.sum(dtype=np.int64)) * self.dtype.itemsize
    actual = os.path.getsize(self.bin_path)
    if actual != expected:
      raise DataError(
          f"has {actual} bytes but {self.idx_path} describes {expected} bytes "
          f"({len(self.sizes)} documents of {self.dtype} tokens); the pair does not match",
          self.bin_path)
    if actual:
      self.tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r")
    else:
      self.tokens = np.zeros(0, self.dtype)

  def __reduce__(self):
    return (BinIdx, (self.prefix,))

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  def __len__(self) -> int:
    return len(self.sizes)

  def __getitem__(self, doc: int) -> np.ndarray:
    """Tokens of document `doc`: dtype [sizes[doc]] (a view into the memmap)."""
    start = int(self.pointers[doc]) // self.dtype.itemsize
    return self.tokens[start:start + int(self.sizes[doc])]

  def check_token_range(self, vocab_size: int) -> None:
    """Checks every token id is in [0, vocab_size) (scans the file unless the dtype makes it moot).

    Raises:
      DataError: naming the .bin, the first bad id, its token position and document.
    """
    info = np.iinfo(self.dtype)
    if info.min >= 0 and info.max < vocab_size:
      return
    for start in range(0, self.num_tokens, _SCAN_TOKENS):
      chunk = self.tokens[start:start + _SCAN_TOKENS]
      bad = np.flatnonzero((chunk < 0) | (chunk >= vocab_size))
      if bad.size:
        pos = start + int(bad[0])
        doc = int(np.searchsorted(np.cumsum(self.sizes, dtype=np.int64), pos, side="right"))
        raise DataError(f"token id {int(self.tokens[pos])} at token {pos} (document {doc}) is "
                        f"outside the vocabulary [0, {vocab_size})", self.bin_path)


def _read_index(idx_path: str) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
  size = os.path.getsize(idx_path)
  with open(idx_path, "rb") as f:
    header = f.read(HEADER_BYTES)
  if len(header) < HEADER_BYTES or header[:9] != MAGIC:
    raise DataError(f"not a binidx index: expected the {MAGIC!r} header "
                    f"({HEADER_BYTES} bytes), file has {size} bytes", idx_path)
  (version,) = struct.unpack_from("<Q", header, 9)
  (code,) = struct.unpack_from("<B", header, 17)
  n, m = struct.unpack_from("<QQ", header, 18)
  if version != VERSION:
    raise DataError(f"index version {version}, expected {VERSION}", idx_path)
  if code not in DTYPE_CODES:
    raise DataError(f"dtype code {code} is not an integer token dtype "
                    f"(known: {sorted(DTYPE_CODES)})", idx_path)
  expected = HEADER_BYTES + 12 * n + 8 * m
  if size != expected:
    raise DataError(f"index of {n} documents and {m} doc_idx entries needs {expected} bytes, "
                    f"file has {size}", idx_path)
  raw = np.memmap(idx_path, dtype=np.uint8, mode="r")
  sizes = raw[HEADER_BYTES:HEADER_BYTES + 4 * n].view("<i4")
  pointers = raw[HEADER_BYTES + 4 * n:HEADER_BYTES + 12 * n].view("<i8")
  doc_idx = raw[HEADER_BYTES + 12 * n:].view("<i8")
  dtype = DTYPE_CODES[code]
  if n and (sizes.min() < 0 or not np.array_equal(pointers, _pointers(sizes, dtype))):
    raise DataError("sizes and pointers disagree: pointers must be the running byte offsets of "
                    "the documents", idx_path)
  return dtype, sizes, pointers, doc_idx


def _pointers(sizes: np.ndarray, dtype: np.dtype) -> np.ndarray:
  bytes_per_doc = sizes.astype(np.int64) * dtype.itemsize
  return np.concatenate([[0], np.cumsum(bytes_per_doc)[:-1]])[:len(sizes)].astype(np.int64)


class BinIdxWriter:
  """Writes a binidx pair, one `add_document` call per document; use as a context manager.

  The files appear only when the writer closes without error: tokens stream into
  `{prefix}.bin.partial`, and `close()` writes the index and renames both into place. On an
  exception inside the `with` block the partial files are removed.

  Args:
    path: dataset prefix (or `.bin`/`.idx` path); parent directories are created.
    vocab_size: ids must be in [0, vocab_size); also picks the dtype (`token_dtype`).
    dtype: override the token dtype (a key of `DTYPE_CODES`'s values).
  """

  def __init__(self, path: str | os.PathLike, *, vocab_size: int, dtype=None):
    self.prefix = split_prefix(path)
    self.vocab_size = vocab_size
    self.dtype = token_dtype(vocab_size) if dtype is None else np.dtype(dtype)
    if self.dtype not in _CODE_OF:
      raise ValueError(f"dtype {self.dtype} has no binidx code; use one of {list(_CODE_OF)}")
    if vocab_size - 1 > np.iinfo(self.dtype).max:
      raise ValueError(f"dtype {self.dtype} cannot hold ids up to {vocab_size - 1}")
    Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
    self._partial = self.prefix + ".bin.partial"
    self._bin = open(self._partial, "wb")
    self._sizes: list[int] = []
    self.num_tokens = 0

  def __enter__(self) -> BinIdxWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  @property
  def num_documents(self) -> int:
    return len(self._sizes)

  def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
    """Appends one document: a non-empty 1-D sequence of ids (append EOD yourself if wanted).

    Raises:
      DataError: naming the output and document number for an empty document or an id outside
        [0, vocab_size).
    """
    tokens = np.asarray(tokens)
    doc = len(self._sizes)
    if tokens.ndim != 1 or tokens.size == 0:
      raise DataError(f"document {doc} is empty or not 1-D (shape {tokens.shape})", self.prefix)
    if not np.issubdtype(tokens.dtype, np.integer):
      raise DataError(f"document {doc} has non-integer tokens ({tokens.dtype})", self.prefix)
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= self.vocab_size:
      bad = lo if lo < 0 else hi
      raise DataError(f"document {doc} has token id {bad}, outside the vocabulary "
                      f"[0, {self.vocab_size})", self.prefix)
    if tokens.size > np.iinfo(np.int32).max:
      raise DataError(f"document {doc} has {tokens.size} tokens; binidx sizes are int32",
                      self.prefix)
    self._bin.write(tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
    self._sizes.append(tokens.size)
    self.num_tokens += tokens.size

  def close(self) -> None:
    """Writes the index and moves both files into place."""
    self._bin.close()
    sizes = np.asarray(self._sizes, dtype="<i4")
    n = len(sizes)
    idx_partial = self.prefix + ".idx.partial"
    with open(idx_partial, "wb") as f:
      f.write(MAGIC)
      f.write(struct.pack("<Q", VERSION))
      f.write(struct.pack("<B", _CODE_OF[self.dtype]))
      f.write(struct.pack("<Q", n))
      f.write(struct.pack("<Q", n + 1))
      f.write(sizes.tobytes())
      f.write(_pointers(sizes, self.dtype).astype("<i8").tobytes())
      f.write(np.arange(n + 1, dtype="<i8").tobytes())
    os.replace(self._partial, self.prefix + ".bin")
    os.replace(idx_partial, self.prefix + ".idx")

  def abort(self) -> None:
    """Closes and deletes the partial output."""
    self._bin.close()
    for p in (self._partial, self.prefix + ".idx.partial"):
      if os.path.exists(p):
        os.remove(p)
