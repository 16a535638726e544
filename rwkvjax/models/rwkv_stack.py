"""The model skeleton shared by RWKV-5.2, RWKV-6 and RWKV-7 (`rwkvjax.models.rwkv5`, `rwkv6`, `rwkv7`).

emb -> ln0 -> the blocks (stacked on a leading layer axis, run under `lax.scan` or unrolled, optionally
rematerialised) ->
ln_out -> head. A block is x += time_mix(ln1(x)); x += channel_mix(ln2(x)); each version supplies its two mixes.

Recurrent state (`init_state`), per layer, all float32:
  att_x_prev [L, B, C]       ln1 output of the previous token (time-mix token shift)
  wkv        [L, B, H, K, V] WKV state in the op's [K, V] layout
  ffn_x_prev [L, B, C]       ln2 output of the previous token (channel-mix token shift)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rwkvjax.config.model import ModelConfig
from rwkvjax.models import layers
from rwkvjax.ops.reference import segment_starts
from rwkvjax.training.sharding import constrain

Params = dict[str, Any]
State = dict[str, jax.Array]

REMAT_POLICIES = {"block": None, "block_save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}

__all__ = ["init_state", "forward", "one_token_step", "REMAT_POLICIES"]


def init_state(cfg: ModelConfig, batch: int) -> State:
  """The zero recurrent state (a fresh sequence)."""
  L, C, H, N = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size
  return {
      "att_x_prev": jnp.zeros((L, batch, C), jnp.float32),
      "wkv": jnp.zeros((L, batch, H, N, N), jnp.float32),
      "ffn_x_prev": jnp.zeros((L, batch, C), jnp.float32),
  }


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, state: State | None, *, segment_ids, reset_state,
            remat: str, time_mix: Callable, channel_mix: Callable, carry_init: Callable = lambda x: None,
            scan_layers: bool = True) -> tuple[jax.Array, State]:
  """Runs the model over a sequence.

  Args:
    params: the parameter tree (float32 or any float dtype; cast to cfg.compute_dtype for compute).
    tokens: [B, T] int token ids.
    state: the recurrent state before tokens[:, 0] (`init_state`); None means a fresh sequence.
    segment_ids: optional [B, T] ints; where the id changes, token shift and WKV state restart (packed
      documents): the token shift from zero, the WKV state from `reset_state` (zero if None). Position 0
      continues from `state`.
    reset_state: optional [L, B, H, K, V] float32, or [L, 1, H, K, V] for every row: per layer, the WKV state
      (the op's [K, V] layout) that documents after the first restart from. Needs segment_ids.
    remat: "none", or recompute each block in the backward pass: "block" (save nothing inside the block)
      or "block_save_dots" (save matmul outputs).
    time_mix: (p_att, h [B, T, C] ln1 output, x_prev [B, C], wkv_state [B, H, K, V], starts [B, T] bool or None,
      reset [B or 1, H, K, V] or None, carry, layer int32 scalar) -> (out [B, T, C], wkv_state, carry).
    channel_mix: (p_ffn, h2 [B, T, C] ln2 output, x_prev [B, C], starts) -> out [B, T, C].
    carry_init: the value carried through the layers (RWKV-7's v_first) from the embedded x [B, T, C].
    scan_layers: run the blocks under lax.scan (True) or unrolled (`layers.layer_loop`).
  Returns:
    logits [B, T, V] float32, and the state after the last token.
  """
  if tokens.ndim != 2:
    raise ValueError(f"forward: tokens has shape {tokens.shape}; expected [B, T]")
  layers.check_reset_state(reset_state, cfg.n_layer)
  B, T = tokens.shape
  cdt = jnp.dtype(cfg.compute_dtype)
  if state is None:
    state = init_state(cfg, B)
  starts = segment_starts(segment_ids, B, T) if segment_ids is not None else None

  x = jnp.take(jnp.asarray(params["emb"]["weight"], cdt), tokens, axis=0)
  x = layers.layer_norm(x, params["ln0"]["weight"], params["ln0"]["bias"])
  x = constrain(x, ("batch", None, "act_embed"))

  def block(carry, inputs):
    x, extra = carry
    x = constrain(x, ("batch", None, "act_embed"))
    p, layer, att_x_prev, wkv_state, ffn_x_prev, reset = inputs
    h = layers.layer_norm(x, p["ln1"]["weight"], p["ln1"]["bias"])
    att, wkv_state, extra = time_mix(p["att"], h, att_x_prev, wkv_state, starts, reset, extra, layer)
    x = x + att
    h2 = layers.layer_norm(x, p["ln2"]["weight"], p["ln2"]["bias"])
    x = x + channel_mix(p["ffn"], h2, ffn_x_prev, starts)
    return (x, extra), (h[:, -1].astype(jnp.float32), wkv_state, h2[:, -1].astype(jnp.float32))

  if remat != "none":
    if remat not in REMAT_POLICIES:
      raise ValueError(f"forward: remat={remat!r}; expected 'none' or one of {sorted(REMAT_POLICIES)}")
    block = jax.checkpoint(block, policy=REMAT_POLICIES[remat])
  xs = (params["blocks"], jnp.arange(cfg.n_layer), state["att_x_prev"], state["wkv"], state["ffn_x_prev"],
        reset_state)
  (x, _), (att_x_prev, wkv_state, ffn_x_prev) = layers.layer_loop(block, (x, carry_init(x)), xs, scan=scan_layers)

  x = layers.layer_norm(x, params["ln_out"]["weight"], params["ln_out"]["bias"])
  logits = layers.head_logits(x, params["head"]["weight"].astype(cdt))
  logits = constrain(logits, ("batch", None, "act_vocab"))
  return logits, {"att_x_prev": att_x_prev, "wkv": wkv_state, "ffn_x_prev": ffn_x_prev}



def one_token_step(forward: Callable) -> Callable:
  """The recurrent `step(params, cfg, token, state, *, impl="auto")` of a model's sequence `forward`: one token
  [B] ints -> (logits [B, V] float32, the next state)."""
  def step(params: Params, cfg: ModelConfig, token: jax.Array, state: State, *, impl: str = "auto"
           ) -> tuple[jax.Array, State]:
    """One recurrent step: token [B] ints -> logits [B, V] float32 and the next state."""
    logits, state = forward(params, cfg, token[:, None], state, impl=impl)
    return logits[:, 0], state
  return step
