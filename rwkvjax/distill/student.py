"""The ARWKV student: a Qwen2 / Llama decoder whose self-attention, in every layer or in a chosen set of layers,
is replaced by an RWKV-7 time mixer (specs/papers.md §2.1-2.2), as pure functions over a parameter tree.

Kept from the teacher: token embeddings, the per-layer RMSNorms (the time mixer sees the same pre-attention
RMSNorm output the attention saw), the SwiGLU MLPs, the final RMSNorm, the LM head and the tokenizer. There is
no RoPE in RWKV layers: position comes from the recurrence and the token shift. The time mixer is RWKV-7's
(`rwkvjax.models.rwkv7.time_mix`, §5.2 of rwkv_architecture.md) with ARWKV's options:
  * H = hidden / head_size heads (head_size 64 in ARWKV; no GQA-style sharing);
  * fixed LoRA ranks (w 64, a 64, v 32, g 128 by default) instead of RWKV-7's sqrt(C) rule;
  * gate: "none" (the released ARWKV configs, wkv_has_gate false), "arwkv" (g = 1 + sigmoid(x_g W_g1) W_g2
    with W_g2 = 0 and x_g = 1, so g starts at 1) or "rwkv7" (RWKV-7's sigmoid(x_g W_g1) W_g2 and init);
  * group_norm: the ln_x GroupNorm (eps 64e-5) on or off (off in the released configs);
  * init_mode: "fresh" (ARWKV: RWKV-LM's mixing/decay init, torch's default nn.Linear init for R, K, V, O) or
    "teacher" (RADLADS: R, K, V, O copied from the teacher's q, k, v, o; GQA k/v heads repeated to H).
`v_first` (the first RWKV layer's value) is carried through the layer scan.

Parameter tree (HF names, layers stacked on a leading axis; `model.layers.time_mixer` is stacked over the
replaced layers only, `model.layers.self_attn` over the kept attention layers only, and exists only when some
layers keep attention):
  model.embed_tokens.weight [V, C]
  model.layers.{input_layernorm,post_attention_layernorm}.weight [L, C]
  model.layers.mlp.{gate,up,down}_proj.weight [L, ...]
  model.layers.time_mixer.{x_r, ..., receptance.weight, ...} [L_rwkv, ...]   (RWKV-LM names)
  model.layers.self_attn.{q,k,v,o}_proj.* [L_att, ...]                        (hybrids only)
  model.norm.weight [C]; lm_head.weight [V, C] (absent when tied)

Registered as model version "arwkv7" (`rwkvjax.models.get_model`): param_specs, init, init_state, forward, step,
forward_flops_per_token. Recurrent state (all-RWKV students; hybrids with attention layers are trained and
scored, but `step` generation would need a KV cache and is not provided):
  att_x_prev [L_rwkv, B, C]        RMSNorm output of the previous token (time-mix token shift)
  wkv        [L_rwkv, B, H, N, N]  WKV state in the op's [K, V] layout
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.distill import teacher as tch
from rwkvjax.models import layers, rwkv7, transformer
from rwkvjax.models.params import ParamSpec, unflatten
from rwkvjax.ops import wkv7
from rwkvjax.ops.reference import segment_starts

VERSION = "arwkv7"
GATES = ("none", "arwkv", "rwkv7")
INIT_MODES = ("fresh", "teacher")
REMAT_POLICIES = transformer.REMAT_POLICIES

Params = dict[str, Any]
State = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  """An ARWKV student (frozen and hashable: a static argument of jit).

  Attributes:
    base: the teacher architecture the student keeps (embeddings, norms, MLPs, head); its compute_dtype is the
      student's.
    head_size: N, channels per RWKV head; H = hidden_size / N (64 in ARWKV; smaller for tiny tests).
    rwkv_layers: the layers whose attention is replaced (sorted, unique); None means all of them.
    gate: "none" | "arwkv" | "rwkv7" (see the module docstring).
    group_norm: apply the ln_x GroupNorm to the WKV output.
    d_decay_lora, d_aaa_lora, d_mv_lora, d_gate_lora: LoRA ranks of w, a, v, g (ARWKV: 64, 64, 32, 128).
    init_mode: "fresh" (ARWKV) or "teacher" (RADLADS: copy q/k/v/o into R/K/V/O).
    untie_embeddings: give the student its own LM head when the teacher ties it (ARWKV unties before stage 2).
  """

  base: TransformerConfig = dataclasses.field(default_factory=lambda: TransformerConfig(model_type="qwen2"))
  head_size: int = 64
  rwkv_layers: tuple[int, ...] | None = None
  gate: str = "none"
  group_norm: bool = False
  d_decay_lora: int = 64
  d_aaa_lora: int = 64
  d_mv_lora: int = 32
  d_gate_lora: int = 128
  init_mode: str = "fresh"
  untie_embeddings: bool = True

  def __post_init__(self):
    def bad(field, value, expected):
      raise ValueError(f"StudentConfig.{field}={value!r}: expected {expected}")

    if not isinstance(self.base, TransformerConfig):
      bad("base", self.base, "a TransformerConfig (the teacher's architecture)")
    C, L = self.base.hidden_size, self.base.num_hidden_layers
    if not isinstance(self.head_size, int) or self.head_size < 1 or C % self.head_size:
      bad("head_size", self.head_size, f"a positive divisor of hidden_size={C}")
    if self.rwkv_layers is not None:
      layers_ = tuple(sorted(set(int(l) for l in self.rwkv_layers)))
      if not layers_ or layers_[0] < 0 or layers_[-1] >= L:
        bad("rwkv_layers", self.rwkv_layers, f"None or a non-empty set of layer indices in [0, {L})")
      object.__setattr__(self, "rwkv_layers", None if layers_ == tuple(range(L)) else layers_)
    if self.gate not in GATES:
      bad("gate", self.gate, f"one of {GATES}")
    for field in ("d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        bad(field, value, "a positive int")
    if self.init_mode not in INIT_MODES:
      bad("init_mode", self.init_mode, f"one of {INIT_MODES}")
    if self.init_mode == "teacher" and self.base.q_dim != C:
      bad("init_mode", self.init_mode, f"'fresh': copying q/k/v/o needs num_attention_heads * head_dim == "
          f"hidden_size ({self.base.q_dim} != {C})")

  # -- the names the trainer and the shared tools use
  @property
  def version(self) -> str:
    return VERSION

  @property
  def n_layer(self) -> int:
    return self.base.num_hidden_layers

  @property
  def vocab_size(self) -> int:
    return self.base.vocab_size

  @property
  def n_embd(self) -> int:
    return self.base.hidden_size

  @property
  def n_head(self) -> int:
    return self.base.hidden_size // self.head_size

  @property
  def compute_dtype(self) -> str:
    return self.base.compute_dtype

  @property
  def layers(self) -> tuple[int, ...]:
    """The RWKV (replaced) layers."""
    return tuple(range(self.n_layer)) if self.rwkv_layers is None else self.rwkv_layers

  @property
  def attention_layers(self) -> tuple[int, ...]:
    """The layers that keep the teacher's attention (empty for a full ARWKV student)."""
    return tuple(l for l in range(self.n_layer) if l not in set(self.layers))

  @property
  def tied(self) -> bool:
    return self.base.tie_word_embeddings and not self.untie_embeddings

  @property
  def skeleton(self) -> TransformerConfig:
    """The kept decoder's config (tie_word_embeddings as the student has it)."""
    return self.base.replace(tie_word_embeddings=self.tied)

  @property
  def lora_dims(self) -> dict[str, int]:
    dims = {"w": self.d_decay_lora, "a": self.d_aaa_lora, "v": self.d_mv_lora}
    if self.gate != "none":
      dims["g"] = self.d_gate_lora
    return dims

  def replace(self, **changes) -> "StudentConfig":
    return dataclasses.replace(self, **changes)

  def with_compute_dtype(self, compute_dtype: str) -> "StudentConfig":
    return self.replace(base=self.base.replace(compute_dtype=compute_dtype))

  @classmethod
  def from_teacher(cls, teacher: TransformerConfig, **options) -> "StudentConfig":
    return cls(base=teacher, **options)


