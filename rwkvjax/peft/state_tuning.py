"""State tuning: a learnable initial WKV state per layer (RWKV-PEFT `--train_type state`).

The parameter `blocks.att.time_state` holds, for every layer l, RWKV-PEFT's `blocks.{l}.att.time_state`
[H, N, N] in its layout [head, value, key] (the official RWKV-7 state S[value, key]; for RWKV-5/6 the
official S[key, value] is its transpose, which is what the `rwkv` package loads). The models' recurrent
state keeps the WKV op's [B, H, K, V] layout, so the learned state enters the forward as
`swapaxes(time_state, -1, -2)` broadcast over the batch, for every version. Token-shift states stay zero,
as in RWKV-PEFT. In packed rows every document starts from the learned state: the same states are the
forward's `reset_state` (`wkv_states`), which the WKV op restarts from where segment_ids change.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

from rwkvjax.models.params import ParamSpec

STATE_NAME = "blocks.att.time_state"
STATE_PTH_KEY = "blocks.{l}.att.time_state"


def state_spec(cfg: Any) -> ParamSpec:
  """The ParamSpec of the learned state: [H, N, N] per layer, zero-init, no weight decay."""
  H, N = cfg.n_head, cfg.head_size
  return ParamSpec(STATE_NAME, (H, N, N), ("heads", "head_dim", "head_dim"),
                   lambda key, layer, c: jnp.zeros((H, N, N), jnp.float32), True, STATE_PTH_KEY, (H, N, N))


def wkv_states(time_state: jax.Array) -> jax.Array:
  """Learned states in the models' WKV layout: time_state [L, H, N, N] in RWKV-PEFT's layout (one state for
  every sequence) -> [L, 1, H, K, V] float32, or [B, L, H, N, N] (a state per sequence) -> [L, B, H, K, V].
  This is the `reset_state` of the models' forward."""
  time_state = jnp.asarray(time_state, jnp.float32)
  if time_state.ndim == 5:
    return jnp.moveaxis(jnp.swapaxes(time_state, -1, -2), 0, 1)
  if time_state.ndim == 4:
    return jnp.swapaxes(time_state, -1, -2)[:, None]
  raise ValueError(f"time_state has shape {time_state.shape}; expected [L, H, N, N] or [B, L, H, N, N]")


def initial_state(model: ModuleType, cfg: Any, time_state: jax.Array, batch: int | None = None) -> dict[str, Any]:
  """The model's recurrent state before the first token, with the WKV part set from learned states.

  Args:
    model: the model module (`get_model(cfg.version)`); its `init_state(cfg, B)` must hold "wkv"
      [L, B, H, K, V].
    time_state: [L, H, N, N] in RWKV-PEFT's layout (one state for every sequence), or [B, L, H, N, N]
      (a state per sequence).
    batch: B; needed when time_state has no batch axis.
  """
  wkv = wkv_states(time_state)
  if jnp.ndim(time_state) == 5:
    batch = wkv.shape[1] if batch is None else batch
    if wkv.shape[1] != batch:
      raise ValueError(f"per-sequence time_state has batch {wkv.shape[1]}; expected {batch}")
  elif batch is None:
    raise ValueError("initial_state: give `batch` for a time_state without a batch axis")
  state = model.init_state(cfg, batch)
  if "wkv" not in state:
    raise ValueError(f"model {model.__name__} has no 'wkv' entry in its recurrent state ({sorted(state)})")
  want = state["wkv"].shape
  if (want[0],) + want[2:] != (wkv.shape[0],) + wkv.shape[2:]:
    raise ValueError(f"time_state gives WKV states {wkv.shape[:1] + wkv.shape[2:]} per sequence; the model "
                     f"needs [L, H, K, V] = {(want[0],) + want[2:]}")
  state["wkv"] = jnp.broadcast_to(wkv, want).astype(state["wkv"].dtype)
  return state
