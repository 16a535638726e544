"""binidx: byte-compatible with RWKV-LM's MMIDIDX reader/writer, and loud about bad files."""

import os
import struct

import numpy as np
import pytest

from rwkvjax.data.binidx import BinIdx, BinIdxWriter, split_prefix, token_dtype
from rwkvjax.data.errors import DataError

# RWKV-LM src/binidx.py's dtype table.
RWKVLM_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: float,
                 7: np.double, 8: np.uint16}


def rwkvlm_read(prefix):
  """RWKV-LM's MMapIndexedDataset logic, transcribed from the format: (documents, flat stream)."""
  with open(prefix + ".idx", "rb") as stream:
    assert stream.read(9) == b"MMIDIDX\x00\x00"
    assert struct.unpack("<Q", stream.read(8)) == (1,)
    (dtype_code,) = struct.unpack("<B", stream.read(1))
    dtype = RWKVLM_DTYPES[dtype_code]
    length = struct.unpack("<Q", stream.read(8))[0]
    doc_count = struct.unpack("<Q", stream.read(8))[0]
    offset = stream.tell()
  buffer = np.memmap(prefix + ".idx", mode="r", order="C")
  sizes = np.frombuffer(buffer, dtype=np.int32, count=length, offset=offset)
  pointers = np.frombuffer(buffer, dtype=np.int64, count=length, offset=offset + sizes.nbytes)
  doc_idx = np.frombuffer(buffer, dtype=np.int64, count=doc_count,
                          offset=offset + sizes.nbytes + pointers.nbytes)
  data = np.memmap(prefix + ".bin", mode="r", order="C")
  docs = [np.frombuffer(data, dtype=dtype, count=int(s), offset=int(p))
          for p, s in zip(pointers, sizes)]
  # MyDataset: data_size = len(bin) // itemsize; data.get(idx=0, offset=i, length=n) reads the
  # stream from document 0's pointer, across documents.
  stream = np.frombuffer(data, dtype=dtype, count=len(data) // np.dtype(dtype).itemsize)
  return docs, stream, doc_idx, np.dtype(dtype)


def spec_files(prefix, docs, code, dtype, doc_idx=None):
  """A binidx pair assembled byte by byte from the format description."""
  sizes = [len(d) for d in docs]
  pointers, address = [], 0
  for s in sizes:
    pointers.append(address)
    address += s * np.dtype(dtype).itemsize
  doc_idx = list(range(len(docs) + 1)) if doc_idx is None else doc_idx
  idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, code, len(docs), len(doc_idx))
  idx += struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(pointers)}q", *pointers)
  idx += struct.pack(f"<{len(doc_idx)}q", *doc_idx)
  fmt = {np.uint16: "H", np.int32: "i", np.uint8: "B", np.int64: "q"}[dtype]
  binary = b"".join(struct.pack(f"<{len(d)}{fmt}", *d) for d in docs)
  with open(prefix + ".idx", "wb") as f:
    f.write(idx)
  with open(prefix + ".bin", "wb") as f:
    f.write(binary)


def make_docs(seed=0, n=12, vocab=65536):
  rng = np.random.default_rng(seed)
  return [np.append(rng.integers(1, vocab, size=rng.integers(1, 50)), 0) for _ in range(n)]


def write(prefix, docs, vocab=65536):
  with BinIdxWriter(prefix, vocab_size=vocab) as w:
    for d in docs:
      w.add_document(d)
  return w


def test_ours_read_by_rwkvlm_logic(tmp_path):
  prefix = str(tmp_path / "data")
  docs = make_docs()
  w = write(prefix, docs)
  assert w.num_documents == 12 and w.num_tokens == sum(len(d) for d in docs)
  got, stream, doc_idx, dtype = rwkvlm_read(prefix)
  assert dtype == np.uint16
  assert all(np.array_equal(a, b) for a, b in zip(got, docs)) and len(got) == len(docs)
  np.testing.assert_array_equal(stream, np.concatenate(docs))
  np.testing.assert_array_equal(doc_idx, np.arange(13))


def test_ours_is_byte_identical_to_the_spec(tmp_path):
  docs = make_docs(seed=1)
  write(str(tmp_path / "ours"), docs)
  spec_files(str(tmp_path / "spec"), docs, 8, np.uint16)
  for suffix in (".bin", ".idx"):
    assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"spec{suffix}").read_bytes()


@pytest.mark.parametrize("code,dtype,vocab", [(8, np.uint16, 65536), (4, np.int32, 100_000),
                                              (1, np.uint8, 256), (5, np.int64, 100_000)])
def test_read_spec_built_files(tmp_path, code, dtype, vocab):
  prefix = str(tmp_path / "spec")
  docs = make_docs(seed=2, n=7, vocab=vocab)
  spec_files(prefix, docs, code, dtype)
  data = BinIdx(prefix + ".bin")
  assert data.prefix == prefix and data.dtype == np.dtype(dtype) and len(data) == 7
  for i, d in enumerate(docs):
    np.testing.assert_array_equal(data[i], d)
  np.testing.assert_array_equal(data.tokens, np.concatenate(docs))
  assert data.num_tokens == sum(len(d) for d in docs)
  np.testing.assert_array_equal(data.sizes, [len(d) for d in docs])
  data.check_token_range(vocab)


