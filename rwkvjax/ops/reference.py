"""Reference WKV-7 backend: a float32 `lax.scan` over tokens. The oracle every other backend matches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_starts(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
  """[B, T] bool, True where a new segment starts at t > 0 (the id differs from the one at t-1)."""
  if segment_ids is None:
    return jnp.zeros((batch, length), bool)
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.concatenate([jnp.zeros((batch, 1), bool), change], axis=1)


def wkv7_reference(r, w, k, v, a, b, initial_state, segment_ids, reset_state=None):
  """See `rwkvjax.ops.wkv7` for the contract. All arithmetic in float32.

  reset_state: None (segments restart from zero) or [B or 1, H, K, V], the state they restart from.
  """
  B, T, H, N = r.shape
  out_dtype = r.dtype
  state = jnp.zeros((B, H, N, N), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
  restart = 0.0 if reset_state is None else reset_state.astype(jnp.float32)
  starts = segment_starts(segment_ids, B, T)

  def to_time_major(x):
    return jnp.moveaxis(x.astype(jnp.float32), 1, 0)  # [T, B, H, N]

  xs = tuple(to_time_major(x) for x in (r, w, k, v, a, b)) + (jnp.moveaxis(starts, 1, 0),)

  def step(S, inputs):
    r_t, w_t, k_t, v_t, a_t, b_t, start_t = inputs
    S = jnp.where(start_t[:, None, None, None], restart, S)
    sa = jnp.einsum("bhk,bhkv->bhv", a_t, S)
    S = jnp.exp(w_t)[..., None] * S + b_t[..., None] * sa[..., None, :] + k_t[..., None] * v_t[..., None, :]
    o_t = jnp.einsum("bhk,bhkv->bhv", r_t, S)
    return S, o_t

  state, o = jax.lax.scan(step, state, xs)
  return jnp.moveaxis(o, 0, 1).astype(out_dtype), state
