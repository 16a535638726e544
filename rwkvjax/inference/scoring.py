"""Logits (and, for RWKV, the final recurrent state in the official package's layout) of a model over one token
sequence, in parallel or recurrent mode: what the logits tool writes."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from rwkvjax.models import get_model, transformer


def load_tokens(path: str, vocab_size: int) -> np.ndarray:
  """Reads a 1-D integer .npy of token ids and checks them against the vocabulary."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--tokens {path} does not exist")
  tokens = np.load(path)
  if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"--tokens {path}: expected a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
  if tokens.size == 0:
    raise ValueError(f"--tokens {path}: is empty")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(f"--tokens {path}: ids must be in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
  return tokens.astype(np.int32)


def run(params, cfg, tokens: np.ndarray, mode: str, impl: str = "auto"):
  """Returns (logits [T, V] float32, state dict in the official layout) for one sequence."""
  model = get_model(cfg.version)
  toks = jnp.asarray(tokens)[None]
  if mode == "parallel":
    logits, state = jax.jit(lambda p, t: model.forward(p, cfg, t, impl=impl))(params, toks)
    logits = logits[0]
  else:
    def scan_tokens(p, t):
      def body(state, tok):
        logits, state = model.step(p, cfg, tok[None], state, impl=impl)
        return state, logits[0]
      state, logits = jax.lax.scan(body, model.init_state(cfg, 1), t[0])
      return logits, state
    logits, state = jax.jit(scan_tokens)(params, toks)
  return np.asarray(logits, np.float32), {k: np.asarray(v, np.float32) for k, v in model.official_state(state).items()}


def run_transformer(params, cfg, tokens: np.ndarray, mode: str, impl: str = "auto") -> np.ndarray:
  """Logits [T, V] float32 of an HF-family model for one sequence (recurrent: through the KV cache)."""
  toks = jnp.asarray(tokens)[None]
  # float32 means float32 matmuls: on GPU the default precision is TF32 (measured on an H100: 1e-2 from
  # transformers' logits on the fixtures, against 5e-6 with "highest").
  precision = "highest" if cfg.compute_dtype == "float32" else "default"
  with jax.default_matmul_precision(precision):
    if mode == "parallel":
      logits, _ = jax.jit(lambda p, t: transformer.forward(p, cfg, t, impl=impl))(params, toks)
    else:
      def scan_tokens(p, t):
        def body(cache, tok):
          logits, cache = transformer.step(p, cfg, tok[None], cache)
          return cache, logits[0]
        _, logits = jax.lax.scan(body, transformer.init_cache(cfg, 1, t.shape[1]), t[0])
        return logits[None]
      logits = jax.jit(scan_tokens)(params, toks)
  return np.asarray(logits[0], np.float32)