# ----------------------------------------------------------------------------------------------------
# ParamSpec table. Every spec is a whole stacked tensor (stacked=False, the layer axis explicit in `shape`
# with the logical axis "layers"), because the time mixers and kept attentions stack over subsets of layers.
# `pth_key` is the HF-style key ("{l}" = layer index) and `pth_shape` the per-layer shape in the exported
# safetensors (see rwkvjax.distill.export).
# ----------------------------------------------------------------------------------------------------

PerLayerInit = Callable[[jax.Array, jax.Array], jax.Array]  # (key, layer index as traced int32) -> array


def _stack_init(per_layer: PerLayerInit, layer_ids: tuple[int, ...]):
  ids = jnp.asarray(layer_ids, jnp.int32)

  def init(key, layer, cfg):
    del layer, cfg
    return jax.vmap(per_layer)(jax.random.split(key, len(layer_ids)), ids)
  return init


def _ratios(l, n_layer):
  lf = jnp.asarray(l, jnp.float32)
  r0 = lf / (n_layer - 1) if n_layer > 1 else jnp.zeros((), jnp.float32)
  return r0, 1.0 - lf / n_layer


def _ortho(gain: float):
  def init(key, shape):
    return jax.nn.initializers.orthogonal(scale=gain)(key, shape, jnp.float32)
  return init


