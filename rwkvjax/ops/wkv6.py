"""Public WKV-6 op (RWKV-6 "Finch", x060) and its reference backend (a float32 `lax.scan` over tokens).

Layout (FLA's, as `fla.ops.rwkv6.chunk_rwkv6(r, k, v, w, u, scale=1.0, ...)`): r, k, v, w are [B, T, H, N];
`w` is the log-decay (<= 0, unbounded below: RWKV-6 passes w = -exp(time_decay + LoRA)); `u` is the per-head
bonus [H, N] (RWKV-LM's `time_faaaa`). The state is [B, H, K, V] float32 with K = V = N, which is also the
official RWKV-5/6 layout S[key, value] (unlike RWKV-7, no transpose). Per head and token:

    o_t = S_{t-1}^T r_t + (sum_i r_t[i] u[i] k_t[i]) v_t        (the current token enters through u only)
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T                    (S_{-1} = initial_state or 0)

There is no 1/sqrt(N) scale (fla's naive ops default to one; RWKV uses scale 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rwkvjax.ops.api import check_state_inputs, dispatch
from rwkvjax.ops.reference import segment_starts


def check_inputs(op: str, r, w, k, v, u, initial_state, segment_ids, reset_state, *, w_shape=None) -> None:
  """Shape/dtype checks shared by wkv5 and wkv6; `w_shape` overrides the expected shape of w."""
  for name, x in (("r", r), ("k", k), ("v", v)) + (() if w_shape else (("w", w),)):
    if x.ndim != 4:
      raise ValueError(f"{op}: {name} has shape {x.shape}; expected [B, T, H, N]")
    if x.shape != r.shape:
      raise ValueError(f"{op}: {name} has shape {x.shape}; expected the shape of r, {r.shape}")
  H, N = r.shape[2:]
  if w_shape is not None and tuple(w.shape) != tuple(w_shape):
    raise ValueError(f"{op}: w has shape {w.shape}; expected [H, N] = {tuple(w_shape)}")
  if tuple(u.shape) != (H, N):
    raise ValueError(f"{op}: u has shape {u.shape}; expected [H, N] = {(H, N)}")
  check_state_inputs(op, initial_state, segment_ids, reset_state, r.shape)


def wkv6(r, w, k, v, u, initial_state=None, *, segment_ids=None, reset_state=None, impl: str = "auto"):
  """The RWKV-6 WKV recurrence (diagonal, data-dependent decay plus the bonus u).

  Args:
    r, k, v: [B, T, H, N] float arrays of one dtype (float32 or bfloat16).
    w: [B, T, H, N] log-decay (<= 0), any float dtype (the models pass float32). Unbounded below.
    u: [H, N] bonus for the current token (`time_faaaa`), any float dtype.
    initial_state: optional [B, H, K, V] float32 state before the first token (zeros if None).
    segment_ids: optional [B, T] ints; where the id changes from t-1 to t the state restarts from
      `reset_state` (zero if None) before token t (packed documents). Position 0 starts from `initial_state`.
    reset_state: optional float32 [B, H, K, V], or [1, H, K, V] for every row: the state each packed segment
      after the first starts from (state tuning: the learned state). Needs segment_ids. Its gradient is the
      sum of the state adjoints entering every restart (and over the batch when it is [1, H, K, V]).
    impl: "auto" or a registered backend name ("reference", "chunked", ...). With a reset_state, "auto"
      picks a backend that supports one, and naming one that does not raises NotImplementedError.

  Returns:
    o: [B, T, H, N] in the dtype of r.
    final_state: [B, H, K, V] float32, the state after the last token.
  """
  check_inputs("wkv6", r, w, k, v, u, initial_state, segment_ids, reset_state)
  return dispatch("wkv6", impl, r, w, k, v, u, initial_state, segment_ids, reset_state=reset_state)


def wkv6_reference(r, w, k, v, u, initial_state, segment_ids, reset_state=None):
  """See `wkv6` for the contract. All arithmetic in float32.

  reset_state: None (segments restart from zero) or [B or 1, H, K, V], the state they restart from.
  """
  B, T, H, N = r.shape
  out_dtype = r.dtype
  f32 = jnp.float32
  state = jnp.zeros((B, H, N, N), f32) if initial_state is None else initial_state.astype(f32)
  restart = None if reset_state is None else reset_state.astype(f32)
  # 1 where the state carries over, 0 at a segment start (a [B] multiplier per step: cheaper to save for the
  # backward pass than a state-sized select mask).
  keep = 1.0 - segment_starts(segment_ids, B, T).astype(f32)
  u = u.astype(f32)

  def to_time_major(x):
    return jnp.moveaxis(x.astype(f32), 1, 0)  # [T, B, H, N]

  xs = tuple(to_time_major(x) for x in (r, w, k, v)) + (jnp.moveaxis(keep, 1, 0),)

  def step(S, inputs):
    r_t, w_t, k_t, v_t, keep_t = inputs
    if segment_ids is not None:
      S = S * keep_t[:, None, None, None]
    if restart is not None:
      S = S + (1.0 - keep_t[:, None, None, None]) * restart
    bonus = (r_t * u * k_t).sum(-1, keepdims=True) * v_t
    o_t = jnp.einsum("bhk,bhkv->bhv", r_t, S, precision=jax.lax.Precision.HIGHEST) + bonus
    S = jnp.exp(w_t)[..., None] * S + k_t[..., None] * v_t[..., None, :]
    return S, o_t

  state, o = jax.lax.scan(step, state, xs)
  return jnp.moveaxis(o, 0, 1).astype(out_dtype), state
