"""Pieces shared by the models: the layer loop, norms, token shift, linear layers in the compute dtype, the LM-head
logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-5


def layer_loop(body, carry, xs, *, scan: bool = True):
  """`jax.lax.scan(body, carry, xs)` over the leading (layer) axis of xs, or, with scan=False, the same loop
  unrolled: body runs once per layer on that layer's slices (`jnp.unstack`, whose transpose concatenates the
  per-layer gradients into the stacked one) and its per-layer outputs are stacked.

  Unrolled, each layer's saved activations are buffers of their own; under scan XLA writes them into stacked
  [L, ...] buffers and reads them back in the backward pass, a copy of every residual each way (on an H100
  about 9% of a 1.3B Llama's training step). Unrolling costs compile time (one copy of the block per layer).
  Returns (carry, stacked outputs), as lax.scan does."""
  if scan:
    return jax.lax.scan(body, carry, xs)
  leaves, treedef = jax.tree.flatten(xs)
  n = leaves[0].shape[0]
  per_layer = [jnp.unstack(a) for a in leaves]
  ys = []
  for i in range(n):
    carry, y = body(carry, jax.tree.unflatten(treedef, [a[i] for a in per_layer]))
    ys.append(y)
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


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


def check_reset_state(reset_state: jax.Array | None, n_layer: int) -> None:
  """A model forward's `reset_state`: None, or [L, B, H, K, V] / [L, 1, H, K, V] float32 (one state per layer;
  the WKV op checks the per-layer [B, H, K, V] part)."""
  if reset_state is not None and (reset_state.ndim != 5 or reset_state.shape[0] != n_layer):
    raise ValueError(f"forward: reset_state has shape {reset_state.shape}; expected [L, B, H, K, V] or "
                     f"[L, 1, H, K, V] with L = n_layer = {n_layer}")


def linear(x: jax.Array, weight: jax.Array) -> jax.Array:
  """torch.nn.Linear without bias: x [..., in] @ weight[out, in]^T -> [..., out] in x.dtype (weight is cast to
  x.dtype first; bf16 products accumulate in float32 inside the matmul, as torch's do). No float32 result is
  asked for: it would make the backward pass's matmuls take a float32 cotangent and run in fp32/TF32."""
  return jnp.einsum("...i,oi->...o", x, weight.astype(x.dtype))


def matmul(x: jax.Array, weight: jax.Array) -> jax.Array:
  """x [..., in] @ weight [in, out] (LoRA matrices are stored (in, out)) in x.dtype, as `linear`."""
  return jnp.einsum("...i,io->...o", x, weight.astype(x.dtype))


@jax.custom_vjp
def head_logits(x: jax.Array, weight: jax.Array) -> jax.Array:
  """LM-head logits: x [..., C] @ weight [V, C]^T -> [..., V] float32 (the softmax and the loss need float32).

  weight must already be in x.dtype (the compute dtype). The backward pass casts the float32 cotangent to
  x.dtype, so its two matmuls (d x and d weight, each as large as the forward one) run at the compute dtype's
  rate; plain autodiff of a float32-result einsum would run them in fp32/TF32. d weight is returned in
  x.dtype, like the gradient of any other compute-dtype weight."""
  return jnp.einsum("...c,vc->...v", x, weight, preferred_element_type=jnp.float32)


def _head_logits_fwd(x, weight):
  return head_logits(x, weight), (x, weight)


def _head_logits_bwd(res, g):
  x, weight = res
  g = g.astype(x.dtype)
  dx = jnp.einsum("...v,vc->...c", g, weight, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jnp.einsum("...v,...c->vc", g, x, preferred_element_type=jnp.float32).astype(weight.dtype)
  return dx, dw


head_logits.defvjp(_head_logits_fwd, _head_logits_bwd)
