"""RWKV-7 "Goose" (x070) as pure functions over a parameter tree (§5 of specs/rwkv_architecture.md).

Parameter names are RWKV-LM's state-dict keys (see `param_specs`); per-block tensors are stacked on a
leading layer axis and the blocks run under `lax.scan` (or unrolled: `scan_layers=False`).

Recurrent state (`init_state`), per layer, all float32:
  att_x_prev [L, B, C]      ln1 output of the previous token (time-mix token shift)
  wkv        [L, B, H, K, V] WKV state in the op's [K, V] layout (the transpose of the official S[value, key])
  ffn_x_prev [L, B, C]      ln2 output of the previous token (channel-mix token shift)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rwkvjax.config.model import ModelConfig
from rwkvjax.models import layers, rwkv_stack
from rwkvjax.models.params import ParamSpec, init_params
from rwkvjax.models.rwkv_init import ddd, emb_init, head_gain, ln_x_weight_init, ones, orthogonal, ratios, zeros
from rwkvjax.models.rwkv_stack import Params, State
from rwkvjax.ops import wkv7
from rwkvjax.training.sharding import constrain

GROUP_NORM_EPS = 64e-5
DECAY_SCALE = math.exp(-0.5)  # log-decay = -exp(-0.5) * sigmoid(w_logit), i.e. decay in (0.545, 1)
NORMALIZE_EPS = 1e-12

init_state = rwkv_stack.init_state


# ----------------------------------------------------------------------------------------------------
# Official initialisation (RWKV-LM RWKV-v7/train_temp: RWKV_Tmix_x070/RWKV_CMix_x070 + generate_init_weight)
# ----------------------------------------------------------------------------------------------------


def _linear_ramp(C: int) -> jax.Array:
  return jnp.arange(C, dtype=jnp.float32) / (C - 1) - 0.5


def _zigzag(C: int, N: int) -> jax.Array:
  half = (N - 1) / 2
  z = ((jnp.arange(C) % N).astype(jnp.float32) - half) / half
  return z * jnp.abs(z)


def _mix_init(power: float):
  """x_* = 1 - ddd ** (power * ratio_1_to_almost0)."""
  def init(key, layer, cfg):
    del key
    return 1.0 - ddd(cfg.n_embd) ** (power * ratios(layer, cfg)[1])
  return init


def _ffn_mix_init(key, layer, cfg):
  del key
  return 1.0 - ddd(cfg.n_embd) ** (ratios(layer, cfg)[1] ** 4)


def _w0_init(key, layer, cfg):
  del key
  C = cfg.n_embd
  r0 = ratios(layer, cfg)[0]
  www = -6.0 + 6.0 * (jnp.arange(C, dtype=jnp.float32) / (C - 1)) ** (1.0 + r0 ** 0.3)
  return www + 0.5 + 2.5 * _zigzag(C, cfg.head_size)


def _a0_init(key, layer, cfg):
  del key, layer
  return -0.19 + 0.3 * _zigzag(cfg.n_embd, cfg.head_size) + 0.4 * _linear_ramp(cfg.n_embd)


def _const_init(fn):
  def init(key, layer, cfg):
    del key, layer
    return fn(cfg)
  return init


def _lora_up_gain(shape, cfg):  # RWKV-LM ortho_init(x, 0.1): gain 0.1 * sqrt(d0/d1) if d0 > d1
  del cfg
  return 0.1 * (math.sqrt(shape[0] / shape[1]) if shape[0] > shape[1] else 1.0)


# ----------------------------------------------------------------------------------------------------
# The ParamSpec table
# ----------------------------------------------------------------------------------------------------

def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
  """Every RWKV-7 parameter, in RWKV-LM's state-dict order. Logical axes: vocab, embed (model width as
  input), att (time-mix channels, C = H*N), heads, head_dim, mlp (channel-mix width), lora."""
  C, V, H, N, F = cfg.n_embd, cfg.vocab_size, cfg.n_head, cfg.head_size, cfg.ffn_dim
  D = cfg.lora_dims
  ortho = orthogonal(1.0)
  ortho_01 = orthogonal(0.1)
  lora_up = orthogonal(_lora_up_gain)
  specs: list[ParamSpec] = []

  def add(name, shape, axes, init, *, stacked=True, pth_key=None, pth_shape=None, wd=False, lr_scale=1.0):
    shape = tuple(shape)
    if pth_key is None:
      pth_key = name.replace("blocks.", "blocks.{l}.", 1) if stacked else name
    specs.append(ParamSpec(name, shape, tuple(axes), init, stacked, pth_key,
                           tuple(pth_shape) if pth_shape else shape, wd, lr_scale))

  def vec(name, init, axis):  # RWKV-LM stores mixing/bias vectors as [1, 1, C]
    add(name, (C,), (axis,), init, pth_shape=(1, 1, C))

  add("emb.weight", (V, C), ("vocab", "embed"), emb_init, stacked=False, wd=True)
  for ln in ("ln1", "ln2"):
    add(f"blocks.{ln}.weight", (C,), ("embed",), ones((C,)))
    add(f"blocks.{ln}.bias", (C,), ("embed",), zeros((C,)))
  add("ln0.weight", (C,), ("embed",), ones((C,)), stacked=False, pth_key="blocks.0.ln0.weight")
  add("ln0.bias", (C,), ("embed",), zeros((C,)), stacked=False, pth_key="blocks.0.ln0.bias")

  for name, power in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2)):
    vec(f"blocks.att.x_{name}", _mix_init(power), "embed")
  for p in ("w", "a", "v", "g"):
    add(f"blocks.att.{p}1", (C, D[p]), ("embed", "lora"), zeros((C, D[p])))
    add(f"blocks.att.{p}2", (D[p], C), ("lora", "att"), lora_up((D[p], C)))
    if p == "w":
      vec("blocks.att.w0", _w0_init, "att")
      specs[-1] = ParamSpec(**{**specs[-1].__dict__, "lr_scale": 2.0})
    elif p == "a":
      vec("blocks.att.a0", _a0_init, "att")
    elif p == "v":
      vec("blocks.att.v0", _const_init(lambda cfg: 0.73 - 0.4 * _linear_ramp(cfg.n_embd)), "att")
  vec("blocks.att.k_k", _const_init(lambda cfg: 0.71 - 0.1 * _linear_ramp(cfg.n_embd)), "att")
  vec("blocks.att.k_a", _const_init(lambda cfg: jnp.full((cfg.n_embd,), 1.02, jnp.float32)), "att")
  add("blocks.att.r_k", (H, N), ("heads", "head_dim"), _const_init(lambda cfg: jnp.full((H, N), -0.04, jnp.float32)))
  add("blocks.att.receptance.weight", (C, C), ("att", "embed"), ortho((C, C)), wd=True)
  add("blocks.att.key.weight", (C, C), ("att", "embed"), ortho_01((C, C)), wd=True)
  add("blocks.att.value.weight", (C, C), ("att", "embed"), ortho((C, C)), wd=True)
  add("blocks.att.output.weight", (C, C), ("embed", "att"), zeros((C, C)), wd=True)
  add("blocks.att.ln_x.weight", (C,), ("att",), ln_x_weight_init)
  add("blocks.att.ln_x.bias", (C,), ("att",), zeros((C,)))
  vec("blocks.ffn.x_k", _ffn_mix_init, "embed")
  add("blocks.ffn.key.weight", (F, C), ("mlp", "embed"), ortho((F, C)), wd=True)
  add("blocks.ffn.value.weight", (C, F), ("embed", "mlp"), zeros((C, F)), wd=True)
  add("ln_out.weight", (C,), ("embed",), ones((C,)), stacked=False)
  add("ln_out.bias", (C,), ("embed",), zeros((C,)), stacked=False)
  add("head.weight", (V, C), ("vocab", "embed"), orthogonal(head_gain)((V, C)), stacked=False, wd=True)
  return specs


def init(cfg: ModelConfig, key: jax.Array) -> Params:
  """The official RWKV-LM x070 initialisation, float32."""
  return init_params(param_specs(cfg), cfg, key)


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------

def time_mix(p, cfg: ModelConfig, x, x_prev, wkv_state, v_first, is_first_layer, starts, segment_ids, impl,
             reset_state=None):
  """RWKV-7 time mixing (§5.2).

  Args:
    p: this layer's `att` parameters. x: [B, T, C] ln1 output (compute dtype). x_prev: [B, C] shift state.
    wkv_state: [B, H, K, V] float32. v_first: [B, T, C] layer-0 values (ignored when is_first_layer).
    is_first_layer: bool scalar (traced under the layer scan). starts: [B, T] bool segment starts.
    reset_state: None or [B or 1, H, K, V] float32, the WKV state segments restart from.
  Returns: (out [B, T, C], v_first [B, T, C], new wkv_state [B, H, K, V] float32).
  """
  B, T, C = x.shape
  H, N = cfg.n_head, cfg.head_size
  f32 = jnp.float32
  xx = layers.token_shift(x, x_prev, starts) - x
  xr, xw, xk, xv, xa, xg = (x + xx * p[f"x_{n}"].astype(x.dtype) for n in "rwkvag")

  act = lambda t: constrain(t, ("batch", None, "act_att"))
  r = act(layers.linear(xr, p["receptance"]["weight"]))
  k = act(layers.linear(xk, p["key"]["weight"]))
  v = act(layers.linear(xv, p["value"]["weight"]))
  w_logit = p["w0"] + layers.matmul(jnp.tanh(layers.matmul(xw, p["w1"])), p["w2"]).astype(f32)
  log_decay = -DECAY_SCALE * jax.nn.sigmoid(w_logit)  # float32, in (-0.6065, 0)

  v_gate = jax.nn.sigmoid(p["v0"] + layers.matmul(layers.matmul(xv, p["v1"]), p["v2"]).astype(f32))
  v_mixed = (v + (v_first - v) * v_gate).astype(v.dtype)
  v = jnp.where(is_first_layer, v, v_mixed)
  v_first = jnp.where(is_first_layer, v, v_first)

  iclr = jax.nn.sigmoid(p["a0"] + layers.matmul(layers.matmul(xa, p["a1"]), p["a2"]).astype(f32))
  g = layers.matmul(jax.nn.sigmoid(layers.matmul(xg, p["g1"])), p["g2"])

  heads = lambda t: constrain(t.reshape(B, T, H, N), ("batch", None, "act_heads", None))
  kk = heads(k.astype(f32) * p["k_k"])
  kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), NORMALIZE_EPS)
  k = (k.astype(f32) * (1.0 + (iclr - 1.0) * p["k_a"])).astype(x.dtype)
  iclr_h = heads(iclr)

  o, wkv_state = wkv7(heads(r), heads(log_decay), heads(k), heads(v), (-kk).astype(x.dtype),
                      (kk * iclr_h).astype(x.dtype), wkv_state, segment_ids=segment_ids, reset_state=reset_state,
                      impl=impl)
  o = layers.group_norm(o.reshape(B, T, C), H, p["ln_x"]["weight"], p["ln_x"]["bias"], GROUP_NORM_EPS)
  bonus = (heads(r).astype(f32) * heads(k).astype(f32) * p["r_k"]).sum(-1, keepdims=True) * heads(v).astype(f32)
  o = (o.astype(f32) + bonus.reshape(B, T, C)).astype(x.dtype)
  out = constrain(layers.linear(o * g, p["output"]["weight"]), ("batch", None, "act_embed"))
  return out, v_first, wkv_state


def channel_mix(p, x, x_prev, starts):
  """RWKV-7 channel mixing (§5.4): x [B, T, C] ln2 output, x_prev [B, C] -> [B, T, C]."""
  xk = x + (layers.token_shift(x, x_prev, starts) - x) * p["x_k"].astype(x.dtype)
  hidden = jnp.square(jax.nn.relu(layers.linear(xk, p["key"]["weight"])))
  hidden = constrain(hidden, ("batch", None, "act_mlp"))
  return constrain(layers.linear(hidden, p["value"]["weight"]), ("batch", None, "act_embed"))


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, state: State | None = None, *,
            segment_ids: jax.Array | None = None, reset_state: jax.Array | None = None, impl: str = "auto",
            remat: str = "none", scan_layers: bool = True) -> tuple[jax.Array, State]:
  """Runs the model over a sequence: `rwkv_stack.forward` (arguments, state and returns) with the x070 blocks.
  impl: the WKV backend (see rwkvjax.ops.wkv7).
  """
  def mix(p, h, x_prev, wkv_state, starts, reset, v_first, layer):
    v_first = constrain(v_first, ("batch", None, "act_att"))
    out, v_first, wkv_state = time_mix(p, cfg, h, x_prev, wkv_state, v_first, layer == 0, starts, segment_ids, impl,
                                       reset)
    return out, wkv_state, v_first

  return rwkv_stack.forward(params, cfg, tokens, state, segment_ids=segment_ids, reset_state=reset_state,
                            remat=remat, time_mix=mix, channel_mix=channel_mix, carry_init=jnp.zeros_like,
                            scan_layers=scan_layers)


step = rwkv_stack.one_token_step(forward)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of RWKV-7 as this framework computes it (matmuls at 2 FLOPs per multiply-add,
  the WKV update and readout, the LM head). Elementwise work is not counted; independent of seq_len."""
  del seq_len
  C, N, F, V, L = cfg.n_embd, cfg.head_size, cfg.ffn_dim, cfg.vocab_size, cfg.n_layer
  lora = sum(cfg.lora_dims.values())
  per_layer = (2 * 4 * C * C        # receptance, key, value, output
               + 2 * 2 * C * lora   # w, a, v, g LoRAs: C -> D -> C each (v also runs in layer 0)
               + 2 * 2 * C * F      # channel-mix key and value
               + 2 * 4 * C * N)     # WKV per head: a^T S, b (a^T S)^T, k v^T, S^T r on N x N
  return L * per_layer + 2 * C * V


def official_state(state: State, index: int = 0) -> dict[str, jax.Array]:
  """Batch row `index` of the state in the official `rwkv` package's layout (float32):
  state_att_x_prev [L, C], state_wkv [L, H, N, N] as [layer, head, value, key], state_ffn_x_prev [L, C]."""
  return {
      "state_att_x_prev": state["att_x_prev"][:, index],
      "state_wkv": jnp.swapaxes(state["wkv"][:, index], -1, -2),
      "state_ffn_x_prev": state["ffn_x_prev"][:, index],
  }
