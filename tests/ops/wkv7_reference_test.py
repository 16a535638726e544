"""The reference WKV-7 backend against an independent float64 loop in the official RWKV-7 layout."""

import jax.numpy as jnp
import numpy as np
import pytest

from rwkvjax import ops


def official_loop(r, w, k, v, a, b, s0, starts):
  """RWKV-LM's kernel, element form, state S[value i, key j] (float64, one batch row at a time)."""
  B, T, H, N = r.shape
  out = np.zeros((B, T, H, N))
  S = np.swapaxes(s0, -1, -2).astype(np.float64).copy()  # op layout [K, V] -> official [V, K]
  for bi in range(B):
    for t in range(T):
      if starts[bi, t]:
        S[bi] = 0.0
      for h in range(H):
        sa = S[bi, h] @ a[bi, t, h]
        S[bi, h] = S[bi, h] * np.exp(w[bi, t, h])[None, :] + np.outer(sa, b[bi, t, h]) + np.outer(v[bi, t, h], k[bi, t, h])
        out[bi, t, h] = S[bi, h] @ r[bi, t, h]
  return out, np.swapaxes(S, -1, -2)


def rwkv7_inputs(rng, B, T, H, N):
  f = lambda *s: rng.standard_normal(s)
  kappa = f(B, T, H, N)
  kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
  iclr = 1 / (1 + np.exp(-f(B, T, H, N)))
  w = -np.exp(-0.5) / (1 + np.exp(-f(B, T, H, N)))
  return f(B, T, H, N) * 0.5, w, f(B, T, H, N) * 0.5, f(B, T, H, N), -kappa, kappa * iclr


@pytest.mark.parametrize("with_state,with_resets", [(False, False), (True, False), (True, True)])
def test_reference_matches_official_loop(with_state, with_resets):
  rng = np.random.default_rng()
  B, T, H, N = 2, 13, 2, 8
  r, w, k, v, a, b = rwkv7_inputs(rng, B, T, H, N)
  s0 = rng.standard_normal((B, H, N, N)) if with_state else np.zeros((B, H, N, N))
  seg = np.zeros((B, T), np.int32)
  if with_resets:
    seg[0, 4:] = 1
    seg[0, 9:] = 2
    seg[1, 1:] = 5
  starts = np.concatenate([np.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
  want_o, want_s = official_loop(r, w, k, v, a, b, s0, starts)
  args = [jnp.asarray(x, jnp.float32) for x in (r, w, k, v, a, b)]
  o, s = ops.wkv7(*args, jnp.asarray(s0, jnp.float32) if with_state else None,
                  segment_ids=jnp.asarray(seg) if with_resets else None, impl="reference")
  assert o.dtype == jnp.float32 and s.dtype == jnp.float32
  np.testing.assert_allclose(o, want_o, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_give_bf16_output_and_fp32_state():
  rng = np.random.default_rng()
  args = [jnp.asarray(x, jnp.bfloat16) for x in rwkv7_inputs(rng, 1, 5, 1, 16)]
  o, s = ops.wkv7(*args, impl="reference")
  assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32


@pytest.mark.parametrize("bad", ["k_shape", "state_shape", "seg_shape", "seg_dtype", "impl"])
def test_bad_inputs_name_the_argument(bad):
  x = jnp.zeros((1, 4, 2, 8))
  args = [x] * 6
  kwargs = {}
  state = None
  if bad == "k_shape":
    args[2] = jnp.zeros((1, 4, 2, 4))
    match = "k has shape"
  elif bad == "state_shape":
    state = jnp.zeros((1, 2, 8, 4))
    match = "initial_state"
  elif bad == "seg_shape":
    kwargs["segment_ids"] = jnp.zeros((1, 3), jnp.int32)
    match = "segment_ids"
  elif bad == "seg_dtype":
    kwargs["segment_ids"] = jnp.zeros((1, 4), jnp.float32)
    match = "integer"
  else:
    kwargs["impl"] = "nope"
    match = "impl='nope'"
  with pytest.raises(ValueError, match=match):
    ops.wkv7(*args, state, **kwargs)


def test_auto_resolves_to_a_registered_backend():
  assert ops.resolve_impl("auto") in ops.backends()
  assert "reference" in ops.backends()
