"""grain pipelines: batch contents, exact resume, sharding, packing with loss masks, bad input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rwkvjax.data.binidx import BinIdx, BinIdxWriter
from rwkvjax.data.errors import DataError
from rwkvjax.data.magic_prime import compute_magic_prime, magic_prime_window
from rwkvjax.data.pipeline import make_packed_dataset, make_pretrain_dataset, pretrain_sampler
from rwkvjax.data.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def binidx(tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp("pretrain") / "data")
  rng = np.random.default_rng(0)
  with BinIdxWriter(prefix, vocab_size=65536) as w:
    for _ in range(60):
      w.add_document(np.append(rng.integers(1, 65536, size=rng.integers(10, 400)), 0))
  return prefix


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_pretrain_batches_are_rwkvlm_windows(binidx):
  data = BinIdx(binidx)
  ctx_len, micro_bsz, world_size = 32, 2, 2
  ds = make_pretrain_dataset(binidx, ctx_len=ctx_len, micro_bsz=micro_bsz, world_size=world_size)
  p = compute_magic_prime(data.num_tokens, ctx_len)
  batch = next(iter(ds))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "input_ids": ((4, 32), np.int32), "targets": ((4, 32), np.int32),
      "loss_mask": ((4, 32), np.float32)}
  for row in range(4):
    rank, j = divmod(row, micro_bsz)
    ii = 1 + j * world_size + rank  # epoch 0, step 0: idx = j
    start = magic_prime_window(ii, p) * ctx_len
    window = np.asarray(data.tokens[start:start + ctx_len + 1], np.int32)
    np.testing.assert_array_equal(batch["input_ids"][row], window[:-1])
    np.testing.assert_array_equal(batch["targets"][row], window[1:])
  assert batch["loss_mask"].min() == 1.0


@pytest.mark.parametrize("sampler", ["magic_prime", "shuffle"])
def test_pretrain_resume_is_exact(binidx, sampler):
  kwargs = dict(ctx_len=16, micro_bsz=4, world_size=2, sampler=sampler, seed=3)
  unbroken = take(iter(make_pretrain_dataset(binidx, **kwargs)), 12)
  first = iter(make_pretrain_dataset(binidx, **kwargs))
  take(first, 5)
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint would store it
  resumed = iter(make_pretrain_dataset(binidx, **kwargs))
  resumed.set_state(state)
  assert_same_batches(take(resumed, 7), unbroken[5:])


@pytest.mark.parametrize("sampler", ["magic_prime", "shuffle"])
def test_pretrain_shards_split_the_global_batch(binidx, sampler):
  kwargs = dict(ctx_len=16, micro_bsz=2, world_size=4, sampler=sampler)
  whole = take(iter(make_pretrain_dataset(binidx, **kwargs)), 3)
  shards = [take(iter(make_pretrain_dataset(binidx, shard_index=i, shard_count=2, **kwargs)), 3)
            for i in range(2)]
  for step in range(3):
    for k in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][k], shards[1][step][k]]), whole[step][k])


def test_pretrain_finite_epochs(binidx):
  ds = make_pretrain_dataset(binidx, ctx_len=16, micro_bsz=8, world_size=1, sampler="shuffle",
                             num_epochs=1)
  sampler = pretrain_sampler(BinIdx(binidx), ctx_len=16, micro_bsz=8, sampler="shuffle")
  batches = list(ds)
  assert len(batches) == sampler.steps_per_epoch
  starts = {tuple(row[:4]) for b in batches for row in b["input_ids"]}
  assert len(starts) == len(batches) * 8  # no window twice within an epoch


def test_pretrain_magic_prime_override_is_checked(binidx):
  with pytest.raises(DataError, match=r"magic_prime=11 must be in \(0.9, 1\]") as e:
    make_pretrain_dataset(binidx, ctx_len=16, micro_bsz=4, magic_prime=11)
  assert e.value.path == binidx + ".bin"


def test_ctx_len_larger_than_data(tmp_path):
  prefix = str(tmp_path / "small")
  with BinIdxWriter(prefix, vocab_size=65536) as w:
    w.add_document(np.arange(1, 40))
  with pytest.raises(DataError, match=r"ctx_len=64 is larger than the data: 39 tokens") as e:
    make_pretrain_dataset(prefix, ctx_len=64, micro_bsz=1, sampler="shuffle")
  assert e.value.path == prefix + ".bin"
  with pytest.raises(DataError, match=r"magic_prime sampler needs at least 49"):
    make_pretrain_dataset(prefix, ctx_len=16, micro_bsz=1)


def test_token_ids_beyond_model_vocab(tmp_path):
  prefix = str(tmp_path / "big")
  with BinIdxWriter(prefix, vocab_size=100_000) as w:
    w.add_document(np.arange(1, 2000) * 40)
  with pytest.raises(DataError, match=r"token id 65560 at token 1638 .*outside the vocabulary"):
    make_pretrain_dataset(prefix, ctx_len=16, micro_bsz=1)


def test_missing_binidx(tmp_path):
  with pytest.raises(DataError, match="binidx file not found"):
    make_pretrain_dataset(tmp_path / "nothing", ctx_len=16, micro_bsz=1)


# --- packed fine-tuning data ---

SFT = [{"prompt": f"User: question {i}?\n\nAssistant:", "response": f" answer {i}" * (i % 4 + 1)}
       for i in range(30)] + [{"text": f"plain document number {i}"} for i in range(10)]


@pytest.fixture(scope="module")
def sft_jsonl(tmp_path_factory):
  path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in SFT))
  return path


def test_packed_layout_and_masks(sft_jsonl):
  tok = default_tokenizer()
  ctx_len = 64
  ds = make_packed_dataset(sft_jsonl, ctx_len=ctx_len, micro_bsz=2, shuffle=False, num_epochs=1)
  batches = list(ds)
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert {k: v.dtype for k, v in batches[0].items()} == {
      "input_ids": np.int32, "targets": np.int32, "loss_mask": np.float32,
      "segment_ids": np.int32}
  assert batches[0]["input_ids"].shape == (2, ctx_len)
  # Rebuild the expected stream: per document [EOD] + tokens as inputs, tokens + [EOD] as
  # targets, mask 0 on prompt targets.
  inputs, targets, mask = [], [], []
  for r in SFT:
    prompt = tok.encode(r["prompt"]) if "prompt" in r else []
    body = tok.encode(r["response"]) if "response" in r else tok.encode(r["text"])
    inputs += [0] + prompt + body
    targets += prompt + body + [0]
    mask += [0.0] * len(prompt) + [1.0] * (len(body) + 1)
  n = rows["input_ids"].size
  valid = rows["segment_ids"].reshape(-1) > 0
  assert valid.sum() <= len(inputs) and n - valid.sum() < 2 * ctx_len  # only the tail padded
  np.testing.assert_array_equal(rows["input_ids"].reshape(-1)[valid], inputs[:valid.sum()])
  np.testing.assert_array_equal(rows["targets"].reshape(-1)[valid], targets[:valid.sum()])
  np.testing.assert_array_equal(rows["loss_mask"].reshape(-1)[valid], mask[:valid.sum()])
  assert rows["loss_mask"].reshape(-1)[~valid].sum() == 0
  assert rows["segment_ids"][0, 0] == 1  # segments count documents within each row


def test_padded_rows_hold_one_document_each(sft_jsonl):
  tok = default_tokenizer()
  ctx_len = 12  # shorter than some documents: those are cut
  ds = make_packed_dataset(sft_jsonl, ctx_len=ctx_len, micro_bsz=4, shuffle=False, num_epochs=1, pad=True)
  rows = {k: np.concatenate([b[k] for b in ds]) for k in ("input_ids", "targets", "loss_mask", "segment_ids")}
  assert rows["input_ids"].shape == (len(SFT), ctx_len)
  for i, r in enumerate(SFT):
    prompt = tok.encode(r["prompt"]) if "prompt" in r else []
    body = tok.encode(r["response"]) if "response" in r else tok.encode(r["text"])
    n = min(len(prompt) + len(body) + 1, ctx_len)
    np.testing.assert_array_equal(rows["input_ids"][i], ([0] + prompt + body)[:n] + [0] * (ctx_len - n))
    np.testing.assert_array_equal(rows["targets"][i], (prompt + body + [0])[:n] + [0] * (ctx_len - n))
    mask = ([0.0] * len(prompt) + [1.0] * (len(body) + 1))[:n] + [0.0] * (ctx_len - n)
    np.testing.assert_array_equal(rows["loss_mask"][i], mask)
    np.testing.assert_array_equal(rows["segment_ids"][i], [1] * n + [0] * (ctx_len - n))


def test_packed_resume_is_exact(sft_jsonl):
  kwargs = dict(ctx_len=48, micro_bsz=2, world_size=2, seed=5)
  unbroken = take(iter(make_packed_dataset(sft_jsonl, **kwargs)), 14)  # beyond one epoch
  first = iter(make_packed_dataset(sft_jsonl, **kwargs))
  take(first, 6)
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint would store it
  resumed = iter(make_packed_dataset(sft_jsonl, **kwargs))
  resumed.set_state(state)
  assert_same_batches(take(resumed, 8), unbroken[6:])


def test_packed_shards_read_disjoint_records(sft_jsonl):
  def documents(shard_index):
    ds = make_packed_dataset(sft_jsonl, ctx_len=4096, micro_bsz=1, world_size=2, shuffle=False,
                             num_epochs=1, shard_index=shard_index, shard_count=2)
    text = "".join(default_tokenizer().decode(b["input_ids"][0]) for b in ds)
    return {r.get("prompt", r.get("text")) for r in SFT if r.get("prompt", r.get("text")) in text}
  a, b = documents(0), documents(1)
  assert a.isdisjoint(b) and len(a) + len(b) == len(SFT)


def test_packed_from_parquet(tmp_path):
  pq.write_table(pa.Table.from_pylist([{"text": "hello world"}, {"text": "second doc"}]),
                 tmp_path / "d.parquet")
  batch = next(iter(make_packed_dataset(tmp_path / "d.parquet", ctx_len=16, micro_bsz=1,
                                        shuffle=False)))
  assert default_tokenizer().decode(batch["input_ids"][0]).startswith("hello worldsecond doc")


@pytest.mark.parametrize("record,problem", [
    ({"text": ""}, r"line 2: empty document"),
    ({"content": "x"}, r"line 2: has neither 'text' nor 'prompt' and 'response'"),
    ({"text": 5}, r"line 2: field 'text' is int, expected a string"),
    ({"prompt": "a", "response": "\ud800"}, r"line 2: field 'response': text is not encodable"),
])
def test_packed_bad_records(tmp_path, record, problem):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n")
  ds = make_packed_dataset(path, ctx_len=8, micro_bsz=1, shuffle=False, num_epochs=1)
  with pytest.raises(DataError, match=problem) as e:
    list(ds)
  assert e.value.path == str(path)


def test_packed_empty_source(tmp_path):
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(DataError, match="no records"):
    make_packed_dataset(tmp_path / "empty.jsonl", ctx_len=8, micro_bsz=1)
