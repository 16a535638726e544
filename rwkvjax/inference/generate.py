"""Recurrent generation: a parallel prefill of the prompt, then one `step` per new token (one compiled loop)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rwkvjax.config.model import ModelConfig
from rwkvjax.inference.sampling import sample_logits
from rwkvjax.models import get_model


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_p", "top_k", "impl"))
def generate(params: Any, cfg: ModelConfig, prompt: jax.Array, key: jax.Array, *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 0.85, top_k: int = 0, state: Any = None,
             impl: str = "auto") -> tuple[jax.Array, Any]:
  """Samples a continuation of each prompt.

  Args:
    prompt: [B, T] int token ids (T >= 1).
    key: PRNG key for sampling.
    state: optional recurrent state before the prompt (e.g. a tuned initial state); None starts fresh.
  Returns:
    new tokens [B, max_new_tokens] int32, and the state after the prompt and every new token (ready to
    continue the same sequences).
  """
  model = get_model(cfg.version)
  logits, state = model.forward(params, cfg, prompt, state, impl=impl)

  def body(carry, step_key):
    logits, state = carry
    token = sample_logits(step_key, logits, temperature, top_p, top_k)
    logits, state = model.step(params, cfg, token, state, impl=impl)
    return (logits, state), token

  (_, state), tokens = jax.lax.scan(body, (logits[:, -1], state), jax.random.split(key, max_new_tokens))
  return tokens.T, state