def time_mixer_rows(cfg: StudentConfig):
  """(name, per-layer shape, axes, per-layer init, weight decay, lr scale, exported per-layer shape) of every
  time-mixer parameter, in RWKV-LM's order. Inits follow ARWKV's RWKV_Tmix_x070 (specs/papers.md §2.2)."""
  C, H, N, L = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.n_layer
  D = cfg.lora_dims
  ddd = jnp.arange(C, dtype=jnp.float32) / C
  rows = []

  def row(name, shape, axes, init, wd=False, lr_scale=1.0, export_shape=None):
    rows.append((name, tuple(shape), tuple(axes), init, wd, lr_scale, tuple(export_shape or shape)))

  def mix(fn):
    return lambda key, l: fn(*_ratios(l, L))

  vec = dict(shape=(C,), export_shape=(1, 1, C))
  row("x_r", axes=("embed",), init=mix(lambda r0, r1: 1.0 - ddd ** (0.2 * r1)), **vec)
  row("x_w", axes=("embed",), init=mix(lambda r0, r1: 1.0 - ddd ** (0.9 * r1)), **vec)
  row("x_k", axes=("embed",), init=mix(lambda r0, r1: 1.0 - (ddd ** (0.9 * r1) + 0.4 * r0)), **vec)
  row("x_v", axes=("embed",), init=mix(lambda r0, r1: 1.0 - (ddd ** (0.4 * r1) + 0.6 * r0)), **vec)
  row("x_a", axes=("embed",), init=mix(lambda r0, r1: 1.0 - ddd ** (0.9 * r1)), **vec)
  if cfg.gate == "arwkv":
    row("x_g", axes=("embed",), init=lambda key, l: jnp.ones((C,), jnp.float32), **vec)
  elif cfg.gate == "rwkv7":
    row("x_g", axes=("embed",), init=mix(lambda r0, r1: 1.0 - ddd ** (0.2 * r1)), **vec)

  def lora_up(d):  # ARWKV ortho_init(x, 0.1): gain 0.1 * sqrt(d0/d1) if d0 > d1
    return _ortho(0.1 * (math.sqrt(d / C) if d > C else 1.0))

  zeros = lambda shape: (lambda key, l: jnp.zeros(shape, jnp.float32))
  full = lambda shape, value: (lambda key, l: jnp.full(shape, value, jnp.float32))
  ramp = jnp.arange(C, dtype=jnp.float32) / max(C - 1, 1)

  def w0(key, l):
    r0, _ = _ratios(l, L)
    return -7.0 + 5.0 * ramp ** (0.85 + r0 ** 0.5) + 0.5

  for p in ("w", "a", "v", "g"):
    if p not in D:
      continue
    if p == "g":
      g1 = zeros((C, D[p])) if cfg.gate == "rwkv7" else (lambda key, l: _ortho(1.0)(key, (C, D["g"])))
      row("g1", (C, D[p]), ("embed", "lora"), g1)
      g2 = (lambda key, l: lora_up(D["g"])(key, (D["g"], C))) if cfg.gate == "rwkv7" else zeros((D[p], C))
      row("g2", (D[p], C), ("lora", "att"), g2)
      continue
    row(f"{p}1", (C, D[p]), ("embed", "lora"), zeros((C, D[p])))
    row(f"{p}2", (D[p], C), ("lora", "att"), lambda key, l, d=D[p]: lora_up(d)(key, (d, C)))
    if p == "w":
      row("w0", axes=("att",), init=w0, lr_scale=2.0, **vec)
    elif p == "a":
      row("a0", axes=("att",), init=zeros((C,)), **vec)
    else:
      row("v0", axes=("att",), init=full((C,), 1.0), **vec)
  row("k_k", axes=("att",), init=full((C,), 0.85), **vec)
  row("k_a", axes=("att",), init=full((C,), 1.0), **vec)
  row("r_k", (H, N), ("heads", "head_dim"), zeros((H, N)))
  bound = 1.0 / math.sqrt(C)  # torch nn.Linear's default (kaiming_uniform, a=sqrt(5))
  linear = lambda key, l: jax.random.uniform(key, (C, C), jnp.float32, -bound, bound)
  row("receptance.weight", (C, C), ("att", "embed"), linear, wd=True)
  row("key.weight", (C, C), ("att", "embed"), linear, wd=True)
  row("value.weight", (C, C), ("att", "embed"), linear, wd=True)
  row("output.weight", (C, C), ("embed", "att"), linear, wd=True)
  if cfg.group_norm:
    row("ln_x.weight", (C,), ("att",), full((C,), 1.0))
    row("ln_x.bias", (C,), ("att",), zeros((C,)))
  return rows


