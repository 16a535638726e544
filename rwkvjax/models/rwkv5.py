"""RWKV-5.2 "Eagle" (x052) as pure functions over a parameter tree (§3 of specs/rwkv_architecture.md).

Parameter names are RWKV-LM's state-dict keys (see `param_specs`); per-block tensors are stacked on a
leading layer axis and the blocks run under `lax.scan` (`rwkvjax.models.rwkv_stack`, shared with RWKV-6 and
RWKV-7). The pieces shared with RWKV-6 (init helpers, the x052/x060 block loop) live here and
`rwkvjax.models.rwkv6` reuses them.

Recurrent state (`init_state`), per layer, all float32:
  att_x_prev [L, B, C]       ln1 output of the previous token (time-mix token shift)
  wkv        [L, B, H, K, V] WKV state S[key, value]: the op's layout and also the official v5/v6 layout
  ffn_x_prev [L, B, C]       ln2 output of the previous token (channel-mix token shift)

Mix convention (pitfall 1 of the spec): x052 lerps with the weight on the CURRENT token,
x * mu + x_prev * (1 - mu); x060/x070 use x + (x_prev - x) * mu.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rwkvjax.config.model import ModelConfig
from rwkvjax.models import layers, rwkv_stack
from rwkvjax.models.params import ParamSpec, init_params
from rwkvjax.models.rwkv_init import ddd, emb_init, head_gain, ln_x_weight_init, ones, orthogonal, ratios, zeros
from rwkvjax.models.rwkv_stack import Params, State
from rwkvjax.ops import wkv5
from rwkvjax.training.sharding import constrain

LN_X_EPS = 1e-5  # RWKV-LM: GroupNorm(eps=1e-5) of y / head_size_divisor  ==  GroupNorm(eps=1e-5 * divisor**2) of y

init_state = rwkv_stack.init_state


# ----------------------------------------------------------------------------------------------------
# Official initialisation helpers (RWKV-LM RWKV-v5/src/model.py __init__ + generate_init_weight), shared
# with rwkv6.
# ----------------------------------------------------------------------------------------------------


def decay_speed(cfg: ModelConfig, layer) -> jax.Array:
  """time_decay[n] = -6 + 5 * (n / (C-1)) ** (0.7 + 1.3 * ratio_0_to_1), [C]."""
  C = cfg.n_embd
  return -6.0 + 5.0 * (jnp.arange(C, dtype=jnp.float32) / (C - 1)) ** (0.7 + 1.3 * ratios(layer, cfg)[0])


def time_faaaa_init(key, layer, cfg):
  """time_faaaa[n] = ratio_0_to_1 * (1 - n / (C-1)) + 0.1 * ((n + 1) % 3 - 1), as [H, N]."""
  del key
  C = cfg.n_embd
  n = jnp.arange(C)
  zigzag = 0.1 * ((n + 1) % 3 - 1).astype(jnp.float32)
  value = ratios(layer, cfg)[0] * (1.0 - n.astype(jnp.float32) / (C - 1)) + zigzag
  return value.reshape(cfg.n_head, cfg.head_size)


class SpecTable:
  """Builds a ParamSpec list in state-dict order (the common rows of x052/x060 and the `add` helper)."""

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg
    self.specs: list[ParamSpec] = []

  def add(self, name, shape, axes, init, *, stacked=True, wd=False, lr_scale=1.0, pth_shape=None):
    shape = tuple(shape)
    pth_key = name.replace("blocks.", "blocks.{l}.", 1) if stacked else name
    if name.startswith("ln0."):
      pth_key = "blocks.0." + name
    self.specs.append(ParamSpec(name, shape, tuple(axes), init, stacked, pth_key,
                                tuple(pth_shape) if pth_shape else shape, wd, lr_scale))

  def vec(self, name, init, axis, **kw):
    """A per-channel vector stored as [1, 1, C] in RWKV-LM."""
    self.add(name, (self.cfg.n_embd,), (axis,), init, pth_shape=(1, 1, self.cfg.n_embd), **kw)

  def head(self):
    """emb, the block LayerNorms and ln0 (RWKV-LM order: ln1, ln2, then ln0 in block 0)."""
    C, V = self.cfg.n_embd, self.cfg.vocab_size
    self.add("emb.weight", (V, C), ("vocab", "embed"), emb_init, stacked=False, wd=True)
    for ln in ("ln1", "ln2"):
      self.add(f"blocks.{ln}.weight", (C,), ("embed",), ones((C,)))
      self.add(f"blocks.{ln}.bias", (C,), ("embed",), zeros((C,)))
    self.add("ln0.weight", (C,), ("embed",), ones((C,)), stacked=False)
    self.add("ln0.bias", (C,), ("embed",), zeros((C,)), stacked=False)

  def att_matrices(self):
    """receptance, key, value, output, gate (RWKV-LM order) and ln_x; generate_init_weight gains."""
    C = self.cfg.n_embd
    self.add("blocks.att.receptance.weight", (C, C), ("att", "embed"), orthogonal(1.0)((C, C)), wd=True)
    self.add("blocks.att.key.weight", (C, C), ("att", "embed"), orthogonal(0.1)((C, C)), wd=True)
    self.add("blocks.att.value.weight", (C, C), ("att", "embed"), orthogonal(1.0)((C, C)), wd=True)
    self.add("blocks.att.output.weight", (C, C), ("embed", "att"), zeros((C, C)), wd=True)
    self.add("blocks.att.gate.weight", (C, C), ("att", "embed"), orthogonal(0.1)((C, C)), wd=True)
    self.add("blocks.att.ln_x.weight", (C,), ("att",), ln_x_weight_init)
    self.add("blocks.att.ln_x.bias", (C,), ("att",), zeros((C,)))

  def ffn_matrices(self):
    """ffn.key (orthogonal, gain 1), ffn.receptance and ffn.value (zero), in RWKV-LM order."""
    C, F = self.cfg.n_embd, self.cfg.ffn_dim
    self.add("blocks.ffn.key.weight", (F, C), ("mlp", "embed"), orthogonal(1.0)((F, C)), wd=True)
    # C x C gate of the channel mix; "att" on the output side like the other C x C projections.
    self.add("blocks.ffn.receptance.weight", (C, C), ("att", "embed"), zeros((C, C)), wd=True)
    self.add("blocks.ffn.value.weight", (C, F), ("embed", "mlp"), zeros((C, F)), wd=True)

  def tail(self):
    C, V = self.cfg.n_embd, self.cfg.vocab_size
    self.add("ln_out.weight", (C,), ("embed",), ones((C,)), stacked=False)
    self.add("ln_out.bias", (C,), ("embed",), zeros((C,)), stacked=False)
    self.add("head.weight", (V, C), ("vocab", "embed"), orthogonal(head_gain)((V, C)), stacked=False, wd=True)


# ----------------------------------------------------------------------------------------------------
# The ParamSpec table
# ----------------------------------------------------------------------------------------------------

def _mix_init(power: float, offset: float = 0.0):
  """time_mix_* = ddd ** (power * ratio_1_to_almost0) + offset * ratio_0_to_1 (weight on the current token)."""
  def init(key, layer, cfg):
    del key
    r0, r1 = ratios(layer, cfg)
    return ddd(cfg.n_embd) ** (power * r1) + offset * r0
  return init


def _time_decay_init(key, layer, cfg):
  del key
  return decay_speed(cfg, layer).reshape(cfg.n_head, cfg.head_size)


def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
  """Every RWKV-5.2 parameter, in RWKV-LM's state-dict order. Logical axes: vocab, embed (model width as
  input), att (time-mix channels, C = H*N), heads, head_dim, mlp (channel-mix width).

  Optimizer tags follow RWKV-LM RWKV-v5 `configure_optimizers` (layerwise_lr=1, my_pile_stage=1):
  time_decay gets 2x LR; time_mix_* and time_faaaa 1x; weight decay only on >= 2-D `.weight` matrices.
  """
  H, N = cfg.n_head, cfg.head_size
  t = SpecTable(cfg)
  t.head()
  t.vec("blocks.att.time_mix_k", _mix_init(1.0), "embed")
  t.vec("blocks.att.time_mix_v", _mix_init(1.0, 0.3), "embed")
  t.vec("blocks.att.time_mix_r", _mix_init(0.5), "embed")
  t.vec("blocks.att.time_mix_g", _mix_init(0.5), "embed")
  t.add("blocks.att.time_decay", (H, N), ("heads", "head_dim"), _time_decay_init, lr_scale=2.0)
  t.add("blocks.att.time_faaaa", (H, N), ("heads", "head_dim"), time_faaaa_init)
  t.att_matrices()
  t.vec("blocks.ffn.time_mix_k", _mix_init(1.0), "embed")
  t.vec("blocks.ffn.time_mix_r", _mix_init(1.0), "embed")
  t.ffn_matrices()
  t.tail()
  return t.specs


def init(cfg: ModelConfig, key: jax.Array) -> Params:
  """The official RWKV-LM x052 initialisation, float32."""
  return init_params(param_specs(cfg), cfg, key)


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------

def ln_x(o, p, cfg: ModelConfig):
  """RWKV-LM's ln_x: GroupNorm(H groups, eps 1e-5) of y / head_size_divisor, computed as the identical
  GroupNorm of y with eps 1e-5 * divisor**2 (64e-5 for the default 8, the official package's form)."""
  return layers.group_norm(o, cfg.n_head, p["ln_x"]["weight"], p["ln_x"]["bias"],
                           LN_X_EPS * cfg.head_size_divisor ** 2)


def lerp(x, x_prev):
  """mix(mu) = x * mu + x_prev * (1 - mu): x052's token shift, weight on the CURRENT token; float32 arithmetic,
  result in x.dtype."""
  xf, xpf = x.astype(jnp.float32), x_prev.astype(jnp.float32)
  return lambda mu: (xf * mu + xpf * (1.0 - mu)).astype(x.dtype)


def time_mix(p, cfg: ModelConfig, x, x_prev, wkv_state, starts, segment_ids, impl, reset_state=None):
  """RWKV-5.2 time mixing (§3.2).

  Args:
    p: this layer's `att` parameters. x: [B, T, C] ln1 output (compute dtype). x_prev: [B, C] shift state.
    wkv_state: [B, H, K, V] float32. starts: [B, T] bool segment starts (or None).
    reset_state: None or [B or 1, H, K, V] float32, the WKV state segments restart from.
  Returns: (out [B, T, C], new wkv_state [B, H, K, V] float32).
  """
  B, T, C = x.shape
  H, N = cfg.n_head, cfg.head_size
  mix = lerp(x, layers.token_shift(x, x_prev, starts))
  act = lambda t: constrain(t, ("batch", None, "act_att"))
  r = act(layers.linear(mix(p["time_mix_r"]), p["receptance"]["weight"]))
  k = act(layers.linear(mix(p["time_mix_k"]), p["key"]["weight"]))
  v = act(layers.linear(mix(p["time_mix_v"]), p["value"]["weight"]))
  g = jax.nn.silu(act(layers.linear(mix(p["time_mix_g"]), p["gate"]["weight"])))
  log_decay = -jnp.exp(p["time_decay"].astype(jnp.float32))  # [H, N]: w = exp(-exp(time_decay))

  heads = lambda t: constrain(t.reshape(B, T, H, N), ("batch", None, "act_heads", None))
  o, wkv_state = wkv5(heads(r), log_decay, heads(k), heads(v), p["time_faaaa"], wkv_state,
                      segment_ids=segment_ids, reset_state=reset_state, impl=impl)
  o = ln_x(o.reshape(B, T, C), p, cfg)
  return constrain(layers.linear(o * g, p["output"]["weight"]), ("batch", None, "act_embed")), wkv_state


def channel_mix(p, x, x_prev, starts):
  """RWKV-5.2 channel mixing (§3.4): x [B, T, C] ln2 output, x_prev [B, C] -> [B, T, C]."""
  mix = lerp(x, layers.token_shift(x, x_prev, starts))
  return ffn_out(p, mix(p["time_mix_k"]), mix(p["time_mix_r"]))


def ffn_out(p, xk, xr):
  """sigmoid(W_r xr) * W_v relu(W_k xk)^2, the channel mix of x052/x060 after the token shift."""
  r = jax.nn.sigmoid(layers.linear(xr, p["receptance"]["weight"]))
  hidden = constrain(jnp.square(jax.nn.relu(layers.linear(xk, p["key"]["weight"]))), ("batch", None, "act_mlp"))
  return constrain(r * layers.linear(hidden, p["value"]["weight"]), ("batch", None, "act_embed"))


def run_blocks(params: Params, cfg: ModelConfig, tokens: jax.Array, state: State | None, segment_ids, reset_state,
               impl, remat, time_mix_fn, channel_mix_fn, scan_layers) -> tuple[jax.Array, State]:
  """The x052/x060 forward: `rwkv_stack.forward` with time_mix_fn(p, cfg, h, x_prev, wkv_state, starts, segment_ids,
  impl, reset) -> (out, wkv_state) (no value carried through the layers) and channel_mix_fn(p, h2, x_prev, starts)."""
  def mix(p, h, x_prev, wkv_state, starts, reset, carry, layer):
    return *time_mix_fn(p, cfg, h, x_prev, wkv_state, starts, segment_ids, impl, reset), carry

  return rwkv_stack.forward(params, cfg, tokens, state, segment_ids=segment_ids, reset_state=reset_state,
                            remat=remat, time_mix=mix, channel_mix=channel_mix_fn, scan_layers=scan_layers)


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, state: State | None = None, *,
            segment_ids: jax.Array | None = None, reset_state: jax.Array | None = None, impl: str = "auto",
            remat: str = "none", scan_layers: bool = True) -> tuple[jax.Array, State]:
  """Runs the model over a sequence: `rwkv_stack.forward` (arguments, state and returns) with the x052 blocks.
  impl: the WKV backend (see rwkvjax.ops.wkv5).
  """
  return run_blocks(params, cfg, tokens, state, segment_ids, reset_state, impl, remat, time_mix, channel_mix,
                    scan_layers)


