"""Language-model losses: masked next-token cross-entropy and RWKV-LM's L2Wrap."""

from __future__ import annotations

import jax
import jax.numpy as jnp

L2WRAP_FACTOR = 1e-4


@jax.custom_vjp
def l2wrap_penalty(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Zero in the forward pass; in the backward pass adds max_logit * 1e-4 / n_tokens to the gradient of
  each position's largest logit (scaled by the incoming gradient, as in RWKV-LM's fixed L2Wrap).
  logits [..., V] float; mask [...] (positions with mask 0 get nothing)."""
  del logits, mask
  return jnp.zeros((), jnp.float32)


def _l2wrap_fwd(logits, mask):
  return jnp.zeros((), jnp.float32), (logits, mask)


def _l2wrap_bwd(residuals, g):
  logits, mask = residuals
  n_tokens = jnp.maximum(mask.sum(), 1.0)
  top = jnp.max(logits, axis=-1, keepdims=True)
  onehot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)
  grad = g * onehot * top * (L2WRAP_FACTOR / n_tokens) * mask[..., None].astype(logits.dtype)
  return grad.astype(logits.dtype), jnp.zeros_like(mask)


l2wrap_penalty.defvjp(_l2wrap_fwd, _l2wrap_bwd)


@jax.custom_vjp
def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-log softmax(logits)[target] per position, float32: logits [..., V], targets [...] int -> [...].

  The backward pass is written out as softmax - onehot(target) (an elementwise expression XLA fuses), not
  left to autodiff, whose gather transpose scatters into a dense [..., V] buffer."""
  return _nll_fwd(logits, targets)[0]


def _nll_fwd(logits, targets):
  logits32 = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits32, axis=-1)
  target_logit = jnp.take_along_axis(logits32, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return lse - target_logit, (logits, targets, lse)


def _nll_bwd(residuals, g):
  logits, targets, lse = residuals
  probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
  onehot = targets[..., None] == jnp.arange(logits.shape[-1], dtype=targets.dtype)
  grad = g[..., None] * (probs - onehot.astype(jnp.float32))
  return grad.astype(logits.dtype), None


_token_nll.defvjp(_nll_fwd, _nll_bwd)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Masked mean next-token cross-entropy (float32).

  Args: logits [B, T, V]; targets [B, T] int; mask [B, T] float (1 = counts).
  Returns: (mean loss over masked positions, number of masked positions).
  """
  nll = _token_nll(logits, targets)
  mask = mask.astype(jnp.float32)
  count = mask.sum()
  return (nll * mask).sum() / jnp.maximum(count, 1.0), count


def lm_loss(logits, targets, mask, *, l2wrap: bool = True) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy plus (optionally) the L2Wrap gradient term. Returns (loss, masked token count)."""
  loss, count = cross_entropy(logits, targets, mask)
  if l2wrap:
    loss = loss + l2wrap_penalty(logits, mask.astype(jnp.float32))
  return loss, count
