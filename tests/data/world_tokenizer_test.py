"""The World tokenizer: identical ids to the official rwkv TRIE_TOKENIZER, exact round trips."""

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rwkvjax.data.errors import DataError
from rwkvjax.data.tokenizer import (EOD_ID, VOCAB_FILE, VOCAB_SHA256, WorldTokenizer,
                                    default_tokenizer, load_vocab)

# Official ids (rwkv 0.8.32 TRIE_TOKENIZER), also in shared/goldens/tokenizer_cases.json.
GOLDEN = [
    ("Hello, world! The Eiffel tower is in the city of Paris.",
     [33155, 45, 40213, 34, 20996, 304, 25740, 109, 39990, 4600, 4596, 22590, 30449, 4706,
      37138, 47]),
    ("RWKV 是一种线性注意力的循环神经网络。中文测试：你好，世界！",
     [1413, 1184, 33, 13091, 10250, 15033, 15471, 12415, 13773, 12522, 10838, 14734, 12357,
      14445, 14987, 15486, 15573, 15497, 10080, 10285, 13012, 13827, 16707, 19151, 10464, 11685,
      19137, 10267, 14610, 19126]),
    ("def f(x):\n    return x ** 2  # square\n\tprint(f'{x!r}')\n",
     [7334, 337, 41, 121, 501, 28352, 42178, 355, 3448, 285, 267, 36, 47379, 260, 35433, 41, 103,
      462, 121, 34, 115, 9189, 11]),
    ("tabs\t\tand   spaces      and\n\n\nnewlines\r\n   end   ",
     [27106, 257, 7005, 3340, 42287, 36216, 7005, 3328, 49436, 116, 28356, 7463, 3340]),
    ("Ünïcödé: naïve café — “quotes” ∑∫√ 日本語 한국어 😀🚀 \xa0nbsp",
     [2490, 111, 2509, 100, 9350, 2503, 59, 46644, 37946, 22898, 22903, 35478, 116, 9823, 22928,
      9923, 9914, 33, 13053, 13205, 16592, 48324, 18830, 33, 3319, 153, 129, 3319, 155, 129, 4915,
      26292]),
]

