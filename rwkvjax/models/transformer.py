"""Llama / Qwen2(.5) decoders as pure functions over a parameter tree (baselines and distillation teachers).

Parameter names are HF transformers' state-dict keys with the layer index removed (see `param_specs`):
`model.layers.self_attn.q_proj.weight` holds `model.layers.{i}.self_attn.q_proj.weight` of every layer i,
stacked on a leading layer axis, and the blocks run under `lax.scan` (or unrolled). Attention projections are stored
split by head ([H, D, C] for q_proj, [C, H, D] for o_proj) so that heads, kv_heads and head_dim are
logical axes of their own; `rwkvjax.convert.hf` reshapes them to and from HF's 2-D [out, in] matrices.

The block is pre-norm: x += o_proj(attn(rope(q), rope(k), v)) on RMSNorm(x), then
x += down(silu(gate(h)) * up(h)) on RMSNorm(x); a final RMSNorm and the LM head (or the tied embedding).

Two ways to run it, with the interface of the RWKV models (`forward` / `step`):
  * training: `forward(params, cfg, tokens, segment_ids=...)` -> (logits, None). Causal attention through
    `jax.nn.dot_product_attention`; packed documents (segment_ids) attend only within themselves, and their
    RoPE positions restart at 0.
  * generation with a KV cache: `init_cache(cfg, batch, max_len)`, then `prefill(params, cfg, tokens, cache)`
    (= forward with state=cache) and `decode_step(params, cfg, token, cache)` (= step).

KV cache (`init_cache`): k, v [L, B, S, K, D] in the compute dtype (S = max_len slots), and index, an int32
scalar: the number of positions already written (the same for every row; prompts share one length).
Writing past S is not checked inside jit (dynamic_update_slice clamps): size the cache for prompt + new.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.models.layers import head_logits, layer_loop
from rwkvjax.models.params import ParamSpec, init_params
from rwkvjax.training.sharding import constrain
from rwkvjax.ops.reference import segment_starts

Params = dict[str, Any]
Cache = dict[str, jax.Array]
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


# Values named for the remat policy (`jax.ad_checkpoint.checkpoint_name`): RoPE'd queries and keys, and SwiGLU's
# silu(gate) * up, the MLP's largest elementwise result.
SAVED_NAMES = ("rope_q", "rope_k", "swiglu")
_save_names = jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES)


def _save_dots_policy(prim, *args, **params) -> bool:
  """Remat policy "block_save_dots": keep the matmul outputs (no batch dims), cuDNN flash attention's forward
  outputs (the attention output and its softmax statistics, which cuDNN's backward takes) and the SAVED_NAMES
  values, so that the backward pass recomputes no projection, no attention, no RoPE and no SwiGLU product; only
  the RMSNorms are redone."""
  return (prim.name == "dot_product_attention_fwd_wrapper"
          or jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)
          or _save_names(prim, *args, **params))


# The trainer's remat names (as in the RWKV models): recompute each block in the backward pass, saving nothing
# inside it ("block") or what `_save_dots_policy` keeps ("block_save_dots").
REMAT_POLICIES = {"block": None, "block_save_dots": _save_dots_policy}


# ----------------------------------------------------------------------------------------------------
# The ParamSpec table (HF initialisation: N(0, initializer_range) matrices, ones for norms, zeros for biases)
# ----------------------------------------------------------------------------------------------------

def _normal(shape):
  def init(key, layer, cfg):
    del layer
    return cfg.initializer_range * jax.random.normal(key, shape, jnp.float32)
  return init


def _zeros(shape):
  return lambda key, layer, cfg: jnp.zeros(shape, jnp.float32)


def _ones(shape):
  return lambda key, layer, cfg: jnp.ones(shape, jnp.float32)


def param_specs(cfg: TransformerConfig) -> list[ParamSpec]:
  """Every parameter, in HF's state-dict order. `pth_key` is the HF key ("{l}" = layer index) and
  `pth_shape` its HF shape. Logical axes: vocab, embed (model width), heads, kv_heads, head_dim, mlp."""
  C, V, F = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
  H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  specs: list[ParamSpec] = []

  def add(name, shape, axes, init, *, stacked=True, hf_shape=None, wd=False):
    shape = tuple(shape)
    hf_key = name.replace("model.layers.", "model.layers.{l}.", 1) if stacked else name
    specs.append(ParamSpec(name, shape, tuple(axes), init, stacked, hf_key,
                           tuple(hf_shape) if hf_shape else shape, weight_decay=wd))

  def matrix(name, shape, axes, hf_shape=None, stacked=True):
    add(name, shape, axes, _normal(tuple(shape)), stacked=stacked, hf_shape=hf_shape, wd=True)

  matrix("model.embed_tokens.weight", (V, C), ("vocab", "embed"), stacked=False)
  a = "model.layers.self_attn."
  for proj, heads, axis in (("q_proj", H, "heads"), ("k_proj", K, "kv_heads"), ("v_proj", K, "kv_heads")):
    matrix(f"{a}{proj}.weight", (heads, D, C), (axis, "head_dim", "embed"), hf_shape=(heads * D, C))
    if cfg.attention_bias:
      add(f"{a}{proj}.bias", (heads, D), (axis, "head_dim"), _zeros((heads, D)), hf_shape=(heads * D,))
  matrix(f"{a}o_proj.weight", (C, H, D), ("embed", "heads", "head_dim"), hf_shape=(C, H * D))
  if cfg.attention_out_bias:
    add(f"{a}o_proj.bias", (C,), ("embed",), _zeros((C,)))
  m = "model.layers.mlp."
  for proj, shape, axes in (("gate_proj", (F, C), ("mlp", "embed")), ("up_proj", (F, C), ("mlp", "embed")),
                            ("down_proj", (C, F), ("embed", "mlp"))):
    matrix(f"{m}{proj}.weight", shape, axes)
    if cfg.mlp_bias:
      add(f"{m}{proj}.bias", shape[:1], axes[:1], _zeros(shape[:1]))
  add("model.layers.input_layernorm.weight", (C,), ("embed",), _ones((C,)))
  add("model.layers.post_attention_layernorm.weight", (C,), ("embed",), _ones((C,)))
  add("model.norm.weight", (C,), ("embed",), _ones((C,)), stacked=False)
  if not cfg.tie_word_embeddings:
    matrix("lm_head.weight", (V, C), ("vocab", "embed"), stacked=False)
  return specs


def init(cfg: TransformerConfig, key: jax.Array) -> Params:
  """HF's initialisation (`_init_weights`), float32. Jit-able."""
  return init_params(param_specs(cfg), cfg, key)


# ----------------------------------------------------------------------------------------------------
# RoPE (HF's rotate-half convention; frequencies as transformers computes them, in float32)
# ----------------------------------------------------------------------------------------------------

def rope_frequencies(cfg: TransformerConfig) -> tuple[np.ndarray, float]:
  """(inv_freq [D/2] float32, attention_scaling) for cfg's RoPE type, as transformers' ROPE_INIT_FUNCTIONS
  compute them (float32 arithmetic; the attention scaling multiplies cos and sin)."""
  D, base = cfg.head_dim, np.float32(cfg.rope_theta)
  exponents = np.arange(0, D, 2, dtype=np.int64).astype(np.float32) / np.float32(D)
  inv_freq = (np.float32(1.0) / (base ** exponents)).astype(np.float32)
  rope = cfg.rope_scaling_dict or {"rope_type": "default"}
  kind = rope["rope_type"]
  if kind == "default":
    return inv_freq, 1.0
  if kind == "linear":
    return (inv_freq / np.float32(rope["factor"])).astype(np.float32), 1.0
  if kind == "llama3":
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((np.float32(old_len) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
  if kind == "yarn":
    factor = rope["factor"]
    old_len = rope["original_max_position_embeddings"]

    def mscale_of(scale, mscale=1.0):
      return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
      mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")
      attention_factor = (float(mscale_of(factor, mscale) / mscale_of(factor, mscale_all)) if mscale and mscale_all
                          else mscale_of(factor))
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(rotations):
      return (D * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(cfg.rope_theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
      lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, D - 1)
    if lo == hi:
      hi += 0.001
    ramp = np.clip((np.arange(D // 2, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    pos_freqs = base ** exponents
    extrapolation, interpolation = np.float32(1.0) / pos_freqs, np.float32(1.0) / (np.float32(factor) * pos_freqs)
    keep = (np.float32(1.0) - ramp).astype(np.float32)
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32), float(attention_factor)
  raise ValueError(f"rope_type {kind!r} is not supported")  # TransformerConfig rejects it earlier


def rope_tables(cfg: TransformerConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, T, D] float32 for integer positions [B, T] (HF: cat(freqs, freqs), times the scaling)."""
  inv_freq, scaling = rope_frequencies(cfg)
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb) * scaling, jnp.sin(emb) * scaling


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, N, D] rotated by the tables [B, T, D] (cast to x.dtype, as HF does): x cos + rotate_half(x) sin."""
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


# ----------------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------------

def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """HF's LlamaRMSNorm: normalise in float32, cast back to x.dtype, then times the weight (in x.dtype)."""
  xf = x.astype(jnp.float32)
  y = (xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)).astype(x.dtype)
  return weight.astype(x.dtype) * y


def _dense(x, weight, bias, spec: str):
  """einsum(spec, x, weight) in x.dtype (+ bias), returned in x.dtype.

  The product is formed in x.dtype: GPU/TPU matmuls accumulate bf16 products in float32 internally anyway,
  while asking for a float32 result (preferred_element_type) makes the backward pass's matmuls take a float32
  cotangent and run in fp32/TF32 at a fraction of the bf16 rate."""
  y = jnp.einsum(spec, x, weight.astype(x.dtype))
  if bias is not None:
    y = (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
  return y


def mlp(p, x):
  """SwiGLU: down(silu(gate(x)) * up(x)), x [B, T, C]."""
  b = lambda name: p[name].get("bias")
  gate = _dense(x, p["gate_proj"]["weight"], b("gate_proj"), "btc,fc->btf")
  up = _dense(x, p["up_proj"]["weight"], b("up_proj"), "btc,fc->btf")
  hidden = checkpoint_name(jax.nn.silu(gate) * up, "swiglu")
  return _dense(hidden, p["down_proj"]["weight"], b("down_proj"), "btf,cf->btc")


def resolve_attention_impl(impl: str, dtype, head_dim: int, seq_len: int | None = None, masked: bool = False) -> str:
  """"auto" -> "cudnn" (cuDNN flash attention) on GPU where cuDNN takes the call: bf16/fp16 inputs, head_dim a
  multiple of 8 and <= 128, and an even length when a mask (packed documents) is given (cuDNN turns the mask
  into a bias, and its backward needs even lengths then); else "xla". (jax.nn.dot_product_attention's own
  implementation=None always means XLA in jax 0.11.)"""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention impl={impl!r}: expected one of {ATTENTION_IMPLS}")
  if impl != "auto":
    return impl
  if (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128 and not (masked and seq_len is not None and seq_len % 2)):
    return "cudnn"
  return "xla"


def attention(p, cfg: TransformerConfig, x, cos, sin, *, mask=None, is_causal=True, kv_cache=None, index=None,
              impl="auto"):
  """Grouped-query self-attention on x [B, T, C] (RMSNorm output).

  Args:
    cos, sin: RoPE tables [B, T, D] for the positions of x.
    mask: optional bool [B, 1, T, S], True where query t may attend key s (combined with is_causal).
    kv_cache: optional (k, v), each [B, S, K, D]: this layer's cache; the new keys and values are written at
      [index, index + T) and the queries attend to the whole cache under `mask`.
  Returns:
    (out [B, T, C], the updated (k, v) cache or None).
  """
  B, T, _ = x.shape
  b = lambda name: p[name].get("bias")
  q = checkpoint_name(apply_rope(_dense(x, p["q_proj"]["weight"], b("q_proj"), "btc,hdc->bthd"), cos, sin), "rope_q")
  k = checkpoint_name(apply_rope(_dense(x, p["k_proj"]["weight"], b("k_proj"), "btc,hdc->bthd"), cos, sin), "rope_k")
  v = _dense(x, p["v_proj"]["weight"], b("v_proj"), "btc,hdc->bthd")
  if kv_cache is not None:
    k_cache, v_cache = kv_cache
    k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
    v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
    kv_cache = (k, v)
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    impl = "xla"
  else:
    impl = resolve_attention_impl(impl, q.dtype, cfg.head_dim, T, mask is not None)
  o = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=cfg.head_dim ** -0.5,
                                   implementation=impl)
  return _dense(o, p["o_proj"]["weight"], b("o_proj"), "bthd,chd->btc"), kv_cache


def segment_positions(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Packed documents: (document index [B, T] int32, position within the document [B, T] int32).
  A document starts at t = 0 and wherever the id changes (the RWKV models' rule), so [0,0,1,1,0] is three
  documents."""
  B, T = segment_ids.shape
  starts = segment_starts(segment_ids, B, T)
  t = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  first = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)
  return jnp.cumsum(starts, axis=1, dtype=jnp.int32), t - first


# ----------------------------------------------------------------------------------------------------
# Forward, KV cache
# ----------------------------------------------------------------------------------------------------

def init_cache(cfg: TransformerConfig, batch: int, max_len: int, dtype=None) -> Cache:
  """An empty KV cache with room for max_len positions (dtype: the compute dtype unless given)."""
  dtype = jnp.dtype(dtype or cfg.compute_dtype)
  shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "index": jnp.zeros((), jnp.int32)}


def _head(params, cfg, x):
  x = rms_norm(x, params["model"]["norm"]["weight"], cfg.rms_norm_eps)
  head = params["model"]["embed_tokens"]["weight"] if cfg.tie_word_embeddings else params["lm_head"]["weight"]
  logits = head_logits(x, head.astype(x.dtype))
  return constrain(logits, ("batch", None, "act_vocab"))


def forward(params: Params, cfg: TransformerConfig, tokens: jax.Array, state: Cache | None = None, *,
            segment_ids: jax.Array | None = None, positions: jax.Array | None = None, impl: str = "auto",
            remat: str = "none", scan_layers: bool = True) -> tuple[jax.Array, Cache | None]:
  """Runs the decoder over a sequence.

  Args:
    params: the parameter tree (any float dtype; cast to cfg.compute_dtype for compute).
    tokens: [B, T] int token ids.
    state: None for a training / scoring forward; or a KV cache (`init_cache`): the tokens continue the
      cached sequence (prefill), are written into it, and the updated cache is returned.
    segment_ids: optional [B, T] ints (not with a cache); where the id changes a new document starts: it
      attends only to itself and its RoPE positions restart at 0 (packed documents).
    positions: optional [B, T] int RoPE positions (default: 0..T-1, per document with segment_ids, or
      continuing from the cache index).
    impl: attention backend, "auto" | "xla" | "cudnn" (see `resolve_attention_impl`); the cache path is XLA.
    remat: "none", "block" or "block_save_dots" (see REMAT_POLICIES).
    scan_layers: run the blocks under lax.scan (True) or unrolled (`layers.layer_loop`).
  Returns:
    logits [B, T, V] float32, and the updated cache (None without one).
  """
  if tokens.ndim != 2:
    raise ValueError(f"forward: tokens has shape {tokens.shape}; expected [B, T]")
  B, T = tokens.shape
  cdt = jnp.dtype(cfg.compute_dtype)
  mask, index = None, None
  if state is not None:
    if segment_ids is not None:
      raise ValueError("forward: segment_ids cannot be combined with a KV cache")
    index = state["index"]
    S = state["k"].shape[2]
    if positions is None:
      positions = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (B, T))
    q_pos = index + jnp.arange(T, dtype=jnp.int32)
    mask = jnp.broadcast_to((jnp.arange(S)[None, :] <= q_pos[:, None])[None, None], (B, 1, T, S))
    is_causal = False
  else:
    is_causal = True
    if segment_ids is not None:
      if segment_ids.shape != tokens.shape:
        raise ValueError(f"forward: segment_ids has shape {segment_ids.shape}; expected {tokens.shape}")
      docs, doc_positions = segment_positions(segment_ids)
      mask = (docs[:, :, None] == docs[:, None, :])[:, None]
      positions = doc_positions if positions is None else positions
    elif positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  cos, sin = rope_tables(cfg, positions)

  x = jnp.take(jnp.asarray(params["model"]["embed_tokens"]["weight"], cdt), tokens, axis=0)

  def block(x, inputs):
    p, kv = inputs
    x = constrain(x, ("batch", None, "act_embed"))
    h = rms_norm(x, p["input_layernorm"]["weight"], cfg.rms_norm_eps)
    att, kv = attention(p["self_attn"], cfg, h, cos, sin, mask=mask, is_causal=is_causal, kv_cache=kv,
                        index=index, impl=impl)
    x = x + att
    x = x + mlp(p["mlp"], rms_norm(x, p["post_attention_layernorm"]["weight"], cfg.rms_norm_eps))
    return x, kv

  if remat != "none":
    if remat not in REMAT_POLICIES:
      raise ValueError(f"forward: remat={remat!r}; expected 'none' or one of {sorted(REMAT_POLICIES)}")
    block = jax.checkpoint(block, policy=REMAT_POLICIES[remat])
  kv_in = None if state is None else (state["k"], state["v"])
  x, kv_out = layer_loop(block, x, (params["model"]["layers"], kv_in), scan=scan_layers)
  logits = _head(params, cfg, x)
  if state is None:
    return logits, None
  return logits, {"k": kv_out[0], "v": kv_out[1], "index": index + T}


def step(params: Params, cfg: TransformerConfig, token: jax.Array, state: Cache, *, impl: str = "auto"
         ) -> tuple[jax.Array, Cache]:
  """One decode step with the KV cache: token [B] ints -> logits [B, V] float32 and the updated cache."""
  logits, state = forward(params, cfg, token[:, None], state, impl=impl)
  return logits[:, 0], state


def prefill(params: Params, cfg: TransformerConfig, tokens: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
  """Runs a prompt [B, T] into the cache: (logits [B, T, V] float32, cache)."""
  return forward(params, cfg, tokens, cache)


def decode_step(params: Params, cfg: TransformerConfig, token: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
  """Same as `step`."""
  return step(params, cfg, token, cache)


def forward_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """Forward FLOPs per token at sequence length seq_len (a third of TransformerConfig.flops_per_token)."""
  return cfg.flops_per_token(seq_len) / 3
