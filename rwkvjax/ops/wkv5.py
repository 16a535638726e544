"""Public WKV-5 op (RWKV-5.2 "Eagle", x052) and its reference backend.

The same recurrence as WKV-6 (`rwkvjax.ops.wkv6`) with a decay that is constant over time: `w` is the
per-head-channel log-decay [H, N] (<= 0; RWKV-5.2 passes w = -exp(time_decay)). Layout: r, k, v [B, T, H, N],
u [H, N], state [B, H, K, V] float32 = the official S[key, value]. Per head and token:

    o_t = S_{t-1}^T r_t + (sum_i r_t[i] u[i] k_t[i]) v_t
    S_t = diag(exp(w)) S_{t-1} + k_t v_t^T

To call fla (which has no RWKV-5 op) pass `jnp.broadcast_to(w, r.shape)` to its rwkv6 ops.
Backends receive w as [H, N]; they may broadcast it and reuse a WKV-6 path.
"""

from __future__ import annotations

import jax.numpy as jnp

from rwkvjax.ops.api import dispatch
from rwkvjax.ops.wkv6 import check_inputs, wkv6_reference


def wkv5(r, w, k, v, u, initial_state=None, *, segment_ids=None, reset_state=None, impl: str = "auto"):
  """The RWKV-5.2 WKV recurrence (time-constant diagonal decay plus the bonus u).

  Args:
    r, k, v: [B, T, H, N] float arrays of one dtype (float32 or bfloat16).
    w: [H, N] log-decay (<= 0), constant over time and batch; any float dtype.
    u: [H, N] bonus for the current token (`time_faaaa`).
    initial_state: optional [B, H, K, V] float32 state before the first token (zeros if None).
    segment_ids: optional [B, T] ints; where the id changes the state restarts from `reset_state` (zero if
      None) (packed documents). Position 0 starts from `initial_state`.
    reset_state: optional float32 [B, H, K, V] or [1, H, K, V]: the state packed segments restart from (see
      `rwkvjax.ops.wkv6`). Needs segment_ids.
    impl: "auto" or a registered backend name ("reference", "chunked", ...); see `wkv6` for reset_state.

  Returns:
    o: [B, T, H, N] in the dtype of r; final_state: [B, H, K, V] float32.
  """
  check_inputs("wkv5", r, w, k, v, u, initial_state, segment_ids, reset_state, w_shape=r.shape[2:])
  return dispatch("wkv5", impl, r, w, k, v, u, initial_state, segment_ids, reset_state=reset_state)


def broadcast_decay(w, r):
  """[H, N] -> [B, T, H, N] float32 (the WKV-6 form of a WKV-5 decay)."""
  return jnp.broadcast_to(w.astype(jnp.float32), r.shape)


def wkv5_reference(r, w, k, v, u, initial_state, segment_ids, reset_state=None):
  """See `wkv5` for the contract: the WKV-6 reference scan with the decay broadcast over time."""
  return wkv6_reference(r, broadcast_decay(w, r), k, v, u, initial_state, segment_ids, reset_state)