TIME_MIXER = "model.layers.time_mixer."


def time_mixer_specs(cfg: StudentConfig, prefix: str = "") -> list[ParamSpec]:
  """The time mixers' specs, stacked over cfg.layers."""
  n = len(cfg.layers)
  return [ParamSpec(prefix + TIME_MIXER + name, (n, *shape), ("layers", *axes), _stack_init(init, cfg.layers),
                    False, f"model.layers.{{l}}.self_attn.time_mixer.{name}", export_shape, wd, lr_scale)
          for name, shape, axes, init, wd, lr_scale, export_shape in time_mixer_rows(cfg)]


def transformer_specs(tcfg: TransformerConfig, prefix: str = "", *, attention_layers=None,
                      skip_attention: bool = False) -> list[ParamSpec]:
  """transformer.param_specs(tcfg) with the layer axis explicit; self_attn stacked over `attention_layers`
  (default: all) or left out."""
  out = []
  L = tcfg.num_hidden_layers
  for s in transformer.param_specs(tcfg):
    ids = tuple(range(L))
    if s.name.startswith("model.layers.self_attn."):
      if skip_attention:
        continue
      if attention_layers is not None:
        ids = tuple(attention_layers)
    if s.stacked:
      init = _stack_init(lambda key, l, s=s: s.init(key, l, tcfg), ids)
      out.append(ParamSpec(prefix + s.name, (len(ids), *s.shape), ("layers", *s.axes), init, False, s.pth_key,
                           s.pth_shape, s.weight_decay, s.lr_scale))
    else:
      out.append(ParamSpec(prefix + s.name, s.shape, s.axes, lambda key, layer, cfg, s=s: s.init(key, None, tcfg),
                           False, s.pth_key, s.pth_shape, s.weight_decay, s.lr_scale))
  return out


def param_specs(cfg: StudentConfig, prefix: str = "") -> list[ParamSpec]:
  """Every student parameter (HF order, time mixers where self_attn was; kept attentions for hybrids)."""
  skel = transformer_specs(cfg.skeleton, prefix, attention_layers=cfg.attention_layers,
                           skip_attention=not cfg.attention_layers)
  tm = time_mixer_specs(cfg, prefix)
  first_mlp = next(i for i, s in enumerate(skel) if ".mlp." in s.name)
  return skel[:first_mlp] + tm + skel[first_mlp:]


def init_from_specs(specs: list[ParamSpec], key: jax.Array) -> Params:
  """A params tree from specs whose inits take no config (this module's specs). Jit-able."""
  keys = jax.random.split(key, len(specs))
  return unflatten({s.name: s.init(k, None, None).astype(jnp.float32) for s, k in zip(specs, keys)})


