"""XLA glue of the chunked Pallas backends: time padding, the [B, T, H, N] <-> [B, H, C, L, N] chunk layout, the
per-chunk segment index of document resets, and vmap over chunks."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

F32 = jnp.float32

__all__ = ["segment_index", "pad_time", "to_chunks", "from_chunks", "vmap_chunks"]


def segment_index(segment_ids, B: int, T: int, L: int):
  """[B, C, L] float32: per token, the number of segment starts in its chunk up to and including it (0 = the
  token still sees the state entering the chunk). Padded tail tokens (T up to C*L) continue the last segment.
  segment_ids: [B, T] integer or None (one segment)."""
  C = -(-T // L)
  if segment_ids is None:
    return jnp.zeros((B, C, L), F32)
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  starts = jnp.concatenate([jnp.zeros((B, 1), bool), change], axis=1)
  starts = jnp.pad(starts, ((0, 0), (0, C * L - T)))
  return jnp.cumsum(starts.reshape(B, C, L).astype(jnp.int32), axis=-1).astype(F32)


def pad_time(x, Tp: int):
  """x [B, T, ...] zero-padded along time to [B, Tp, ...] (Tp >= T), any dtype kept."""
  T = x.shape[1]
  return x if Tp == T else jnp.pad(x, ((0, 0), (0, Tp - T)) + ((0, 0),) * (x.ndim - 2))


def to_chunks(x, L: int):
  """[B, T, H, N] -> [B, H, C, L, N] (zero-padded tail), any dtype kept."""
  B, T, H, N = x.shape
  C = -(-T // L)
  x = pad_time(x, C * L)
  return x.reshape(B, C, L, H, N).transpose(0, 3, 1, 2, 4)


def from_chunks(x, T: int):
  """[B, H, C, L, N] -> [B, T, H, N]."""
  B, H, C, L, N = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(B, C * L, H, N)[:, :T]


def vmap_chunks(fn: Callable, n_batch_dims: int = 3):
  """vmap a 2-D chunk function over leading [B, H, C] dims."""
  for _ in range(n_batch_dims):
    fn = jax.vmap(fn)
  return fn
