"""The teacher side of distillation: a Llama / Qwen2 decoder (`rwkvjax.models.transformer`) run for its final
hidden states (no LM head, so big-vocabulary logits are never formed whole) and its per-layer pieces.

Training forward only (no KV cache); packed documents (segment_ids) attend within themselves and restart
their RoPE positions, exactly as `transformer.forward` does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.models import layers, transformer

Params = dict[str, Any]


def attention_inputs(cfg: TransformerConfig, batch: int, length: int, segment_ids: jax.Array | None):
  """(cos, sin, mask, is_causal) of a training forward over [batch, length] tokens, as transformer.forward
  builds them: RoPE tables for positions 0..T-1 (per document with segment_ids) and the document mask."""
  mask = None
  if segment_ids is not None:
    docs, positions = transformer.segment_positions(segment_ids)
    mask = (docs[:, :, None] == docs[:, None, :])[:, None]
  else:
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  cos, sin = transformer.rope_tables(cfg, positions)
  return cos, sin, mask, True


def attention(p: Params, cfg: TransformerConfig, h: jax.Array, att_in, impl: str = "auto") -> jax.Array:
  """Self-attention of one layer (`p` = the layer's `self_attn` params) on h = RMSNorm output [B, T, C]."""
  cos, sin, mask, is_causal = att_in
  out, _ = transformer.attention(p, cfg, h, cos, sin, mask=mask, is_causal=is_causal, impl=impl)
  return out


def mlp_residual(p: Params, cfg: TransformerConfig, x: jax.Array) -> jax.Array:
  """x + MLP(RMSNorm(x)) with the layer's post-attention norm (`p` = the layer's params)."""
  return x + transformer.mlp(p["mlp"], transformer.rms_norm(x, p["post_attention_layernorm"]["weight"],
                                                               cfg.rms_norm_eps))


def block(p: Params, cfg: TransformerConfig, x: jax.Array, att_in, impl: str = "auto") -> jax.Array:
  """One decoder layer (pre-norm attention, then pre-norm SwiGLU)."""
  h = transformer.rms_norm(x, p["input_layernorm"]["weight"], cfg.rms_norm_eps)
  x = x + attention(p["self_attn"], cfg, h, att_in, impl)
  return mlp_residual(p, cfg, x)


def embed(params: Params, cfg: TransformerConfig, tokens: jax.Array) -> jax.Array:
  return jnp.take(jnp.asarray(params["model"]["embed_tokens"]["weight"], jnp.dtype(cfg.compute_dtype)), tokens,
                  axis=0)


def head_weight(params: Params, cfg: TransformerConfig) -> jax.Array:
  """The LM head matrix [V, C] (the embedding when tied)."""
  return params["model"]["embed_tokens"]["weight"] if cfg.tie_word_embeddings else params["lm_head"]["weight"]


def hidden(params: Params, cfg: TransformerConfig, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
           impl: str = "auto", remat: str = "none", scan_layers: bool = True) -> jax.Array:
  """Final hidden states [B, T, C] (after the final RMSNorm, in the compute dtype): logits are
  hidden @ head_weight.T, as transformer.forward computes them. scan_layers: the layers under lax.scan or
  unrolled (`layers.layer_loop`)."""
  B, T = tokens.shape
  att_in = attention_inputs(cfg, B, T, segment_ids)

  def body(x, p):
    return block(p, cfg, x, att_in, impl), None

  if remat != "none":
    body = jax.checkpoint(body, policy=transformer.REMAT_POLICIES[remat])
  x, _ = layers.layer_loop(body, embed(params, cfg, tokens), params["model"]["layers"], scan=scan_layers)
  return transformer.rms_norm(x, params["model"]["norm"]["weight"], cfg.rms_norm_eps)