def init(cfg: StudentConfig, key: jax.Array) -> Params:
  """A student from scratch: HF init of the kept decoder, ARWKV init of the time mixers (init_mode "teacher"
  needs a teacher: use `from_teacher`)."""
  return init_from_specs(param_specs(cfg), key)


def _sub(tree, index):
  return jax.tree.map(lambda a: a[index], tree)


def init_time_mixers(cfg: StudentConfig, key: jax.Array, teacher_attention: Params | None = None) -> Params:
  """The time mixers' params {name: [L_rwkv, ...]} (the subtree at model.layers.time_mixer). Fresh init, with
  init_mode "teacher" R, K, V, O then copied from `teacher_attention` (the teacher's
  model.layers.self_attn subtree, stacked over all of its layers)."""
  tm = init_from_specs(time_mixer_specs(cfg), key)["model"]["layers"]["time_mixer"]
  if cfg.init_mode == "teacher":
    if teacher_attention is None:
      raise ValueError("init_mode='teacher' (RADLADS) needs the teacher's attention weights")
    att = _sub(teacher_attention, jnp.asarray(cfg.layers))
    n, C, rep = len(cfg.layers), cfg.n_embd, cfg.base.num_attention_heads // cfg.base.num_key_value_heads
    as_matrix = lambda w: w.reshape(n, C, C).astype(jnp.float32)  # [n, heads, D, C] -> [n, C, C]
    tm = dict(tm)
    tm["receptance"] = {"weight": as_matrix(att["q_proj"]["weight"])}
    tm["key"] = {"weight": as_matrix(jnp.repeat(att["k_proj"]["weight"], rep, axis=1))}
    tm["value"] = {"weight": as_matrix(jnp.repeat(att["v_proj"]["weight"], rep, axis=1))}
    tm["output"] = {"weight": att["o_proj"]["weight"].reshape(n, C, C).astype(jnp.float32)}
  return tm


def from_teacher(teacher_params: Params, cfg: StudentConfig, key: jax.Array, time_mixers: Params | None = None
                 ) -> Params:
  """The student built on a teacher of architecture cfg.base: embeddings, norms, MLPs and head copied (the
  head untied from the embedding when cfg.untie_embeddings), kept attentions copied, time mixers from
  `time_mixers` or `init_time_mixers`. Jit-able."""
  t = teacher_params
  tl = t["model"]["layers"]
  if time_mixers is None:
    time_mixers = init_time_mixers(cfg, key, tl.get("self_attn"))
  layer_tree = {k: v for k, v in tl.items() if k != "self_attn"}
  layer_tree["time_mixer"] = time_mixers
  if cfg.attention_layers:
    layer_tree["self_attn"] = _sub(tl["self_attn"], jnp.asarray(cfg.attention_layers))
  out = {"model": {"embed_tokens": t["model"]["embed_tokens"], "layers": layer_tree, "norm": t["model"]["norm"]}}
  if not cfg.tied:
    out["lm_head"] = {"weight": tch.head_weight(t, cfg.base)}
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------

