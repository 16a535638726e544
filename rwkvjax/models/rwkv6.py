"""RWKV-6 "Finch" (x060) as pure functions over a parameter tree (§4 of specs/rwkv_architecture.md).

Parameter names are RWKV-LM's state-dict keys (see `param_specs`); per-block tensors are stacked on a
leading layer axis and the blocks run under `lax.scan` (the skeleton is shared with `rwkvjax.models.rwkv5`).

Recurrent state (`init_state`), per layer, all float32:
  att_x_prev [L, B, C]       ln1 output of the previous token (time-mix token shift)
  wkv        [L, B, H, K, V] WKV state S[key, value]: the op's layout and also the official v5/v6 layout
  ffn_x_prev [L, B, C]       ln2 output of the previous token (channel-mix token shift)

Differences from x052: the mix convention x + (x_prev - x) * mu; the data-dependent token shift ("ddlerp")
through the time_maa LoRA (slabs of time_maa_w2 in the order w, k, v, r, g); a per-token decay
w_t = exp(-exp(time_decay + tanh(x_w @ time_decay_w1) @ time_decay_w2)), unbounded on both sides.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rwkvjax.config.model import ModelConfig
from rwkvjax.models import layers, rwkv_stack
from rwkvjax.models.params import ParamSpec, init_params
from rwkvjax.models.rwkv5 import (SpecTable, block_flops_per_token, decay_speed, ffn_out, init_state, ln_x,
                                  official_state, run_blocks, time_faaaa_init)
from rwkvjax.models.rwkv_init import ddd, ratios, uniform, zeros
from rwkvjax.ops import wkv6
from rwkvjax.training.sharding import constrain

Params = dict
State = dict

MIX_BRANCHES = "wkvrg"  # slab order of time_maa_w2 (RWKV-LM: mw, mk, mv, mr, mg = xxx.unbind(dim=0))

__all__ = ["param_specs", "init", "init_state", "forward", "step", "official_state", "forward_flops_per_token",
           "time_mix", "channel_mix"]


# ----------------------------------------------------------------------------------------------------
# Official initialisation (RWKV-LM RWKV-v5/src/model.py RWKV_Tmix_x060/RWKV_CMix_x060 + generate_init_weight)
# ----------------------------------------------------------------------------------------------------

def _maa_init(power: float, offset: float = 0.0):
  """time_maa_* = 1 - (ddd ** (power * ratio_1_to_almost0) + offset * ratio_0_to_1)."""
  def init(key, layer, cfg):
    del key
    r0, r1 = ratios(layer, cfg)
    return 1.0 - (ddd(cfg.n_embd) ** (power * r1) + offset * r0)
  return init


def _ffn_maa_init(key, layer, cfg):
  """ffn.time_maa_k/r = 1 - ddd ** (ratio_1_to_almost0 ** 3)."""
  del key
  return 1.0 - ddd(cfg.n_embd) ** (ratios(layer, cfg)[1] ** 3)


def _time_decay_init(key, layer, cfg):
  del key
  return decay_speed(cfg, layer)


# ----------------------------------------------------------------------------------------------------
# The ParamSpec table
# ----------------------------------------------------------------------------------------------------

def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
  """Every RWKV-6 parameter, in RWKV-LM's state-dict order. Logical axes: vocab, embed (model width as
  input), att (time-mix channels, C = H*N), heads, head_dim, mlp (channel-mix width), lora, and
  mix_branch (the 5 slabs w, k, v, r, g of time_maa_w2).

  Optimizer tags follow RWKV-LM RWKV-v5 `configure_optimizers` (layerwise_lr=1, my_pile_stage=1): names
  with _w1/_w2 (the LoRAs) 1x LR; time_maa_* 1x; time_decay 2x; time_faaaa 1x; weight decay only on
  >= 2-D `.weight` matrices (the LoRAs have no `.weight`, so no decay).
  """
  C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
  D_mix, D_decay = cfg.lora_dims["maa"], cfg.lora_dims["w"]
  t = SpecTable(cfg)
  t.head()
  t.vec("blocks.att.time_maa_x", _maa_init(1.0), "embed")
  t.vec("blocks.att.time_maa_w", _maa_init(1.0), "embed")
  t.vec("blocks.att.time_maa_k", _maa_init(1.0), "embed")
  t.vec("blocks.att.time_maa_v", _maa_init(1.0, 0.3), "embed")
  t.vec("blocks.att.time_maa_r", _maa_init(0.5), "embed")
  t.vec("blocks.att.time_maa_g", _maa_init(0.5), "embed")
  t.add("blocks.att.time_maa_w1", (C, 5 * D_mix), ("embed", "lora"), zeros((C, 5 * D_mix)))
  t.add("blocks.att.time_maa_w2", (5, D_mix, C), ("mix_branch", "lora", "embed"), uniform((5, D_mix, C), 0.01))
  t.vec("blocks.att.time_decay", _time_decay_init, "att", lr_scale=2.0)
  t.add("blocks.att.time_decay_w1", (C, D_decay), ("embed", "lora"), zeros((C, D_decay)))
  t.add("blocks.att.time_decay_w2", (D_decay, C), ("lora", "att"), uniform((D_decay, C), 0.01))
  t.add("blocks.att.time_faaaa", (H, N), ("heads", "head_dim"), time_faaaa_init)
  t.att_matrices()
  t.vec("blocks.ffn.time_maa_k", _ffn_maa_init, "embed")
  t.vec("blocks.ffn.time_maa_r", _ffn_maa_init, "embed")
  t.ffn_matrices()
  t.tail()
  return t.specs


def init(cfg: ModelConfig, key: jax.Array) -> Params:
  """The official RWKV-LM x060 initialisation, float32."""
  return init_params(param_specs(cfg), cfg, key)


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------

def time_mix(p, cfg: ModelConfig, x, x_prev, wkv_state, starts, segment_ids, impl, reset_state=None):
  """RWKV-6 time mixing (§4.2).

  Args:
    p: this layer's `att` parameters. x: [B, T, C] ln1 output (compute dtype). x_prev: [B, C] shift state.
    wkv_state: [B, H, K, V] float32. starts: [B, T] bool segment starts (or None).
    reset_state: None or [B or 1, H, K, V] float32, the WKV state segments restart from.
  Returns: (out [B, T, C], new wkv_state [B, H, K, V] float32).
  """
  B, T, C = x.shape
  H, N = cfg.n_head, cfg.head_size
  f32, cdt = jnp.float32, x.dtype
  # The token-shift arithmetic runs in float32 (fused elementwise work; rounding x, x_prev - x and the mix
  # coefficients to bf16 separately doubled the bf16 error on the parity fixtures); matmul inputs are cdt.
  xf = x.astype(f32)
  xx = layers.token_shift(x, x_prev, starts).astype(f32) - xf
  # ddlerp: one tanh LoRA gives the five data-dependent mix offsets (slabs in the order w, k, v, r, g).
  z = jnp.tanh(layers.matmul((xf + xx * p["time_maa_x"]).astype(cdt), p["time_maa_w1"]))
  z = z.reshape(B, T, 5, -1)
  offset = lambda i: layers.matmul(z[:, :, i], p["time_maa_w2"][i]).astype(f32)
  xw, xk, xv, xr, xg = ((xf + xx * (p[f"time_maa_{b}"] + offset(i))).astype(cdt) for i, b in enumerate(MIX_BRANCHES))

  act = lambda t: constrain(t, ("batch", None, "act_att"))
  r = act(layers.linear(xr, p["receptance"]["weight"]))
  k = act(layers.linear(xk, p["key"]["weight"]))
  v = act(layers.linear(xv, p["value"]["weight"]))
  g = jax.nn.silu(act(layers.linear(xg, p["gate"]["weight"])))
  decay_lora = layers.matmul(jnp.tanh(layers.matmul(xw, p["time_decay_w1"])), p["time_decay_w2"])
  d = p["time_decay"].astype(f32) + decay_lora.astype(f32)
  log_decay = act(-jnp.exp(d))  # float32, <= 0, unbounded below: w_t = exp(-exp(d_t))

  heads = lambda t: constrain(t.reshape(B, T, H, N), ("batch", None, "act_heads", None))
  o, wkv_state = wkv6(heads(r), heads(log_decay), heads(k), heads(v), p["time_faaaa"], wkv_state,
                      segment_ids=segment_ids, reset_state=reset_state, impl=impl)
  o = ln_x(o.reshape(B, T, C), p, cfg)
  return constrain(layers.linear(o * g, p["output"]["weight"]), ("batch", None, "act_embed")), wkv_state


def channel_mix(p, x, x_prev, starts):
  """RWKV-6 channel mixing (§4.4): x [B, T, C] ln2 output, x_prev [B, C] -> [B, T, C]."""
  xf = x.astype(jnp.float32)
  xx = layers.token_shift(x, x_prev, starts).astype(jnp.float32) - xf
  mix = lambda mu: (xf + xx * mu).astype(x.dtype)
  return ffn_out(p, mix(p["time_maa_k"]), mix(p["time_maa_r"]))


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, state: State | None = None, *,
            segment_ids: jax.Array | None = None, reset_state: jax.Array | None = None, impl: str = "auto",
            remat: str = "none", scan_layers: bool = True) -> tuple[jax.Array, State]:
  """Runs the model over a sequence: `rwkv_stack.forward` (arguments, state and returns) with the x060 blocks.
  impl: the WKV backend (see rwkvjax.ops.wkv6).
  """
  return run_blocks(params, cfg, tokens, state, segment_ids, reset_state, impl, remat, time_mix, channel_mix,
                    scan_layers)


step = rwkv_stack.one_token_step(forward)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of RWKV-6 as this framework computes it (matmuls at 2 FLOPs per multiply-add,
  the WKV update and readout, the LM head). Elementwise work is not counted; independent of seq_len."""
  del seq_len
  C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
  D_mix, D_decay = cfg.lora_dims["maa"], cfg.lora_dims["w"]
  lora = 2 * (C * 5 * D_mix + 5 * D_mix * C) + 2 * 2 * C * D_decay  # ddlerp LoRA (5 slabs) and decay LoRA
  return L * (block_flops_per_token(cfg) + lora) + 2 * C * V
