"""Pieces shared by the RWKV models: norms, token shift, linear layers with float32 accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-5


def layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
  """LayerNorm over the last axis (biased variance, like torch), computed in float32, returned in x.dtype."""
  xf = x.astype(jnp.float32)
  mean = xf.mean(-1, keepdims=True)
  var = jnp.square(xf - mean).mean(-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + eps) * weight + bias
  return y.astype(x.dtype)


def group_norm(x: jax.Array, n_groups: int, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """GroupNorm of torch on [..., C]: each of `n_groups` contiguous channel groups normalised alone, then a
  per-channel affine. Computed in float32, returned in x.dtype."""
  shape = x.shape
  xf = x.astype(jnp.float32).reshape(*shape[:-1], n_groups, shape[-1] // n_groups)
  mean = xf.mean(-1, keepdims=True)
  var = jnp.square(xf - mean).mean(-1, keepdims=True)
  y = ((xf - mean) * jax.lax.rsqrt(var + eps)).reshape(shape) * weight + bias
  return y.astype(x.dtype)


def token_shift(x: jax.Array, prev: jax.Array, starts: jax.Array | None = None) -> jax.Array:
  """x_{t-1} for every t: [B, T, C] -> [B, T, C].

  `prev` [B, C] is the token before x[:, 0] (the carried shift state, zeros for a fresh sequence).
  `starts` [B, T] bool marks segment starts (t > 0) where x_{t-1} is replaced by zeros.
  """
  shifted = jnp.concatenate([prev[:, None, :].astype(x.dtype), x[:, :-1]], axis=1)
  if starts is not None:
    shifted = jnp.where(starts[..., None], jnp.zeros_like(shifted), shifted)
  return shifted


def linear(x: jax.Array, weight: jax.Array) -> jax.Array:
  """torch.nn.Linear without bias: x [..., in] @ weight[out, in]^T -> [..., out], float32 accumulation,
  result in x.dtype (weight is cast to x.dtype first)."""
  y = jnp.einsum("...i,oi->...o", x, weight.astype(x.dtype), preferred_element_type=jnp.float32)
  return y.astype(x.dtype)


def matmul(x: jax.Array, weight: jax.Array) -> jax.Array:
  """x [..., in] @ weight [in, out] (LoRA matrices are stored (in, out)), float32 accumulation."""
  y = jnp.einsum("...i,io->...o", x, weight.astype(x.dtype), preferred_element_type=jnp.float32)
  return y.astype(x.dtype)