def time_mix(p, cfg: StudentConfig, x, x_prev, wkv_state, v_first, is_first_layer, starts, segment_ids, impl):
  """RWKV-7 time mixing with ARWKV's options; the arguments and results are rwkv7.time_mix's.

  x: [B, T, C] RMSNorm output (compute dtype); x_prev [B, C]; wkv_state [B, H, K, V] float32; v_first
  [B, T, C]; is_first_layer: bool scalar. Returns (out [B, T, C], v_first, new wkv_state).
  """
  B, T, C = x.shape
  H, N = cfg.n_head, cfg.head_size
  f32 = jnp.float32
  xx = layers.token_shift(x, x_prev, starts) - x
  names = "rwkva" + ("g" if cfg.gate != "none" else "")
  mixed = {n: x + xx * p[f"x_{n}"].astype(x.dtype) for n in names}

  r = layers.linear(mixed["r"], p["receptance"]["weight"])
  k = layers.linear(mixed["k"], p["key"]["weight"])
  v = layers.linear(mixed["v"], p["value"]["weight"])
  w_logit = p["w0"] + layers.matmul(jnp.tanh(layers.matmul(mixed["w"], p["w1"])), p["w2"]).astype(f32)
  log_decay = -rwkv7.DECAY_SCALE * jax.nn.sigmoid(w_logit)  # = -exp(-softplus(-w_logit) - 0.5)

  v_gate = jax.nn.sigmoid(p["v0"] + layers.matmul(layers.matmul(mixed["v"], p["v1"]), p["v2"]).astype(f32))
  v_mixed = (v + (v_first - v) * v_gate).astype(v.dtype)
  v = jnp.where(is_first_layer, v, v_mixed)
  v_first = jnp.where(is_first_layer, v, v_first)

  iclr = jax.nn.sigmoid(p["a0"] + layers.matmul(layers.matmul(mixed["a"], p["a1"]), p["a2"]).astype(f32))
  heads = lambda t: t.reshape(B, T, H, N)
  kk = heads(k.astype(f32) * p["k_k"])
  kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), rwkv7.NORMALIZE_EPS)
  k = (k.astype(f32) * (1.0 + (iclr - 1.0) * p["k_a"])).astype(x.dtype)

  o, wkv_state = wkv7(heads(r), heads(log_decay), heads(k), heads(v), (-kk).astype(x.dtype),
                      (kk * heads(iclr)).astype(x.dtype), wkv_state, segment_ids=segment_ids, impl=impl)
  o = o.reshape(B, T, C)
  if cfg.group_norm:
    o = layers.group_norm(o, H, p["ln_x"]["weight"], p["ln_x"]["bias"], rwkv7.GROUP_NORM_EPS)
  bonus = (heads(r).astype(f32) * heads(k).astype(f32) * p["r_k"]).sum(-1, keepdims=True) * heads(v).astype(f32)
  o = (o.astype(f32) + bonus.reshape(B, T, C)).astype(x.dtype)
  if cfg.gate != "none":
    g = layers.matmul(jax.nn.sigmoid(layers.matmul(mixed["g"], p["g1"])), p["g2"])
    if cfg.gate == "arwkv":
      g = 1.0 + g
    o = o * g.astype(o.dtype)
  return layers.linear(o, p["output"]["weight"]), v_first, wkv_state


def layer_runs(cfg: StudentConfig) -> list[tuple[str, int, int, int]]:
  """Maximal runs of consecutive layers of one kind: (kind "rwkv" | "attn", first layer, end layer, index of
  the first layer within its kind's stack). One run for a full ARWKV student."""
  rwkv = set(cfg.layers)
  runs: list[list] = []
  counts = {"rwkv": 0, "attn": 0}
  for l in range(cfg.n_layer):
    kind = "rwkv" if l in rwkv else "attn"
    if runs and runs[-1][0] == kind:
      runs[-1][2] = l + 1
    else:
      runs.append([kind, l, l + 1, counts[kind]])
    counts[kind] += 1
  return [tuple(r) for r in runs]


def init_state(cfg: StudentConfig, batch: int) -> State:
  """The zero recurrent state (a fresh sequence)."""
  n, C, H, N = len(cfg.layers), cfg.n_embd, cfg.n_head, cfg.head_size
  return {"att_x_prev": jnp.zeros((n, batch, C), jnp.float32), "wkv": jnp.zeros((n, batch, H, N, N), jnp.float32)}


def _maybe_remat(fn, remat):
  if remat == "none":
    return fn
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; expected 'none' or one of {sorted(REMAT_POLICIES)}")
  return jax.checkpoint(fn, policy=REMAT_POLICIES[remat])


def _common(layer_params, start, end):
  """The per-layer params every layer has (norms, MLP) of layers [start, end)."""
  return {k: _sub(v, slice(start, end)) for k, v in layer_params.items() if k not in ("time_mixer", "self_attn")}


