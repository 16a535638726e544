"""The RWKV "World" tokenizer (rwkv_vocab_v20230424): greedy longest match over UTF-8 bytes.

The vocabulary file ships beside this module (LF line endings, sha256 `VOCAB_SHA256`; the copy in the
`rwkv` pip package is the same file with CRLF endings). Each line is `<id> <python literal> <byte
length>`; ids 1..256 are the single bytes 0x00..0xFF (id = byte + 1), so every byte string has an
encoding. Id 0 is not in the file: it is the end-of-document token (EOD) of RWKV-LM's binidx data.
Models use a 65536-row embedding (`VOCAB_SIZE`); ids 65530..65535 have no text.

Encoding starts at the first byte, takes the longest vocabulary entry that the remaining bytes begin
with, and repeats; there is no normalisation and no pre-tokenisation. This gives the same ids as
the official `rwkv.rwkv_tokenizer.TRIE_TOKENIZER` (tests/data/tokenizer_test.py checks it on
generated text). Two matchers implement it:

* `rust`: the `pyrwkv-tokenizer` package (a Rust byte trie), used for every valid UTF-8 input with
  the shipped vocabulary (the one the tests prove identical);
* `python`: a prefix table in pure Python, used for byte strings that are not valid UTF-8 (the Rust
  package only takes `str`), for other vocabulary files, and when `pyrwkv-tokenizer` is not
  installed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rwkvjax.data.errors import DataError

VOCAB_FILE = Path(__file__).with_name("rwkv_vocab_v20230424.txt")
VOCAB_SHA256 = "e6dee3d4e31b4d5c40ac99508ac6c701ceef4bed681bf2167ce9a908552bca89"
VOCAB_SIZE = 65536
EOD_ID = 0

_BACKENDS = ("auto", "rust", "python")


def load_vocab(path: str | os.PathLike = VOCAB_FILE) -> list[bytes]:
  """Reads a World vocabulary file.

  Returns:
    `tokens` with `tokens[i]` the bytes of id i; `tokens[0]` is `b""` (EOD has no text).

  Raises:
    DataError: naming the file and line when a line is malformed, ids are not 1, 2, 3, ... in
      order, or a byte length does not match.
  """
  tokens = [b""]
  try:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
  except FileNotFoundError:
    raise DataError("vocabulary file not found", path) from None
  for lineno, line in enumerate(lines, 1):
    try:
      head, rest = line.split(" ", 1)
      literal, length = rest.rsplit(" ", 1)
      token = ast.literal_eval(literal)
      token = token.encode("utf-8") if isinstance(token, str) else token
      if not isinstance(token, bytes):
        raise ValueError(f"{literal!r} is not a str or bytes literal")
      token_id, length = int(head), int(length)
    except (ValueError, SyntaxError) as e:
      raise DataError(f"line {lineno}: expected '<id> <literal> <length>': {e}", path) from None
    if token_id != len(tokens):
      raise DataError(f"line {lineno}: id {token_id}, expected {len(tokens)}", path)
    if len(token) != length:
      raise DataError(f"line {lineno}: token has {len(token)} bytes, line says {length}", path)
    tokens.append(token)
  if len(tokens) > VOCAB_SIZE:
    raise DataError(f"{len(tokens) - 1} entries do not fit a {VOCAB_SIZE}-token vocabulary", path)
  return tokens


class _PrefixMatcher:
  """Greedy longest match in pure Python over a table {every token prefix: id, or -1 if no token}."""

  def __init__(self, tokens: Sequence[bytes]):
    table: dict[bytes, int] = {}
    for token_id, token in enumerate(tokens):
      for end in range(1, len(token)):
        table.setdefault(token[:end], -1)
      if token:
        table[token] = token_id
    self._table = table

  def encode(self, data: bytes) -> list[int]:
    get = self._table.get
    ids = []
    start, n = 0, len(data)
    while start < n:
      end = start + 1
      best_id, best_end = get(data[start:end]), end  # every single byte is a token
      while end < n:
        end += 1
        token_id = get(data[start:end])
        if token_id is None:
          break
        if token_id >= 0:
          best_id, best_end = token_id, end
      ids.append(best_id)
      start = best_end
    return ids


def _rust_matcher(vocab_file: Path):
  """The Rust matcher, or None if the package is missing or the file is not the tested one.

  Its vocabulary parser is not ours, so it only serves the file whose ids the tests prove."""
  if hashlib.sha256(vocab_file.read_bytes()).hexdigest() != VOCAB_SHA256:
    return None
  try:
    import pyrwkv_tokenizer  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return pyrwkv_tokenizer.WorldTokenizer(str(vocab_file))


def _not_utf8(text: str, error: UnicodeEncodeError) -> DataError:
  return DataError(
      f"text is not encodable as UTF-8: {error.reason} at character {error.start} "
      f"({text[error.start:error.end]!r})")


class WorldTokenizer:
  """The RWKV World tokenizer.

  Ids are Python ints in [0, 65536); `encode*` never produces 0 (EOD) or ids >= 65530.

  Args:
    vocab_file: a World vocabulary file (default: the shipped rwkv_vocab_v20230424.txt).
    backend: "auto" (Rust if `pyrwkv-tokenizer` is installed, else Python), "rust" or "python".
  """

  def __init__(self, vocab_file: str | os.PathLike = VOCAB_FILE, *, backend: str = "auto"):
    if backend not in _BACKENDS:
      raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    self.vocab_file = Path(vocab_file)
    self._tokens = load_vocab(self.vocab_file)
    self._rust = None if backend == "python" else _rust_matcher(self.vocab_file)
    if self._rust is None and backend == "rust":
      raise ImportError("backend='rust' needs the pyrwkv-tokenizer package (see requirements.txt) "
                        f"and the shipped vocabulary (sha256 {VOCAB_SHA256})")
    if self._rust is None and backend == "auto":
      logging.warning("using the slower pure-Python tokenizer: pyrwkv-tokenizer is not installed "
                      "or %s is not the shipped vocabulary", self.vocab_file)
    self.backend = "python" if self._rust is None else "rust"

  def __reduce__(self):
    return (functools.partial(WorldTokenizer, backend=self.backend), (self.vocab_file,))

  @property
  def vocab_size(self) -> int:
    """Rows of the model's embedding (65536)."""
    return VOCAB_SIZE

  @property
  def eod_id(self) -> int:
    """The end-of-document id (0)."""
    return EOD_ID

  @functools.cached_property
  def _python(self) -> _PrefixMatcher:
    return _PrefixMatcher(self._tokens)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` (its UTF-8 bytes).

    Raises:
      DataError: if `text` holds a lone surrogate, which has no UTF-8 encoding.
    """
    if self._rust is None:
      try:
        return self._python.encode(text.encode("utf-8"))
      except UnicodeEncodeError as e:
        raise _not_utf8(text, e) from None
    try:
      return self._rust.encode(text)
    except UnicodeEncodeError as e:
      raise _not_utf8(text, e) from None

  def encode_bytes(self, data: bytes) -> list[int]:
    """Token ids of any byte string, valid UTF-8 or not (every byte is a token)."""
    data = bytes(data)
    if self._rust is not None:
      try:
        text = data.decode("utf-8")
      except UnicodeDecodeError:
        return self._python.encode(data)
      return self._rust.encode(text)
    return self._python.encode(data)

  def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
    """The bytes of `ids` joined; EOD (0) contributes no bytes.

    Raises:
      DataError: naming the position and value of the first id outside [0, 65530).
    """
    ids = np.asarray(ids)
    if ids.size == 0:
      return b""
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise DataError(f"token ids must be a 1-D sequence of integers, got {ids.dtype} {ids.shape}")
    bad = np.flatnonzero((ids < 0) | (ids >= len(self._tokens)))
    if bad.size:
      pos = int(bad[0])
      raise DataError(f"token id {int(ids[pos])} at position {pos} is not in the vocabulary "
                      f"(valid ids: 0..{len(self._tokens) - 1})")
    return b"".join(map(self._tokens.__getitem__, ids.tolist()))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of `ids`.

    Raises:
      DataError: if the bytes are not valid UTF-8, naming the byte offset and the token position
        where decoding fails (use `decode_bytes` to get the raw bytes), or if an id is unknown.
    """
    data = self.decode_bytes(ids)
    try:
      return data.decode("utf-8")
    except UnicodeDecodeError as e:
      ids = np.asarray(ids)
      ends = np.cumsum([len(self._tokens[i]) for i in ids.tolist()])
      pos = int(np.searchsorted(ends, e.start, side="right"))
      raise DataError(
          f"token ids do not form valid UTF-8: {e.reason} at byte {e.start}, inside the token at "
          f"position {pos} (id {int(ids[pos])}); decode_bytes returns the raw bytes") from None


def default_tokenizer(vocab_file: str | os.PathLike = VOCAB_FILE,
                      backend: str = "auto") -> WorldTokenizer:
  """A `WorldTokenizer` shared within the process for these arguments (one takes ~1 s to load)."""
  return _shared_tokenizer(os.path.realpath(vocab_file), backend)


@functools.cache
def _shared_tokenizer(vocab_file: str, backend: str) -> WorldTokenizer:
  return WorldTokenizer(vocab_file, backend=backend)