def test_writer_picks_int32_for_large_vocab(tmp_path):
  prefix = str(tmp_path / "big")
  write(prefix, [np.array([70000, 3, 0])], vocab=100_000)
  assert token_dtype(100_000) == np.int32 and token_dtype(65536) == np.uint16
  docs, _, _, dtype = rwkvlm_read(prefix)
  assert dtype == np.int32 and docs[0].tolist() == [70000, 3, 0]


def test_empty_dataset_round_trips(tmp_path):
  prefix = str(tmp_path / "empty")
  write(prefix, [])
  data = BinIdx(prefix)
  assert len(data) == 0 and data.num_tokens == 0
  assert os.path.getsize(prefix + ".idx") == 34 + 8  # header + doc_idx [0]


def test_prefix_forms():
  assert split_prefix("a/b.bin") == split_prefix("a/b.idx") == split_prefix("a/b") == "a/b"


# --- bad input: each names the file and the problem ---

@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_missing_file(tmp_path, missing):
  prefix = str(tmp_path / "data")
  write(prefix, make_docs())
  os.remove(prefix + missing)
  with pytest.raises(DataError, match="binidx file not found") as e:
    BinIdx(prefix)
  assert e.value.path == prefix + missing


@pytest.mark.parametrize("change", ["extra", "truncated"])
def test_bin_does_not_match_idx(tmp_path, change):
  prefix = str(tmp_path / "data")
  write(prefix, make_docs())
  size = os.path.getsize(prefix + ".bin")
  with open(prefix + ".bin", "r+b") as f:
    if change == "extra":
      f.seek(0, 2)
      f.write(b"\x01\x00")
    else:
      f.truncate(size - 2)
  with pytest.raises(DataError, match=r"has \d+ bytes but .*data\.idx describes "
                     rf"{size} bytes .*does not match") as e:
    BinIdx(prefix)
  assert e.value.path == prefix + ".bin"


def test_bin_from_another_index(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  write(a, make_docs(seed=1))
  write(b, make_docs(seed=2))
  os.replace(b + ".bin", a + ".bin")
  with pytest.raises(DataError, match="does not match"):
    BinIdx(a)


@pytest.mark.parametrize("edit,problem", [
    (lambda raw: b"XXIDIDX\x00\x00" + raw[9:], "not a binidx index"),
    (lambda raw: raw[:20], "not a binidx index"),
    (lambda raw: raw[:9] + struct.pack("<Q", 2) + raw[17:], "index version 2, expected 1"),
    (lambda raw: raw[:17] + bytes([6]) + raw[18:], "dtype code 6 is not an integer token dtype"),
    (lambda raw: raw[:-8], r"needs \d+ bytes, file has \d+"),
    (lambda raw: raw + b"\x00" * 8, r"needs \d+ bytes, file has \d+"),
    (lambda raw: raw[:34 + 4 * 12] + struct.pack("<q", 8) + raw[34 + 4 * 12 + 8:],
     "sizes and pointers disagree"),
])
def test_corrupt_index(tmp_path, edit, problem):
  prefix = str(tmp_path / "data")
  write(prefix, make_docs())
  raw = open(prefix + ".idx", "rb").read()
  with open(prefix + ".idx", "wb") as f:
    f.write(edit(raw))
  with pytest.raises(DataError, match=problem) as e:
    BinIdx(prefix)
  assert e.value.path == prefix + ".idx"


def test_token_ids_beyond_vocab_in_file(tmp_path):
  prefix = str(tmp_path / "data")
  docs = make_docs(n=4, vocab=1000) + [np.array([5, 1234, 0])]
  spec_files(prefix, docs, 4, np.int32)
  data = BinIdx(prefix)
  data.check_token_range(65536)
  pos = sum(len(d) for d in docs[:4]) + 1
  with pytest.raises(DataError, match=rf"token id 1234 at token {pos} \(document 4\) is outside "
                     r"the vocabulary \[0, 1000\)") as e:
    data.check_token_range(1000)
  assert e.value.path == prefix + ".bin"


@pytest.mark.parametrize("tokens,problem", [
    ([1, 65536], r"document 1 has token id 65536, outside the vocabulary \[0, 65536\)"),
    ([-1, 3], r"document 1 has token id -1"),
    ([], "document 1 is empty"),
    ([1.5], "non-integer tokens"),
])
def test_writer_rejects_bad_documents_and_leaves_nothing(tmp_path, tokens, problem):
  prefix = str(tmp_path / "out" / "data")
  with pytest.raises(DataError, match=problem) as e:
    with BinIdxWriter(prefix, vocab_size=65536) as w:
      w.add_document([1, 2, 0])
      w.add_document(np.array(tokens))
  assert e.value.path == prefix
  assert os.listdir(tmp_path / "out") == []


def test_writer_dtype_checks(tmp_path):
  with pytest.raises(ValueError, match="cannot hold ids"):
    BinIdxWriter(tmp_path / "x", vocab_size=70000, dtype=np.uint16)
  with pytest.raises(ValueError, match="no binidx code"):
    BinIdxWriter(tmp_path / "y", vocab_size=100, dtype=np.float32)