def hidden(params: Params, cfg: StudentConfig, tokens: jax.Array, state: State | None = None, *,
           segment_ids: jax.Array | None = None, impl: str = "auto", remat: str = "none",
           attention_impl: str = "auto", scan_layers: bool = True) -> tuple[jax.Array, State]:
  """Final hidden states [B, T, C] (after the final RMSNorm, compute dtype) and the recurrent state after the
  last token. Arguments as in `forward`; scan_layers: each run of layers under lax.scan or unrolled
  (`layers.layer_loop`)."""
  if tokens.ndim != 2:
    raise ValueError(f"forward: tokens has shape {tokens.shape}; expected [B, T]")
  B, T = tokens.shape
  skel = cfg.skeleton
  if cfg.attention_layers and state is not None:
    raise ValueError(f"the student keeps attention in layers {cfg.attention_layers}: recurrent state (generation) "
                     "is only supported for students whose every layer is RWKV")
  if state is None:
    state = init_state(cfg, B)
  starts = segment_starts(segment_ids, B, T) if segment_ids is not None else None
  att_in = tch.attention_inputs(skel, B, T, segment_ids) if cfg.attention_layers else None
  lp = params["model"]["layers"]
  x = tch.embed(params, skel, tokens)
  v_first = jnp.zeros_like(x)
  x_prevs, wkvs = [], []

  def rwkv_body(carry, inputs):
    x, v_first = carry
    p, tm, j, x_prev, wkv_state = inputs
    h = transformer.rms_norm(x, p["input_layernorm"]["weight"], skel.rms_norm_eps)
    att, v_first, wkv_state = time_mix(tm, cfg, h, x_prev, wkv_state, v_first, j == 0, starts, segment_ids, impl)
    x = tch.mlp_residual(p, skel, x + att)
    return (x, v_first), (h[:, -1].astype(jnp.float32), wkv_state)

  def attn_body(carry, p):
    x, v_first = carry
    return (tch.block(p, skel, x, att_in, attention_impl), v_first), None

  rwkv_body, attn_body = _maybe_remat(rwkv_body, remat), _maybe_remat(attn_body, remat)
  for kind, start, end, off in layer_runs(cfg):
    n = end - start
    common = _common(lp, start, end)
    if kind == "rwkv":
      idx = slice(off, off + n)
      xs = (common, _sub(lp["time_mixer"], idx), jnp.arange(off, off + n), state["att_x_prev"][idx],
            state["wkv"][idx])
      (x, v_first), (x_prev, wkv_state) = layers.layer_loop(rwkv_body, (x, v_first), xs, scan=scan_layers)
      x_prevs.append(x_prev)
      wkvs.append(wkv_state)
    else:
      common["self_attn"] = _sub(lp["self_attn"], slice(off, off + n))
      (x, v_first), _ = layers.layer_loop(attn_body, (x, v_first), common, scan=scan_layers)
  x = transformer.rms_norm(x, params["model"]["norm"]["weight"], skel.rms_norm_eps)
  return x, {"att_x_prev": jnp.concatenate(x_prevs), "wkv": jnp.concatenate(wkvs)}


def head_weight(params: Params, cfg: StudentConfig) -> jax.Array:
  return params["model"]["embed_tokens"]["weight"] if cfg.tied else params["lm_head"]["weight"]


def forward(params: Params, cfg: StudentConfig, tokens: jax.Array, state: State | None = None, *,
            segment_ids: jax.Array | None = None, impl: str = "auto", remat: str = "none"
            ) -> tuple[jax.Array, State]:
  """Runs the student over tokens [B, T] -> (logits [B, T, V] float32, state after the last token).

  state: the recurrent state before tokens[:, 0] (`init_state`; None: a fresh sequence). segment_ids: packed
  documents (token shift and WKV state restart where the id changes; attention layers attend within the
  document). impl: WKV backend. remat: "none" | "block" | "block_save_dots".
  """
  x, state = hidden(params, cfg, tokens, state, segment_ids=segment_ids, impl=impl, remat=remat)
  head = head_weight(params, cfg).astype(x.dtype)
  return layers.head_logits(x, head), state


def step(params: Params, cfg: StudentConfig, token: jax.Array, state: State, *, impl: str = "auto"
         ) -> tuple[jax.Array, State]:
  """One recurrent step: token [B] ints -> logits [B, V] float32 and the next state."""
  logits, state = forward(params, cfg, token[:, None], state, impl=impl)
  return logits[:, 0], state


