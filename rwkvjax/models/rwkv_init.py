"""RWKV-LM's initialisation rules shared by x052, x060 and x070 (`__init__` + `generate_init_weight`).

Each rule is an init function `init(key, layer, cfg) -> float32 array` (see rwkvjax.models.params.InitFn), or a
factory of one for a given shape.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from rwkvjax.config.model import ModelConfig


def ratios(layer, cfg: ModelConfig):
  """(ratio_0_to_1, ratio_1_to_almost0) = (l / (L-1), 1 - l / L); ratio_0_to_1 is 0 when L == 1."""
  l = jnp.asarray(layer, jnp.float32)
  r0 = l / (cfg.n_layer - 1) if cfg.n_layer > 1 else jnp.zeros((), jnp.float32)
  return r0, 1.0 - l / cfg.n_layer


def ddd(C: int) -> jax.Array:
  return jnp.arange(C, dtype=jnp.float32) / C


def orthogonal(gain: float | Callable[[tuple[int, ...], ModelConfig], float]):
  """torch.nn.init.orthogonal_ with a fixed gain or gain(shape, cfg)."""
  def factory(shape):
    def init(key, layer, cfg):
      del layer
      g = gain(shape, cfg) if callable(gain) else gain
      return jax.nn.initializers.orthogonal(scale=g)(key, shape, jnp.float32)
    return init
  return factory


def head_gain(shape, cfg):
  del shape
  return 0.5 * math.sqrt(cfg.vocab_size / cfg.n_embd) if cfg.vocab_size > cfg.n_embd else 0.5


def zeros(shape):
  return lambda key, layer, cfg: jnp.zeros(shape, jnp.float32)


def ones(shape):
  return lambda key, layer, cfg: jnp.ones(shape, jnp.float32)


def uniform(shape, bound: float):
  return lambda key, layer, cfg: jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def ln_x_weight_init(key, layer, cfg):
  del key
  return jnp.full((cfg.n_embd,), ((jnp.asarray(layer, jnp.float32) + 1) / cfg.n_layer) ** 0.7, jnp.float32)


def emb_init(key, layer, cfg):
  del layer
  return jax.random.uniform(key, (cfg.vocab_size, cfg.n_embd), jnp.float32, -1e-4, 1e-4)
