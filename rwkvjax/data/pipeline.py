"""grain pipelines from data on disk to training batches.

Two pipelines, both yielding one dict of numpy arrays per training step for this process:

* `make_pretrain_dataset`: windows of a binidx token stream (RWKV-LM pretraining), in RWKV-LM's
  magic-prime order or grain's shuffle (`rwkvjax.data.sampling`).
* `make_packed_dataset`: records of a jsonl/arrow/parquet source, tokenised, with a loss mask
  (prompt/response or plain text), packed back to back into rows (fine-tuning, state tuning).

Batch layout (see `sampling`): a global step has `world_size * micro_bsz` rows and process
`shard_index` of `shard_count` gets `rows = world_size * micro_bsz // shard_count` of them; its
arrays are the process-local part of the global batch (for
`jax.make_array_from_process_local_data`).

Each pipeline is a `grain.IterDataset`; `iter(ds)` gives an iterator whose `get_state()` /
`set_state()` save and restore the position exactly (a restored iterator yields the same batches
as one that never stopped).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from grain import experimental as grain_experimental

from rwkvjax.data.binidx import BinIdx
from rwkvjax.data.errors import DataError
from rwkvjax.data.magic_prime import compute_magic_prime
from rwkvjax.data.sampling import WindowSampler
from rwkvjax.data.sources import open_records
from rwkvjax.data.tokenizer import EOD_ID, VOCAB_SIZE, WorldTokenizer, default_tokenizer

_FEATURES = ("input_ids", "targets", "loss_mask")


def pretrain_sampler(
    data: BinIdx, *, ctx_len: int, micro_bsz: int, world_size: int = 1,
    sampler: str = "magic_prime", magic_prime: int | None = None, epoch_begin: int = 0,
    num_epochs: int | None = None, seed: int = 0, shard_index: int = 0,
    shard_count: int = 1) -> WindowSampler:
  """The `WindowSampler` of `make_pretrain_dataset` (same arguments): its `magic_prime`,
  `steps_per_epoch` and `rows` tell a trainer the schedule.

  Raises:
    DataError: naming the .bin when the data holds too few tokens for ctx_len.
  """
  if ctx_len < 1:
    raise ValueError(f"ctx_len={ctx_len} must be positive")
  needed = 3 * ctx_len + 1 if sampler == "magic_prime" else ctx_len + 1
  if data.num_tokens < needed:
    raise DataError(f"ctx_len={ctx_len} is larger than the data: {data.num_tokens} tokens, "
                    f"the {sampler} sampler needs at least {needed}", data.bin_path)
  if sampler == "magic_prime" and magic_prime is None:
    magic_prime = compute_magic_prime(data.num_tokens, ctx_len)
  try:
    return WindowSampler(
        sampler=sampler, num_tokens=data.num_tokens, ctx_len=ctx_len, micro_bsz=micro_bsz,
        world_size=world_size, shard_index=shard_index, shard_count=shard_count,
        magic_prime=magic_prime, epoch_begin=epoch_begin, seed=seed, num_epochs=num_epochs)
  except ValueError as e:
    raise DataError(str(e), data.bin_path) from None


class _ReadWindow(grain.transforms.Map):
  """Token offset -> the window `tokens[offset:offset + length]` (a copy, dtype of the file)."""

  def __init__(self, data: BinIdx, length: int):
    self._data = data
    self._length = length

  def map(self, offset: int) -> np.ndarray:
    return np.array(self._data.tokens[offset:offset + self._length])


def _pretrain_batch(windows: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
  tokens = np.stack(windows).astype(np.int32)
  return {
      "input_ids": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "loss_mask": np.ones(tokens[:, 1:].shape, np.float32),
  }


def make_pretrain_dataset(
    data: BinIdx | str | os.PathLike, *, ctx_len: int, micro_bsz: int, world_size: int = 1,
    sampler: str = "magic_prime", magic_prime: int | None = None, epoch_begin: int = 0,
    num_epochs: int | None = None, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
    vocab_size: int = VOCAB_SIZE, read_threads: int = 2,
    prefetch_batches: int = 4) -> grain.IterDataset:
  """Pretraining batches from a binidx token stream.

  Args:
    data: a `BinIdx` or a binidx prefix.
    ctx_len: tokens per row; each row reads a window of ctx_len + 1 tokens.
    micro_bsz: rows per rank (RWKV-LM's micro batch).
    world_size: RWKV-LM ranks (nodes x devices) the global batch is split over.
    sampler: "magic_prime" (RWKV-LM's order; needs world_size * micro_bsz to divide 40320) or
      "shuffle" (grain's permutation of all windows, reshuffled every epoch).
    magic_prime: override the computed prime (checked by RWKV-LM's rules).
    epoch_begin: first epoch (RWKV-LM's `--epoch_begin` mini-epoch when resuming its runs).
    num_epochs: stop after this many epochs (mini-epochs of 40320 samples for magic_prime);
      None for an endless stream (RWKV-LM stops at `my_exit_tokens`).
    seed: shuffle seed in [0, 2**32) (shuffle sampler only).
    shard_index, shard_count: this process and the number of processes (`jax.process_index()`,
      `jax.process_count()`); world_size must be a multiple of shard_count.
    vocab_size: every token id must be below it (the file is scanned when its dtype could hold
      larger ids).
    read_threads, prefetch_batches: grain read threads and batches read ahead.

  Returns:
    A `grain.IterDataset` of dicts with `rows = world_size * micro_bsz // shard_count`:
      input_ids: int32 [rows, ctx_len], tokens window[:-1];
      targets: int32 [rows, ctx_len], tokens window[1:];
      loss_mask: float32 [rows, ctx_len], all ones.

  Raises:
    DataError: naming the file, for a missing or inconsistent binidx, ids >= vocab_size, or a
      ctx_len larger than the data allows.
  """
  data = data if isinstance(data, BinIdx) else BinIdx(data)
  data.check_token_range(vocab_size)
  windows = pretrain_sampler(
      data, ctx_len=ctx_len, micro_bsz=micro_bsz, world_size=world_size, sampler=sampler,
      magic_prime=magic_prime, epoch_begin=epoch_begin, num_epochs=num_epochs, seed=seed,
      shard_index=shard_index, shard_count=shard_count)
  ds = grain.MapDataset.source(windows).map(_ReadWindow(data, ctx_len + 1))
  ds = ds.batch(windows.rows, drop_remainder=True, batch_fn=_pretrain_batch)
  return ds.to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))


class TokenizedRecords:
  """A record source mapped to per-document training features (a grain random-access source).

  A record with `prompt_field` and `response_field` (strings) trains on the response only; a
  record with `text_field` trains on all of it. With `tokens = prompt + response` (or text):
    input_ids: int32 [n + 1] = [EOD] + tokens  (EOD separates documents, as in RWKV-LM data);
    targets:   int32 [n + 1] = tokens + [EOD];
    loss_mask: float32 [n + 1], 0 on prompt targets, 1 on response/text targets and the final EOD.
  Prompt and response are tokenised separately, so the mask boundary is a token boundary.

  Raises (on access):
    DataError: naming the file and record for a missing or non-string field or an empty document.
  """

  def __init__(self, records, tokenizer: WorldTokenizer, *, text_field: str = "text",
               prompt_field: str = "prompt", response_field: str = "response"):
    self._records = records
    self._tokenizer = tokenizer
    self._fields = (text_field, prompt_field, response_field)

  def __len__(self) -> int:
    return len(self._records)

  def _error(self, i: int, problem: str) -> DataError:
    where = getattr(self._records, "describe", lambda i: f"record {i}")(i)
    return DataError(f"{where}: {problem}", getattr(self._records, "path", None))

  def _encode(self, i: int, record: dict[str, Any], field: str) -> list[int]:
    value = record[field]
    if not isinstance(value, str):
      raise self._error(i, f"field {field!r} is {type(value).__name__}, expected a string")
    try:
      return self._tokenizer.encode(value)
    except DataError as e:
      raise self._error(i, f"field {field!r}: {e}") from None

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    record = self._records[i]
    text_field, prompt_field, response_field = self._fields
    if prompt_field in record and response_field in record:
      prompt = self._encode(i, record, prompt_field)
      response = self._encode(i, record, response_field)
    elif text_field in record:
      prompt, response = [], self._encode(i, record, text_field)
    else:
      raise self._error(i, f"has neither {text_field!r} nor {prompt_field!r} and "
                        f"{response_field!r} (keys: {sorted(record)})")
    if not prompt and not response:
      raise self._error(i, "empty document")
    tokens = np.asarray(prompt + response, np.int32)
    mask = np.ones(len(tokens) + 1, np.float32)
    mask[:len(prompt)] = 0.0
    return {
        "input_ids": np.concatenate([[EOD_ID], tokens]).astype(np.int32),
        "targets": np.concatenate([tokens, [EOD_ID]]).astype(np.int32),
        "loss_mask": mask,
    }


def _packed_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {k: batch[k] for k in _FEATURES}
  out["segment_ids"] = batch["input_ids_segment_ids"].astype(np.int32)
  return out


class _PadToRow(grain.transforms.Map):
  """One document -> one row of ctx_len: cut to ctx_len, padded with EOD tokens that carry no loss;
  segment_ids 1 on the document, 0 on the padding (the packed layout with one document per row)."""

  def __init__(self, ctx_len: int):
    self._ctx_len = ctx_len

  def map(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = min(len(features["input_ids"]), self._ctx_len)
    pad = self._ctx_len - n
    out = {k: np.pad(features[k][:n], (0, pad), constant_values=EOD_ID if k != "loss_mask" else 0)
           for k in _FEATURES}
    out["segment_ids"] = np.pad(np.ones(n, np.int32), (0, pad))
    return out


def make_packed_dataset(
    records, *, ctx_len: int, micro_bsz: int, world_size: int = 1,
    tokenizer: WorldTokenizer | None = None, text_field: str = "text",
    prompt_field: str = "prompt", response_field: str = "response", shuffle: bool = True,
    seed: int = 0, num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
    read_threads: int = 2, prefetch_records: int = 64, pad: bool = False) -> grain.IterDataset:
  """Fine-tuning batches: documents tokenised with loss masks and packed into rows.

  Documents (see `TokenizedRecords`) are concatenated and cut into rows of ctx_len
  (grain's `ConcatThenSplitIterDataset`); a document longer than the rest of a row continues in
  the next row. With pad=True each row holds one document instead (RWKV-PEFT's `--dataload pad`):
  cut to ctx_len and padded with EOD tokens under loss mask 0. Process `shard_index` reads records shard_index, shard_index + shard_count, ...
  of each epoch's order.

  Args:
    records: a path (.jsonl, or .arrow/.parquet file or directory) or a random-access source of
      dict records (e.g. `JsonlSource`, `ArrowSource`).
    ctx_len: tokens per row.
    micro_bsz, world_size, shard_index, shard_count: as in `make_pretrain_dataset`; this process
      gets rows = world_size * micro_bsz // shard_count rows per batch.
    tokenizer: default: the World tokenizer.
    text_field, prompt_field, response_field: record keys.
    shuffle, seed: shuffle records each epoch (grain's permutation, seed in [0, 2**32)).
    num_epochs: passes over the records; None repeats forever. The last batch of a finite run is
      dropped if incomplete. Processes pack different documents, so finite runs end after
      different numbers of batches per process: multi-host training should stream (None) and
      stop by step count.
    read_threads, prefetch_records: grain threads tokenising records and records read ahead.

  Returns:
    A `grain.IterDataset` of dicts:
      input_ids, targets: int32 [rows, ctx_len];
      loss_mask: float32 [rows, ctx_len] (0 on prompts and padding);
      segment_ids: int32 [rows, ctx_len], 1, 2, ... per document within a row, 0 on padding.
  """
  if world_size % shard_count or not 0 <= shard_index < shard_count:
    raise ValueError(f"need 0 <= shard_index ({shard_index}) < shard_count ({shard_count}) "
                     f"and world_size ({world_size}) a multiple of shard_count")
  rows = world_size * micro_bsz // shard_count
  if isinstance(records, (str, os.PathLike)):
    records = open_records(records)
  if len(records) == 0:
    raise DataError("no records", getattr(records, "path", None))
  examples = TokenizedRecords(records, tokenizer or default_tokenizer(), text_field=text_field,
                              prompt_field=prompt_field, response_field=response_field)
  ds = grain.MapDataset.source(examples)
  if shuffle:
    ds = ds.shuffle(seed)
  ds = ds.repeat(num_epochs)[shard_index::shard_count]
  if pad:
    ds = ds.map(_PadToRow(ctx_len))
  it = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_records))
  if pad:
    return it.batch(rows, drop_remainder=True)
  it = grain_experimental.ConcatThenSplitIterDataset(
      it, length_struct={k: ctx_len for k in _FEATURES})
  return it.batch(rows, drop_remainder=True).map(_packed_batch)