def forward_flops_per_token(cfg: StudentConfig, seq_len: int) -> float:
  """Forward FLOPs per token (2 per multiply-add): time mixers (R, K, V, O, LoRAs, WKV), kept attentions (with
  causal attention over seq_len), MLPs and the LM head."""
  C, F, V, N, b = cfg.n_embd, cfg.base.intermediate_size, cfg.vocab_size, cfg.head_size, cfg.base
  rwkv = 2 * 4 * C * C + 2 * 2 * C * sum(cfg.lora_dims.values()) + 2 * 4 * C * N
  attn = 2 * (2 * C * b.q_dim + 2 * C * b.kv_dim) + 2 * seq_len * b.num_attention_heads * b.head_dim
  mlp = 2 * 3 * C * F
  return len(cfg.layers) * rwkv + len(cfg.attention_layers) * attn + cfg.n_layer * mlp + 2 * C * V


# ----------------------------------------------------------------------------------------------------
# Stage 1: teacher-forced per-layer alignment
# ----------------------------------------------------------------------------------------------------

def alignment_outputs(teacher_params: Params, cfg: StudentConfig, time_mixers: Params, tokens: jax.Array,
                      layer_loss: Callable[[jax.Array, jax.Array], jax.Array], *,
                      segment_ids: jax.Array | None = None, impl: str = "auto", remat: str = "none",
                      attention_impl: str = "auto", scan_layers: bool = True) -> jax.Array:
  """Stage 1 (ARWKV's AttentionWrapper): the frozen teacher (architecture cfg.base) runs over tokens; in every
  replaced layer the student time mixer sees the same RMSNorm output as the teacher attention, the pair of
  outputs goes to layer_loss(a_teacher, a_student) -> scalar, and the teacher's output continues the residual
  stream (teacher forcing). v_first is detached between layers, so each layer's mixer learns alone (as in
  ARWKV, whose VFirstHolder copies v_first without gradient). scan_layers: as in `hidden`. Returns the
  per-layer losses [L_rwkv].
  The teacher's final norm and head are not run."""
  B, T = tokens.shape
  tcfg = cfg.base
  starts = segment_starts(segment_ids, B, T) if segment_ids is not None else None
  att_in = tch.attention_inputs(tcfg, B, T, segment_ids)
  lp = teacher_params["model"]["layers"]
  x = tch.embed(teacher_params, tcfg, tokens)
  zero_prev = jnp.zeros((B, cfg.n_embd), jnp.float32)
  zero_wkv = jnp.zeros((B, cfg.n_head, cfg.head_size, cfg.head_size), jnp.float32)
  losses = []

  def rwkv_body(carry, inputs):
    x, v_first = carry
    p, tm, j = inputs
    h = transformer.rms_norm(x, p["input_layernorm"]["weight"], tcfg.rms_norm_eps)
    a_teacher = tch.attention(p["self_attn"], tcfg, h, att_in, attention_impl)
    a_student, v_first, _ = time_mix(tm, cfg, h, zero_prev, zero_wkv, v_first, j == 0, starts, segment_ids, impl)
    loss = layer_loss(a_teacher, a_student)
    x = tch.mlp_residual(p, tcfg, x + a_teacher)
    return (x, jax.lax.stop_gradient(v_first)), loss

  def attn_body(carry, p):
    x, v_first = carry
    return (tch.block(p, tcfg, x, att_in, attention_impl), v_first), None

  rwkv_body, attn_body = _maybe_remat(rwkv_body, remat), _maybe_remat(attn_body, remat)
  carry = (x, jnp.zeros_like(x))
  last = max(cfg.layers)
  for kind, start, end, off in layer_runs(cfg):
    if start > last:
      break  # nothing after the last replaced layer feeds a loss
    layer_params = _sub(lp, slice(start, end))
    if kind == "rwkv":
      xs = (layer_params, _sub(time_mixers, slice(off, off + end - start)), jnp.arange(off, off + end - start))
      carry, run_losses = layers.layer_loop(rwkv_body, carry, xs, scan=scan_layers)
      losses.append(run_losses)
    else:
      carry, _ = layers.layer_loop(attn_body, carry, layer_params, scan=scan_layers)
  return jnp.concatenate(losses)
