"""Sampling a next token from logits, with the official `rwkv` package's semantics.

The official PIPELINE.sample_logits takes the nucleus (top-p) of softmax(logits), then optionally the top-k,
then applies the temperature as probs ** (1 / temperature) and samples. temperature == 0 means greedy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_logits(key: jax.Array, logits: jax.Array, temperature: float = 1.0, top_p: float = 0.85,
                  top_k: int = 0) -> jax.Array:
  """Samples token ids [B] int32 from logits [B, V].

  Args:
    temperature: > 0 flattens (>1) or sharpens (<1) the kept distribution; 0 gives argmax.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1.0 keeps all).
    top_k: if > 0, also keep at most the k most likely tokens.
  """
  if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
    raise ValueError(f"sample_logits: temperature={temperature} (>= 0), top_p={top_p} (in (0, 1]), "
                     f"top_k={top_k} (>= 0) out of range")
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  sorted_probs = jnp.sort(probs, axis=-1)[:, ::-1]
  cumulative = jnp.cumsum(sorted_probs, axis=-1)
  cutoff_index = jnp.argmax(cumulative >= top_p, axis=-1)
  cutoff = jnp.take_along_axis(sorted_probs, cutoff_index[:, None], axis=-1)
  if top_k > 0:
    cutoff = jnp.maximum(cutoff, sorted_probs[:, min(top_k, probs.shape[-1]) - 1:][:, :1])
  probs = jnp.where(probs < cutoff, 0.0, probs)
  if temperature != 1.0:
    probs = probs ** (1.0 / temperature)
  return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)