BACKENDS = ["rust", "python"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizers():
  """One tokenizer per backend, built once (the tables take a second each)."""
  return {}


def _get(tokenizers: dict, backend: str) -> WorldTokenizer:
  if backend == "rust":
    pytest.importorskip("pyrwkv_tokenizer")
  if backend not in tokenizers:
    tokenizers[backend] = WorldTokenizer(backend=backend)
  return tokenizers[backend]


@pytest.fixture(params=BACKENDS)
def tokenizer(request, tokenizers):
  return _get(tokenizers, request.param)


@pytest.fixture(scope="module")
def official():
  rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
  path = os.path.join(os.path.dirname(rwkv_tokenizer.__file__), "rwkv_vocab_v20230424.txt")
  return rwkv_tokenizer.TRIE_TOKENIZER(path)


# --- generated text: every category the issue names, none of it seen while writing the code ---
_SCRIPTS = [
    (0x4E00, 0x9FFF),  # CJK ideographs
    (0x3040, 0x30FF),  # kana
    (0xAC00, 0xD7A3),  # hangul
    (0x0590, 0x05FF),  # Hebrew (RTL)
    (0x0600, 0x06FF),  # Arabic (RTL)
    (0x0900, 0x097F),  # Devanagari
    (0x0400, 0x04FF),  # Cyrillic
    (0x0300, 0x036F),  # combining marks
    (0x1F300, 0x1FAFF),  # emoji
]
_SPECIAL = ["\u200d", "\u200c", "\u200e", "\u200f", "\ufe0f", "\xa0", "\u3000", "\ufeff",
            "\U0001F3FB", "\U0001F1FA\U0001F1F8", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
            "\u202e", "\x00", "\x1b", "\x7f", "\x85", "\x9f", "\r\n", "\r", "\n", "\t", "\v", "\f"]
_ENGLISH = ("the quick brown fox jumps over the lazy dog while Python's tokenizer counts "
            "1234567890 bytes; (parentheses), [brackets], {braces}, and <angle> quotes \"").split()


def _random_char(rng: random.Random) -> str:
  while True:
    c = rng.randrange(0x110000)
    if not 0xD800 <= c <= 0xDFFF:
      return chr(c)


def _generated_texts(seed: int, count: int, vocab_strings: list[str]) -> list[str]:
  rng = random.Random(seed)
  texts = []
  for i in range(count):
    kind = i % 8
    n = rng.randrange(1, 80)
    if kind == 0:
      text = "".join(_random_char(rng) for _ in range(n))
    elif kind == 1:
      lo, hi = rng.choice(_SCRIPTS)
      text = "".join(chr(rng.randrange(lo, hi + 1)) if rng.random() < 0.85 else
                     rng.choice(_SPECIAL + [" "]) for _ in range(n))
    elif kind == 2:  # whitespace runs, longer than the 128-space token
      text = "".join(rng.choice([" " * rng.randrange(1, 300), "\t" * rng.randrange(1, 20),
                                 "\r\n" * rng.randrange(1, 5), "\n" * rng.randrange(1, 9),
                                 rng.choice(_ENGLISH)]) for _ in range(n // 8 + 1))
    elif kind == 3:  # vocabulary entries glued together, and their prefixes
      text = "".join(rng.choice(vocab_strings)[:rng.randrange(1, 20)] for _ in range(n // 4 + 1))
    elif kind == 4:  # emoji ZWJ sequences, skin tones, flags, variation selectors
      text = "".join(rng.choice(_SPECIAL[:12]) + chr(rng.randrange(0x1F300, 0x1FAFF))
                     for _ in range(n // 3 + 1))
    elif kind == 5:  # control characters
      text = "".join(chr(rng.choice([rng.randrange(0, 32), 0x7F, rng.randrange(0x80, 0xA0)]))
                     for _ in range(n))
    elif kind == 6:  # English-like text with CRLF line ends and mixed spacing
      text = "".join(rng.choice(_ENGLISH) + rng.choice([" ", "  ", "\r\n", ", ", ". ", "\t"])
                     for _ in range(n))
    else:  # everything mixed
      text = "".join(rng.choice([_random_char(rng), rng.choice(_SPECIAL), rng.choice(_ENGLISH),
                                 " " * rng.randrange(1, 200), rng.choice(vocab_strings)])
                     for _ in range(n // 2 + 1))
    texts.append(text)
  return texts


def _vocab_strings() -> list[str]:
  strings = []
  for token in load_vocab()[1:]:
    try:
      strings.append(token.decode("utf-8"))
    except UnicodeDecodeError:
      pass
  return strings


def test_shipped_vocab_is_rwkv_vocab_v20230424():
  with open(VOCAB_FILE, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == VOCAB_SHA256
  tokens = load_vocab()
  assert len(tokens) == 65530 and tokens[0] == b""
  assert tokens[1:257] == [bytes([b]) for b in range(256)]
  assert tokens[65529] == b" " * 128


def test_shipped_vocab_matches_the_official_file(official):
  assert {i: t for i, t in enumerate(load_vocab()) if i} == official.idx2token


@pytest.mark.parametrize("text,ids", GOLDEN)
def test_golden_ids(tokenizer, text, ids):
  assert tokenizer.encode(text) == ids
  assert tokenizer.decode(ids) == text


def test_every_vocab_entry_encodes_to_its_own_id(tokenizer):
  # Greedy longest match on a vocabulary entry alone must return that entry.
  for token_id, token in enumerate(load_vocab()):
    if token:
      assert tokenizer.encode_bytes(token) == [token_id], (token_id, token)


def test_identical_to_official_on_generated_text(tokenizer, official):
  texts = _generated_texts(seed=20240601, count=2400, vocab_strings=_vocab_strings())
  texts.append("".join(texts))  # one long document spanning every category
  for text in texts:
    ids = tokenizer.encode(text)
    assert ids == official.encode(text), repr(text[:200])
    assert tokenizer.decode(ids) == text


def test_identical_to_official_on_stdlib_text(tokenizer, official):
  import pydoc_data.topics  # English prose that ships with every CPython
  text = "".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:300_000]
  assert tokenizer.encode(text) == official.encode(text)


def test_raw_bytes_identical_to_official(tokenizer, official):
  rng = random.Random(7)
  samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))) for _ in range(800)]
  samples += ["日本語".encode()[:-1] + b" abc", b"\xff\xfe" + "😀".encode()[:2] + b"\x80 \xe4\xb8"]
  for data in samples:
    ids = tokenizer.encode_bytes(data)
    assert ids == official.encodeBytes(data), data
    assert tokenizer.decode_bytes(ids) == data


def test_backends_agree(tokenizers):
  rust, python = _get(tokenizers, "rust"), _get(tokenizers, "python")
  for text in _generated_texts(seed=3, count=300, vocab_strings=_vocab_strings()):
    assert rust.encode(text) == python.encode(text)


def test_empty_and_eod(tokenizer):
  assert tokenizer.encode("") == [] and tokenizer.encode_bytes(b"") == []
  assert tokenizer.decode([]) == ""
  assert tokenizer.eod_id == EOD_ID == 0 and tokenizer.vocab_size == 65536
  assert tokenizer.decode([33155, EOD_ID, 45]) == "Hello,"


def test_lone_surrogate_is_a_clear_error(tokenizer):
  with pytest.raises(DataError, match=r"not encodable as UTF-8.*character 2"):
    tokenizer.encode("ab\ud800c")


def test_decode_invalid_utf8_names_the_position(tokenizer):
  ids = tokenizer.encode("ok ") + [0xE4 + 1] + tokenizer.encode("!")  # lone UTF-8 lead byte
  with pytest.raises(DataError, match=r"not form valid UTF-8.*byte 3.*position 2 \(id 229\)"):
    tokenizer.decode(ids)
  assert tokenizer.decode_bytes(ids) == b"ok \xe4!"


@pytest.mark.parametrize("bad", [65530, 65535, -1, 70000])
def test_decode_unknown_id_is_a_clear_error(tokenizer, bad):
  with pytest.raises(DataError, match=rf"token id {bad} at position 1 is not in the vocabulary"):
    tokenizer.decode_bytes([45, bad])


def test_pickles_for_worker_processes(tokenizer):
  clone = pickle.loads(pickle.dumps(tokenizer))
  assert clone.backend == tokenizer.backend and clone.encode("héllo") == tokenizer.encode("héllo")


def test_bad_backend():
  with pytest.raises(ValueError, match="backend"):
    WorldTokenizer(backend="cuda")


@pytest.mark.parametrize("content,problem", [
    ("1 '\\x00' 1\n3 'b' 1\n", r"line 2: id 3, expected 2"),
    ("1 'ab' 3\n", r"line 1: token has 2 bytes, line says 3"),
    ("1 nonsense\n", r"line 1: expected '<id> <literal> <length>'"),
    ("1 42 1\n", r"line 1: expected '<id> <literal> <length>'"),
])
def test_malformed_vocab_file(tmp_path, content, problem):
  path = tmp_path / "vocab.txt"
  path.write_text(content)
  with pytest.raises(DataError, match=problem) as e:
    load_vocab(path)
  assert str(path) in str(e.value)


def test_other_vocabulary_uses_the_python_matcher(tmp_path):
  path = tmp_path / "tiny.txt"
  lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)] + ["257 'ab' 2", "258 'abc d' 5"]
  path.write_text("\n".join(lines) + "\n")
  tiny = WorldTokenizer(path)
  assert tiny.backend == "python"
  assert tiny.encode("abc dab\xff") == [258, 257, 196, 192]
  with pytest.raises(ImportError, match="shipped vocabulary"):
    WorldTokenizer(path, backend="rust")


def test_missing_vocab_file(tmp_path):
  with pytest.raises(DataError, match="vocabulary file not found"):
    WorldTokenizer(tmp_path / "none.txt")


def test_cli_round_trip():
  text = "Hello, world! 你好 😀\r\n\tend"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  encoded = subprocess.run([sys.executable, "-m", "rwkvjax.cli.tokenize"], input=text.encode(),
                           capture_output=True, check=True, env=env).stdout
  assert json.loads(encoded) == default_tokenizer().encode(text)
  from rwkvjax.cli import tokenize
  assert tokenize.run(encoded, decode=True, tokenizer=default_tokenizer()).decode() == text


def test_cli_errors():
  from rwkvjax.cli import tokenize
  tokenizer = default_tokenizer()
  with pytest.raises(DataError, match=r"<stdin>: input is not UTF-8.*byte 1"):
    tokenize.run(b"a\xff", decode=False, tokenizer=tokenizer)
  with pytest.raises(DataError, match="JSON list of token ids"):
    tokenize.run(b"[1, 2", decode=True, tokenizer=tokenizer)
  with pytest.raises(DataError, match="integer token ids"):
    tokenize.run(b'["a"]', decode=True, tokenizer=tokenizer)
  with pytest.raises(DataError, match="not form valid UTF-8"):
    tokenize.run(b"[229]", decode=True, tokenizer=tokenizer)
