"""Generation for every model family: a parallel prefill of the prompt, then one `step` per new token (one
compiled loop). RWKV models carry their recurrent state; transformers (TransformerConfig) carry a KV cache
sized for the prompt plus the new tokens."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import jax

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.inference.sampling import sample_logits
from rwkvjax.models import get_model, transformer


def model_for(cfg: ModelConfig | TransformerConfig) -> ModuleType:
  """The model module of a config: rwkvjax.models.transformer for TransformerConfig, else by RWKV version."""
  return transformer if isinstance(cfg, TransformerConfig) else get_model(cfg.version)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_p", "top_k", "impl"))
def generate(params: Any, cfg: ModelConfig | TransformerConfig, prompt: jax.Array, key: jax.Array, *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 0.85, top_k: int = 0,
             state: Any = None, impl: str = "auto") -> tuple[jax.Array, Any]:
  """Samples a continuation of each prompt.

  Args:
    prompt: [B, T] int token ids (T >= 1).
    key: PRNG key for sampling.
    state: optional state before the prompt. RWKV: a recurrent state (e.g. a tuned initial state); None
      starts fresh. Transformers: a KV cache (`transformer.init_cache`) with room for T + max_new_tokens more
      positions; None makes one of exactly that size.
  Returns:
    new tokens [B, max_new_tokens] int32, and the state (RWKV) or KV cache (transformers) after the prompt
    and every new token (ready to continue the same sequences).
  """
  model = model_for(cfg)
  if state is None and model is transformer:
    state = transformer.init_cache(cfg, prompt.shape[0], prompt.shape[1] + max_new_tokens)
  logits, state = model.forward(params, cfg, prompt, state, impl=impl)

  def body(carry, step_key):
    logits, state = carry
    token = sample_logits(step_key, logits, temperature, top_p, top_k)
    logits, state = model.step(params, cfg, token, state, impl=impl)
    return (logits, state), token

  (_, state), tokens = jax.lax.scan(body, (logits[:, -1], state), jax.random.split(key, max_new_tokens))
  return tokens.T, state
