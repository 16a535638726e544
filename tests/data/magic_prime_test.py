"""RWKV-LM's magic prime and its sample order, reproduced exactly."""

import math

import numpy as np
import pytest

from rwkvjax.data.magic_prime import (MINI_EPOCH_SAMPLES, check_magic_prime, compute_magic_prime,
                                      epoch_steps, is_prime, magic_prime_window)
from rwkvjax.data.sampling import WindowSampler


def rwkvlm_offset(epoch, idx, rank, world_size, magic_prime, ctx_len):
  """RWKV-LM train_temp/src/dataset.py MyDataset.__getitem__, transcribed."""
  ii = 1 + epoch * MINI_EPOCH_SAMPLES + (idx * world_size) + rank
  factor = (math.sqrt(5) - 1) / 2
  factor = int(magic_prime * factor)
  return ((factor * ii * ii * ii) % magic_prime) * ctx_len


def rwkvlm_global_batch(epoch, step, world_size, micro_bsz, magic_prime, ctx_len):
  """Offsets RWKV-LM's ranks read at one step (DataLoader batch_size=micro_bsz, no shuffle)."""
  return [rwkvlm_offset(epoch, step * micro_bsz + j, rank, world_size, magic_prime, ctx_len)
          for rank in range(world_size) for j in range(micro_bsz)]


def test_minipile_demo_prime():
  assert compute_magic_prime(1498226207, 512) == 2926181


def test_is_prime_matches_a_sieve():
  n = 20000
  sieve = np.ones(n, bool)
  sieve[:2] = False
  for i in range(2, int(n**0.5) + 1):
    sieve[i * i::i] = False
  assert [is_prime(i) for i in range(n)] == sieve.tolist()
  assert is_prime(2**61 - 1) and not is_prime(2**61 + 1) and not is_prime(3215031751)


@pytest.mark.parametrize("num_tokens,ctx_len", [(10_000, 7), (123_457, 64), (3 * 512, 512),
                                                (51_200, 512)])
def test_compute_magic_prime_is_largest_valid(num_tokens, ctx_len):
  p = compute_magic_prime(num_tokens, ctx_len)
  bound = num_tokens / ctx_len - 1
  assert is_prime(p) and p % 3 == 2 and p <= bound
  assert not any(is_prime(q) and q % 3 == 2 for q in range(p + 1, int(bound) + 1))


def test_too_little_data_for_a_prime():
  with pytest.raises(ValueError, match="fewer than 3 windows"):
    compute_magic_prime(2 * 512 + 500, 512)


@pytest.mark.parametrize("p", [5, 11, 101, 2003])
def test_cubic_order_is_a_permutation(p):
  assert sorted(magic_prime_window(ii, p) for ii in range(1, p + 1)) == list(range(p))


def test_check_magic_prime():
  num_tokens, ctx_len = 1_000_000, 100
  check_magic_prime(compute_magic_prime(num_tokens, ctx_len), num_tokens, ctx_len)
  with pytest.raises(ValueError, match="prime = 2"):
    check_magic_prime(9997, num_tokens, ctx_len)
  with pytest.raises(ValueError, match=r"in \(0.9, 1\]"):
    check_magic_prime(8009, num_tokens, ctx_len)
  with pytest.raises(ValueError, match="last window ends"):
    check_magic_prime(5, 500, 100)  # p = slots: the window at (p-1)*ctx_len lacks one token


def test_epoch_steps():
  assert epoch_steps(8, 16) == 315 and epoch_steps(1, 1) == 40320
  with pytest.raises(ValueError, match="must divide 40320"):
    epoch_steps(3, 11)


@pytest.mark.parametrize("world_size,micro_bsz,shard_count", [(1, 4, 1), (4, 2, 1), (4, 2, 2),
                                                              (4, 2, 4), (8, 3, 2)])
def test_reproduces_rwkvlm_sample_order(world_size, micro_bsz, shard_count):
  num_tokens, ctx_len = 200_003, 16
  p = compute_magic_prime(num_tokens, ctx_len)
  samplers = [WindowSampler("magic_prime", num_tokens, ctx_len, micro_bsz, world_size, shard,
                            shard_count, magic_prime=p, epoch_begin=2)
              for shard in range(shard_count)]
  rows = samplers[0].rows
  steps = epoch_steps(world_size, micro_bsz)
  for k in [0, 1, 5, steps - 1, steps, steps + 3]:  # across a mini-epoch boundary
    ours = [s[k * rows + r] for s in samplers for r in range(rows)]
    epoch, step = divmod(k, steps)
    assert ours == rwkvlm_global_batch(2 + epoch, step, world_size, micro_bsz, p, ctx_len), k


def test_magic_prime_sampler_lengths():
  s = WindowSampler("magic_prime", 100_000, 10, 4, 2, magic_prime=compute_magic_prime(100_000, 10),
                    num_epochs=2)
  assert s.rows == 8 and s.steps_per_epoch == 5040 and len(s) == 2 * 5040 * 8
  assert len(WindowSampler("magic_prime", 100_000, 10, 4, 2,
                           magic_prime=compute_magic_prime(100_000, 10))) > 10**15


def test_shuffle_sampler_is_a_permutation_per_epoch_and_shard_invariant():
  num_tokens, ctx_len, micro_bsz, world_size = 10_001, 10, 4, 2
  whole = WindowSampler("shuffle", num_tokens, ctx_len, micro_bsz, world_size, seed=7)
  assert whole.num_windows == 1000 and whole.steps_per_epoch == 125
  per_epoch = 125 * 8
  epochs = [[whole[e * per_epoch + n] for n in range(per_epoch)] for e in range(2)]
  for offsets in epochs:
    assert sorted(offsets) == [w * ctx_len for w in range(1000)]
  assert epochs[0] != epochs[1]
  halves = [WindowSampler("shuffle", num_tokens, ctx_len, micro_bsz, world_size, shard, 2, seed=7)
            for shard in range(2)]
  for k in range(0, 250, 37):
    assert [h[k * 4 + r] for h in halves for r in range(4)] == [whole[k * 8 + r] for r in range(8)]
  assert epochs[0] != [WindowSampler("shuffle", num_tokens, ctx_len, micro_bsz, world_size,
                                     seed=8)[n] for n in range(per_epoch)]


@pytest.mark.parametrize("kwargs,problem", [
    (dict(sampler="random"), "sampler must be one of"),
    (dict(world_size=3, shard_count=2), "multiple of shard_count"),
    (dict(shard_index=2, shard_count=2, world_size=2), r"shard_index=2 not in \[0, 2\)"),
    (dict(magic_prime=None), "needs magic_prime"),
    (dict(micro_bsz=11), "must divide 40320"),
    (dict(sampler="shuffle", seed=-1), r"seed=-1"),
    (dict(sampler="shuffle", micro_bsz=20000), "do not fill one global batch"),
])
def test_sampler_argument_errors(kwargs, problem):
  args = dict(sampler="magic_prime", num_tokens=100_000, ctx_len=10, micro_bsz=4,
              magic_prime=compute_magic_prime(100_000, 10)) | kwargs
  with pytest.raises(ValueError, match=problem):
    WindowSampler(**args)
