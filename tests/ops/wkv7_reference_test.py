"""The reference WKV-7 backend against an independent float64 loop in the official RWKV-7 layout; the reference
backends of wkv7/wkv6/wkv5 with a reset_state against running each packed document alone; the op API checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkvjax import ops
from rwkvjax.ops import api


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


# ------------------------------------------------------------------------------------------------------------------
# reset_state: packed segments restart from a given state
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["wkv7", "wkv6", "wkv5"])
@pytest.mark.parametrize("reset_batch", [1, 2])
def test_reference_restarts_every_document_from_reset_state(op, reset_batch):
  """A packed row with reset_state equals running each document alone: the first from initial_state, every
  later one from reset_state (per row, or one [1, H, K, V] for all rows); the final state is the last
  document's."""
  rng = np.random.default_rng()
  B, T, H, N = 2, 13, 2, 8
  if op == "wkv7":
    arrays = tuple(jnp.asarray(x, jnp.float32) for x in rwkv7_inputs(rng, B, T, H, N))
  else:
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    w = -jnp.exp(jnp.asarray(rng.uniform(-4.0, 1.0, (H, N) if op == "wkv5" else (B, T, H, N)), jnp.float32))
    arrays = (f(B, T, H, N) * 0.5, w, f(B, T, H, N) * 0.5, f(B, T, H, N), f(H, N) * 0.5)
  s0 = jnp.asarray(rng.standard_normal((B, H, N, N)), jnp.float32)
  reset = jnp.asarray(rng.standard_normal((reset_batch, H, N, N)), jnp.float32)
  bounds = [[0, 4, 9, 10, T], [0, 1, 7, T]]  # row 1 restarts at t = 1; row 0 has a one-token document
  seg = np.zeros((B, T), np.int32)
  for row, bs in enumerate(bounds):
    for i, (lo, hi) in enumerate(zip(bs[:-1], bs[1:])):
      seg[row, lo:hi] = 3 * i + row
  fn = getattr(ops, op)
  o, s = fn(*arrays, s0, segment_ids=jnp.asarray(seg), reset_state=reset, impl="reference")
  for row, bs in enumerate(bounds):
    state = s0[row:row + 1]
    for i, (lo, hi) in enumerate(zip(bs[:-1], bs[1:])):
      start = state if i == 0 else reset[row % reset_batch][None]
      doc = tuple(x[row:row + 1, lo:hi] if x.shape[:2] == (B, T) else x for x in arrays)  # wkv5's w, u: [H, N]
      o_doc, state = fn(*doc, start, impl="reference")
      np.testing.assert_allclose(o[row:row + 1, lo:hi], o_doc, rtol=1e-5, atol=1e-5, err_msg=f"row {row} doc {i}")
    np.testing.assert_allclose(s[row:row + 1], state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
  (dict(reset_state=jnp.ones((2, 8, 8))), r"reset_state has shape \(2, 8, 8\); expected \[B, H, K, V\]"),
  (dict(reset_state=jnp.ones((3, 2, 8, 8))), r"reset_state has shape \(3, 2, 8, 8\)"),
  (dict(reset_state=jnp.ones((1, 2, 8, 8), jnp.int32)), "reset_state has dtype int32"),
  (dict(reset_state=jnp.ones((1, 2, 8, 8)), segment_ids=None), "reset_state is given without segment_ids"),
])
@pytest.mark.parametrize("op", ["wkv7", "wkv6"])
def test_bad_reset_state_names_the_argument(op, bad, match):
  x = jnp.ones((2, 4, 2, 8))
  arrays = (x,) * 6 if op == "wkv7" else (x, x, x, x, jnp.ones((2, 8)))
  kwargs = dict(segment_ids=jnp.asarray([[0, 0, 1, 1], [0, 1, 1, 1]])) | bad
  with pytest.raises(ValueError, match=match):
    getattr(ops, op)(*arrays, **kwargs)


def test_reset_state_selects_backends_that_support_it(monkeypatch):
  """`supports_reset_state` in register_backend: "auto" skips other backends when a reset_state is given, naming
  one raises NotImplementedError, and such a backend is called without a reset_state argument otherwise."""
  for name in ("_BACKENDS", "_AUTO_ORDER", "_RESET_STATE"):  # a private copy of the registry for this test
    monkeypatch.setattr(api, name, {k: list(v) if isinstance(v, list) else v for k, v in getattr(api, name).items()})
  calls = []

  def plain(r, w, k, v, a, b, initial_state, segment_ids):  # the contract without reset_state
    calls.append("plain")
    return ops.wkv7(r, w, k, v, a, b, initial_state, segment_ids=segment_ids, impl="reference")

  platform = jax.default_backend()
  ops.register_backend("plain", plain, auto_platforms=(platform,))
  assert ops.resolve_impl("auto") == "plain" and "plain" not in ops.backends(reset_state=True)
  assert ops.resolve_impl("auto", reset_state=True) in ops.backends(reset_state=True)
  rng = np.random.default_rng()
  arrays = [jnp.asarray(x, jnp.float32) for x in rwkv7_inputs(rng, 1, 6, 1, 8)]
  seg = jnp.asarray([[0, 0, 0, 1, 1, 1]])
  reset = jnp.asarray(rng.standard_normal((1, 1, 8, 8)), jnp.float32)
  ops.wkv7(*arrays, segment_ids=seg)
  assert calls == ["plain"]
  o, _ = ops.wkv7(*arrays, segment_ids=seg, reset_state=reset)  # "auto": not the plain backend
  assert calls == ["plain"]
  o_ref, _ = ops.wkv7(*arrays, segment_ids=seg, reset_state=reset, impl="reference")
  np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(NotImplementedError, match="impl='plain' does not support reset_state"):
    ops.wkv7(*arrays, segment_ids=seg, reset_state=reset, impl="plain")
