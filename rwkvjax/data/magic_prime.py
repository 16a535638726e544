"""RWKV-LM's magic prime: the prime that turns sample numbers into a window permutation.

With `p` the largest prime `p = 2 (mod 3)`, `p <= num_tokens // ctx_len - 1`, RWKV-LM's sample
`ii` reads window `(floor(p * (sqrt(5) - 1) / 2) * ii**3) mod p`. Cubing is a bijection mod p when
p = 2 (mod 3), so ii = 1..p visits each of the first p windows once. This module has no grain/JAX
import, so tokeniser worker processes stay light.
"""

from __future__ import annotations

import math

MINI_EPOCH_SAMPLES = 40320  # 8!: RWKV-LM's samples per "epoch"

_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)  # exact for n < 3.3e24


def is_prime(n: int) -> bool:
  """Deterministic Miller-Rabin primality test (exact for n < 3.3e24)."""
  if n < 2:
    return False
  for p in _MR_BASES:
    if n % p == 0:
      return n == p
  d, s = n - 1, 0
  while d % 2 == 0:
    d, s = d // 2, s + 1
  for a in _MR_BASES:
    x = pow(a, d, n)
    if x in (1, n - 1):
      continue
    for _ in range(s - 1):
      x = x * x % n
      if x == n - 1:
        break
    else:
      return False
  return True


def compute_magic_prime(num_tokens: int, ctx_len: int) -> int:
  """The largest prime p = 2 (mod 3) with p <= num_tokens / ctx_len - 1.

  Raises:
    ValueError: if the data holds fewer than 3 windows (no such prime).
  """
  p = num_tokens // ctx_len - 1
  p -= (p - 2) % 3  # largest value = 2 (mod 3) not above the bound
  while p >= 2:
    if is_prime(p):
      return p
    p -= 3
  raise ValueError(f"{num_tokens} tokens give fewer than 3 windows of ctx_len={ctx_len}: "
                   "no magic prime exists")


def check_magic_prime(magic_prime: int, num_tokens: int, ctx_len: int) -> None:
  """RWKV-LM's checks on a user-given magic prime, plus that its last window fits the data.

  Raises:
    ValueError: saying which condition fails.
  """
  slots = num_tokens // ctx_len
  if not is_prime(magic_prime) or magic_prime % 3 != 2:
    raise ValueError(f"magic_prime={magic_prime} must be a prime = 2 (mod 3)")
  if not 0.9 * slots < magic_prime <= slots:
    raise ValueError(f"magic_prime={magic_prime} must be in (0.9, 1] x num_tokens // ctx_len = "
                     f"{slots} (RWKV-LM's rule); compute_magic_prime gives "
                     f"{compute_magic_prime(num_tokens, ctx_len)}")
  if magic_prime * ctx_len + 1 > num_tokens:
    raise ValueError(f"magic_prime={magic_prime}: its last window ends at token "
                     f"{magic_prime * ctx_len + 1} > {num_tokens} tokens")


def magic_prime_window(ii: int, magic_prime: int) -> int:
  """Window number (token offset / ctx_len) of RWKV-LM sample `ii`, with its float factor."""
  factor = int(magic_prime * ((math.sqrt(5) - 1) / 2))
  return factor * pow(ii, 3, magic_prime) % magic_prime


def epoch_steps(world_size: int, micro_bsz: int) -> int:
  """Steps per RWKV-LM mini-epoch, 40320 / (world_size * micro_bsz).

  Raises:
    ValueError: if world_size * micro_bsz does not divide 40320 (RWKV-LM asserts the same).
  """
  real_bsz = world_size * micro_bsz
  if MINI_EPOCH_SAMPLES % real_bsz:
    raise ValueError(f"world_size * micro_bsz = {real_bsz} must divide {MINI_EPOCH_SAMPLES} for "
                     "the magic_prime sampler (RWKV-LM's mini-epoch)")
  return MINI_EPOCH_SAMPLES // real_bsz
