"""prepare_data: text, jsonl and parquet to binidx, held-out splits, parallel, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rwkvjax.data.binidx import BinIdx
from rwkvjax.data.errors import DataError
from rwkvjax.data.magic_prime import compute_magic_prime
from rwkvjax.data.prepare import expand_inputs, prepare_binidx
from rwkvjax.data.tokenizer import default_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inputs(tmp_path):
  """A directory with text files, a jsonl file and a parquet file; returns (dir, texts in order)."""
  root = tmp_path / "in"
  (root / "sub").mkdir(parents=True)
  (root / "__pycache__").mkdir()
  (root / "__pycache__" / "skip.py").write_text("ignored")
  (root / ".hidden.txt").write_text("ignored")
  (root / "image.png").write_bytes(b"\x89PNG ignored")
  texts = {}
  texts["a.txt"] = ["First file.\r\nWith CRLF and   spaces.\n"]
  texts["b.md"] = ["# Title\n\n日本語 and emoji 😀\u200d\n"]
  texts["sub/c.jsonl"] = [f"jsonl document {i}: {'x' * i}" for i in range(6)]
  (root / "a.txt").write_text(texts["a.txt"][0], newline="")
  (root / "b.md").write_text(texts["b.md"][0])
  (root / "sub" / "c.jsonl").write_text(
      "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts["sub/c.jsonl"]))
      + "\n\n")
  texts["sub/d.parquet"] = ["parquet row one", "parquet row two"]
  pq.write_table(pa.Table.from_pylist([{"text": t} for t in texts["sub/d.parquet"]]),
                 root / "sub" / "d.parquet")
  return root, [t for key in sorted(texts) for t in texts[key]]


def encoded(texts):
  tok = default_tokenizer()
  return [tok.encode(t) + [0] for t in texts]


def test_directory_to_binidx(tmp_path, inputs):
  root, texts = inputs
  summary = prepare_binidx([root], tmp_path / "out" / "data", ctx_len=4, num_workers=0,
                           progress=False)
  data = BinIdx(tmp_path / "out" / "data")
  assert [data[i].tolist() for i in range(len(data))] == encoded(texts)
  assert summary.files == 4 and summary.skipped_documents == 0 and summary.val is None
  assert summary.train.documents == len(texts) and summary.train.tokens == data.num_tokens
  assert summary.magic_prime == compute_magic_prime(data.num_tokens, 4)
  assert any("--magic_prime" in line for line in summary.lines())


def test_expand_inputs(inputs):
  root, _ = inputs
  files = expand_inputs([root, root / "a.txt"])
  assert [f.key for f in files] == ["a.txt", "b.md", "sub/c.jsonl", "sub/d.parquet", "a.txt"]


def test_held_out_by_file(tmp_path, inputs):
  root, _ = inputs
  summary = prepare_binidx([root], tmp_path / "data", val_fraction=0.3, num_workers=0,
                           progress=False)
  train, val = BinIdx(tmp_path / "data"), BinIdx(tmp_path / "data_val")
  assert summary.val.documents == len(val) > 0 and summary.train.documents == len(train) > 0
  # whole files: every document of a file lands in the same split
  files = {"a.txt": 1, "b.md": 1, "sub/c.jsonl": 6, "sub/d.parquet": 2}
  assert summary.val.documents in {sum(c) for c in _subsets(list(files.values()), 2)}
  again = prepare_binidx([root], tmp_path / "again", val_fraction=0.3, num_workers=0,
                         progress=False)
  assert again.val.tokens == summary.val.tokens  # deterministic


def _subsets(values, size):
  if size == 0:
    return [()]
  return [(v,) + rest for i, v in enumerate(values) for rest in _subsets(values[i + 1:], size - 1)]


def test_held_out_by_document(tmp_path, inputs):
  root, texts = inputs
  summary = prepare_binidx([root], tmp_path / "data", val_fraction=0.4, split_by="document",
                           num_workers=0, progress=False)
  train, val = BinIdx(tmp_path / "data"), BinIdx(tmp_path / "data_val")
  docs = sorted(tuple(d[i].tolist()) for d in (train, val) for i in range(len(d)))
  assert docs == sorted(tuple(e) for e in encoded(texts)) and len(val) == summary.val.documents


def test_parallel_output_is_identical(tmp_path, inputs):
  root, _ = inputs
  prepare_binidx([root], tmp_path / "serial", num_workers=0, progress=False)
  prepare_binidx([root], tmp_path / "parallel", num_workers=2, progress=False)
  for suffix in (".bin", ".idx"):
    assert (tmp_path / f"serial{suffix}").read_bytes() == \
        (tmp_path / f"parallel{suffix}").read_bytes()


@pytest.mark.parametrize("name,content,problem", [
    ("empty.txt", b"", r"empty\.txt: empty document"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), r"latin1\.txt: invalid UTF-8 at byte 3"),
    ("d.jsonl", b'{"text": "ok"}\n{"text": ""}\n', r"d\.jsonl: line 2: empty document"),
    ("d.jsonl", b'{"text": "ok"}\n\n{"text": "\xff"}\n', r"d\.jsonl: line 3: invalid UTF-8"),
    ("d.jsonl", b'{"text": "ok"}\n{"text": "a"\n', r"d\.jsonl: line 2: invalid JSON"),
    ("d.jsonl", b'{"body": "ok"}\n', r"d\.jsonl: line 1: expected a JSON object with a 'text'"),
    ("d.jsonl", b'{"text": "\\ud800"}\n', r"d\.jsonl: line 1: unpaired surrogate"),
    ("d.jsonl", b'{"text": ["a"]}\n', r"d\.jsonl: line 1: field 'text' is list"),
])
def test_bad_documents_name_file_and_line(tmp_path, name, content, problem):
  (tmp_path / "good.txt").write_text("a good document")
  (tmp_path / name).write_bytes(content)
  out = tmp_path / "out"
  with pytest.raises(DataError, match=problem):
    prepare_binidx([tmp_path / "good.txt", tmp_path / name], out / "data", num_workers=0,
                   progress=False)
  assert not out.exists() or os.listdir(out) == []  # nothing half-written
  summary = prepare_binidx([tmp_path / "good.txt", tmp_path / name], out / "data",
                           num_workers=0, progress=False, skip_bad_documents=True)
  assert summary.skipped_documents == 1 and summary.train.documents >= 1


def test_missing_input_and_empty_directory(tmp_path):
  with pytest.raises(DataError, match="no such file or directory") as e:
    prepare_binidx([tmp_path / "absent.jsonl"], tmp_path / "data", progress=False)
  assert e.value.path == str(tmp_path / "absent.jsonl")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no input files ending in"):
    prepare_binidx([tmp_path / "empty"], tmp_path / "data", progress=False)


def test_split_problems(tmp_path):
  (tmp_path / "one.txt").write_text("only file")
  with pytest.raises(DataError, match="needs at least 2 input files"):
    prepare_binidx([tmp_path / "one.txt"], tmp_path / "data", val_fraction=0.1, progress=False)
  (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
  with pytest.raises(DataError, match="the val split has no documents"):
    prepare_binidx([tmp_path / "d.jsonl"], tmp_path / "data", val_fraction=0.01,
                   split_by="document", num_workers=0, progress=False)
  assert not (tmp_path / "data.bin").exists()


def test_cli(tmp_path, inputs):
  root, texts = inputs
  result = subprocess.run(
      [sys.executable, "-m", "rwkvjax.cli.prepare_data", f"--input={root}",
       f"--output_prefix={tmp_path / 'cli'}", "--ctx_len=8", "--num_workers=0", "--noprogress"],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
  assert f"{len(texts)} documents" in result.stdout and "magic_prime" in result.stdout
  assert len(BinIdx(tmp_path / "cli")) == len(texts)
  failed = subprocess.run(
      [sys.executable, "-m", "rwkvjax.cli.prepare_data", f"--input={tmp_path / 'nope'}",
       f"--output_prefix={tmp_path / 'x'}", "--noprogress"],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert failed.returncode == 1 and "no such file or directory" in failed.stderr


def test_written_tokens_round_trip(tmp_path, inputs):
  root, texts = inputs
  prepare_binidx([root], tmp_path / "data", num_workers=0, progress=False)
  data = BinIdx(tmp_path / "data")
  tok = default_tokenizer()
  assert [tok.decode(data[i][:-1]) for i in range(len(data))] == texts
  assert np.all(np.array([data[i][-1] for i in range(len(data))]) == 0)
