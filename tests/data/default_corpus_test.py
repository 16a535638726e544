"""The embedded default corpus: the running interpreter's stdlib sources, built once, cached."""

import sysconfig
from pathlib import Path

import pytest

from rwkvjax.data import corpus
from rwkvjax.data.binidx import BinIdx
from rwkvjax.data.tokenizer import default_tokenizer

MAX_BYTES = 400_000


def test_stdlib_source_files():
  root, files = corpus.stdlib_source_files()
  assert root == Path(sysconfig.get_paths()["stdlib"])
  assert files == sorted(files) and len(files) > 500
  for path in files:
    parts = path.relative_to(root).parts
    assert path.suffix == ".py" and path.stat().st_size > 0
    assert not {"site-packages", "dist-packages", "__pycache__"} & set(parts)
  _, first = corpus.stdlib_source_files(max_bytes=MAX_BYTES)
  assert first == files[:len(first)] and sum(p.stat().st_size for p in first) <= MAX_BYTES


def test_builds_once_then_reuses(tmp_path, monkeypatch):
  built = corpus.default_corpus(tmp_path, max_bytes=MAX_BYTES, val_fraction=0.1, progress=False)
  train, val = BinIdx(built.train), BinIdx(built.val)
  m = built.manifest
  assert m["train"]["tokens"] == train.num_tokens > 0 and m["val"]["tokens"] == val.num_tokens > 0
  assert m["train"]["documents"] + m["val"]["documents"] + m["skipped_documents"] == m["files"]
  assert m["vocab_sha256"] and m["python"]
  # every document is one whole stdlib file, tokenised, with EOD at the end
  root, files = corpus.stdlib_source_files(max_bytes=MAX_BYTES)
  texts = {p.read_text(encoding="utf-8") for p in files}
  tok = default_tokenizer()
  assert all(tok.decode(d[:-1]) in texts and d[-1] == 0 for d in (train[0], val[0]))
  # no hidden temporary directory is left, and the second call does not rebuild
  assert [p.name for p in tmp_path.iterdir()] == [Path(built.train).parent.name]
  monkeypatch.setattr(corpus, "_build", lambda *a: pytest.fail("rebuilt a cached corpus"))
  again = corpus.default_corpus(tmp_path, max_bytes=MAX_BYTES, val_fraction=0.1, progress=False)
  assert again == built


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(corpus, "tokenize_files", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    corpus.default_corpus(tmp_path, max_bytes=50_000, progress=False)
  assert list(tmp_path.iterdir()) == []


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("RWKVJAX_CACHE_DIR", str(tmp_path))
  built = corpus.default_corpus(max_bytes=50_000, val_fraction=0.5, progress=False)
  assert Path(built.train).parent.parent == tmp_path / "corpus"