step = rwkv_stack.one_token_step(forward)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of RWKV-5.2 as this framework computes it (matmuls at 2 FLOPs per multiply-add,
  the WKV update and readout, the LM head). Elementwise work is not counted; independent of seq_len."""
  del seq_len
  return cfg.n_layer * block_flops_per_token(cfg) + 2 * cfg.n_embd * cfg.vocab_size


def block_flops_per_token(cfg: ModelConfig) -> float:
  """The x052 block: 5 C x C time-mix matrices, the channel mix, and the WKV (k v^T and S^T r per head)."""
  C, N, F = cfg.n_embd, cfg.head_size, cfg.ffn_dim
  return (2 * 5 * C * C      # receptance, key, value, gate, output
          + 2 * (2 * C * F + C * C)  # channel-mix key, value, receptance
          + 2 * 2 * C * N)   # WKV per head: k v^T and S^T r on N x N


def official_state(state: State, index: int = 0) -> dict[str, jax.Array]:
  """Batch row `index` of the state in the official `rwkv` package's layout (float32):
  state_att_x_prev [L, C], state_wkv [L, H, N, N] as [layer, head, key, value], state_ffn_x_prev [L, C].
  (For v5/v6 the op's [K, V] layout is the official one; no transpose.)"""
  return {
      "state_att_x_prev": state["att_x_prev"][:, index],
      "state_wkv": state["wkv"][:, index],
      "state_ffn_x_prev": state["ffn_x_prev"][:, index],
  }
