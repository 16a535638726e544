"""Which window of the token stream each training sample reads.

Pretraining reads windows of `ctx_len + 1` tokens that start at multiples of `ctx_len` (RWKV-LM's
grid; document boundaries are ignored). Two orders:

* "magic_prime" reproduces RWKV-LM (`train_temp/src/dataset.py`). With `p` the largest prime
  `p = 2 (mod 3)`, `p <= num_tokens // ctx_len - 1`, sample `ii` reads the window starting at
  `((floor(p * (sqrt(5) - 1) / 2) * ii**3) mod p) * ctx_len`. Cubing is a bijection mod p when
  p = 2 (mod 3), so ii = 1..p visits every one of the first p windows once. RWKV-LM numbers its
  samples by mini-epoch (40320 samples), rank and micro-batch position:
  `ii = 1 + epoch * 40320 + idx * world_size + rank`, where rank `rank` reads
  `idx = step * micro_bsz + j` for j in [0, micro_bsz) at step `step` of the mini-epoch.
* "shuffle": all `(num_tokens - 1) // ctx_len` windows in grain's Feistel-permutation order
  (`grain.experimental.index_shuffle`, the permutation of `MapDataset.shuffle`), reshuffled each
  epoch with seed `seed + epoch`.

Both are pure functions of the sample number, so a pipeline resumes exactly from an index.

Batch layout. A global step holds `world_size * micro_bsz` samples; row `rank * micro_bsz + j` of
the global batch is RWKV-LM's sample j of that rank. Process `shard_index` of `shard_count` owns
the contiguous rows `[shard_index * L, (shard_index + 1) * L)`, `L = world_size * micro_bsz /
shard_count`, so the global batch does not depend on how many hosts split it. To reproduce an
RWKV-LM run, use its `world_size` (nodes x devices) and `micro_bsz`, whatever devices JAX has.
"""

from __future__ import annotations

import dataclasses
import sys

from grain import experimental as grain_experimental

from rwkvjax.data.magic_prime import (MINI_EPOCH_SAMPLES, check_magic_prime, epoch_steps,
                                      magic_prime_window)

SAMPLERS = ("magic_prime", "shuffle")


@dataclasses.dataclass(frozen=True)
class WindowSampler:
  """Maps a process-local sample number to the token offset of its window.

  A grain random-access source: `len()` and `[n]` give the offset (int) of local sample n; local
  sample n is row `n % rows` of local batch `n // rows`, `rows = world_size * micro_bsz /
  shard_count`.

  Attributes:
    sampler: "magic_prime" or "shuffle".
    num_tokens, ctx_len: the token stream length and window stride.
    micro_bsz, world_size: RWKV-LM's per-rank batch and rank count.
    shard_index, shard_count: this process and the number of processes.
    magic_prime: the prime (magic_prime sampler).
    epoch_begin: first mini-epoch (magic_prime) or data epoch (shuffle).
    seed: shuffle seed, in [0, 2**32).
    num_epochs: epochs to yield, or None for an endless stream.
  """
  sampler: str
  num_tokens: int
  ctx_len: int
  micro_bsz: int
  world_size: int = 1
  shard_index: int = 0
  shard_count: int = 1
  magic_prime: int | None = None
  epoch_begin: int = 0
  seed: int = 0
  num_epochs: int | None = None

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
    if self.world_size % self.shard_count:
      raise ValueError(f"world_size={self.world_size} must be a multiple of "
                       f"shard_count={self.shard_count}")
    if not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f"shard_index={self.shard_index} not in [0, {self.shard_count})")
    if self.sampler == "magic_prime":
      if self.magic_prime is None:
        raise ValueError("the magic_prime sampler needs magic_prime (see compute_magic_prime)")
      epoch_steps(self.world_size, self.micro_bsz)
      check_magic_prime(self.magic_prime, self.num_tokens, self.ctx_len)
    else:
      if not 0 <= self.seed < 2**32:
        raise ValueError(f"seed={self.seed} must be in [0, 2**32)")
      if self.steps_per_epoch < 1:
        raise ValueError(f"{self.num_windows} windows of ctx_len={self.ctx_len} do not fill one "
                         f"global batch of {self.world_size * self.micro_bsz}")

  @property
  def rows(self) -> int:
    """Rows of this process's batch."""
    return self.world_size * self.micro_bsz // self.shard_count

  @property
  def num_windows(self) -> int:
    """Windows one epoch visits: magic_prime p, or every full window for shuffle."""
    if self.sampler == "magic_prime":
      return self.magic_prime
    return (self.num_tokens - 1) // self.ctx_len

  @property
  def steps_per_epoch(self) -> int:
    if self.sampler == "magic_prime":
      return epoch_steps(self.world_size, self.micro_bsz)
    return self.num_windows // (self.world_size * self.micro_bsz)

  def __len__(self) -> int:
    if self.num_epochs is None:
      return sys.maxsize
    return self.num_epochs * self.steps_per_epoch * self.rows

  def __getitem__(self, n: int) -> int:
    step, row = divmod(n, self.rows)
    epoch, step = divmod(step, self.steps_per_epoch)
    epoch += self.epoch_begin
    global_row = self.shard_index * self.rows + row
    if self.sampler == "magic_prime":
      rank, j = divmod(global_row, self.micro_bsz)
      ii = 1 + epoch * MINI_EPOCH_SAMPLES + (step * self.micro_bsz + j) * self.world_size + rank
      return magic_prime_window(ii, self.magic_prime) * self.ctx_len
    i = step * self.world_size * self.micro_bsz + global_row
    window = grain_experimental.index_shuffle(
        i, max_index=self.num_windows - 1, seed=(self.seed + epoch) % 2**32, rounds=4)
    return window * self.ctx_len
