"""WKV-5 / WKV-6: the reference against an independent float64 loop in the official layout, and every backend
against the reference (outputs, final state, gradients of all inputs, of the initial state and of the reset
state)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkvjax import ops
from rwkvjax.ops.chunked_v56 import wkv6_chunked
from tests.ops.wkv7_chunked_test import runs_here

B, T, H, N = 2, 45, 2, 16  # T is not a multiple of any chunk size used here


def official_loop(r, w, k, v, u, s0, starts):
  """RWKV-LM's wkv6 kernel (one thread per value index j), float64; state S[key i, value j]."""
  Bb, Tt, Hh, Nn = r.shape
  out = np.zeros((Bb, Tt, Hh, Nn))
  S = s0.astype(np.float64).copy()
  for bi in range(Bb):
    for t in range(Tt):
      if starts[bi, t]:
        S[bi] = 0.0
      for h in range(Hh):
        kv = np.outer(k[bi, t, h], v[bi, t, h])
        out[bi, t, h] = r[bi, t, h] @ (u[h][:, None] * kv + S[bi, h])
        S[bi, h] = np.exp(w[bi, t, h])[:, None] * S[bi, h] + kv
  return out, S


def segments(rng):
  seg = np.zeros((B, T), np.int32)
  seg[0, 7:] = 1
  seg[0, 16:] = 2   # a reset on a chunk boundary of 16
  seg[0, 37:] = 3
  seg[1, 1:] = 5
  seg[1, int(rng.integers(20, 40)):] = 6
  return seg


def starts_of(seg):
  return np.concatenate([np.zeros((seg.shape[0], 1), bool), seg[:, 1:] != seg[:, :-1]], 1)


def inputs(rng, log_decay_max=3.0):
  """Fresh random inputs. v6 decays w = -exp(d) with d in [-8, log_decay_max]: per-token decays from ~1 down to
  e^-exp(3) ~ 2e-9 (realistic trained RWKV-6 values are in this range; e^{-Λ} alone would overflow fp32)."""
  f = lambda *s: rng.standard_normal(s)
  w6 = -np.exp(rng.uniform(-8.0, log_decay_max, (B, T, H, N)))
  w5 = -np.exp(rng.uniform(-6.0, 1.0, (H, N)))
  return dict(r=f(B, T, H, N) * 0.5, k=f(B, T, H, N) * 0.5, v=f(B, T, H, N), u=f(H, N) * 0.5, w5=w5, w6=w6,
              s0=f(B, H, N, N))


def call(op, x, w, impl, with_state=True, seg=None, dtype=jnp.float32):
  args = [jnp.asarray(x[n], dtype) for n in ("r",)] + [jnp.asarray(w, jnp.float32)] + \
      [jnp.asarray(x[n], dtype) for n in ("k", "v")] + [jnp.asarray(x["u"], jnp.float32)]
  s0 = jnp.asarray(x["s0"], jnp.float32) if with_state else None
  fn = jax.jit(functools.partial(getattr(ops, op), impl=impl))
  return fn(*args, s0, segment_ids=None if seg is None else jnp.asarray(seg))


@pytest.mark.parametrize("op", ["wkv5", "wkv6"])
@pytest.mark.parametrize("with_state,with_resets", [(False, False), (True, True)])
def test_reference_matches_official_loop(op, with_state, with_resets):
  rng = np.random.default_rng()
  x = inputs(rng)
  w = x["w5"] if op == "wkv5" else x["w6"]
  seg = segments(rng) if with_resets else np.zeros((B, T), np.int32)
  s0 = x["s0"] if with_state else np.zeros((B, H, N, N))
  want_o, want_s = official_loop(x["r"], np.broadcast_to(w, (B, T, H, N)), x["k"], x["v"], x["u"], s0, starts_of(seg))
  o, s = call(op, x, w, "reference", with_state, seg if with_resets else None)
  assert o.dtype == jnp.float32 and s.dtype == jnp.float32
  np.testing.assert_allclose(o, want_o, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def bound(op, impl, **kw):
  """The op with its backend bound: fn(r, w, k, v, u, s0, segment_ids, reset_state) -> (o, final_state)."""
  if impl == "chunked" and kw:
    return lambda r, w, k, v, u, s0, seg, reset: wkv6_chunked(r, w, k, v, u, s0, seg, reset, **kw)
  return lambda r, w, k, v, u, s0, seg, reset: getattr(ops, op)(r, w, k, v, u, s0, segment_ids=seg,
                                                                reset_state=reset, impl=impl)


@functools.lru_cache(maxsize=None)
def compiled(op, impl, **kw):
  """(forward, gradient) jitted once per backend (the tests share shapes). The gradient is that of a random
  projection of (o, final_state) w.r.t. r, w, k, v, u, the initial state and the reset state (if not None)."""
  fn = bound(op, impl, **kw)

  def loss(r, w, k, v, u, s0, reset, seg, proj_o, proj_s):
    o, s = fn(r, w, k, v, u, s0, seg, reset)
    return (o * proj_o).sum() + (s * proj_s).sum()

  return jax.jit(fn), jax.jit(jax.grad(loss, argnums=tuple(range(7))))


def run(op, impl, x, w, seg, reset=None, **kw):
  """(o, final_state, grads) of one backend; seg None means no resets, reset None restarts from zero."""
  fwd, grad = compiled(op, impl, **kw)
  args = [jnp.asarray(a, jnp.float32) for a in (x["r"], w, x["k"], x["v"], x["u"], x["s0"])]
  reset = None if reset is None else jnp.asarray(reset, jnp.float32)
  seg = jnp.asarray(np.zeros((B, T), np.int32) if seg is None else seg)
  proj = np.random.default_rng(1)
  o, s = fwd(*args, seg, reset)
  g = grad(*args, reset, seg, jnp.asarray(proj.standard_normal((B, T, H, N)), jnp.float32),
           jnp.asarray(proj.standard_normal((B, H, N, N)), jnp.float32))
  return o, s, [x for x in g if x is not None]


def assert_matches(got, want, what):
  names = ("o", "final_state", "dr", "dw", "dk", "dv", "du", "d_initial_state", "d_reset_state")
  for name, a, b in zip(names, (*got[:2], *got[2]), (*want[:2], *want[2])):
    assert np.all(np.isfinite(np.asarray(a))), (what, name)
    assert rel_err(a, b) <= 1e-4, (what, name, rel_err(a, b))


def other_backends(op):
  """The pure-JAX backends besides the reference (the Pallas ones are tested in wkv56_pallas_test.py)."""
  return [b for b in ops.backends(op) if b != "reference" and not b.startswith("pallas")]


@pytest.mark.parametrize("op", ["wkv5", "wkv6"])
def test_backends_match_reference(op):
  """Outputs, final state and all gradients (initial state included), with resets (one on a chunk boundary),
  a carried initial state and T = 45 (not a multiple of any chunk size)."""
  rng = np.random.default_rng()
  x = inputs(rng)
  w = x["w5"] if op == "wkv5" else x["w6"]
  seg = segments(rng)
  want = run(op, "reference", x, w, seg)
  assert other_backends(op), ops.backends(op)
  for impl in other_backends(op):
    assert_matches(run(op, impl, x, w, seg), want, impl)


@pytest.mark.parametrize("op,reset_batch", [("wkv5", 1), ("wkv6", B)])
def test_reset_state_backends_match_reference(op, reset_batch):
  """Every backend that supports reset_state (and runs on this platform; Pallas ones in interpret mode on CPU):
  segments restart from it (one for all rows, or one per row), with the resets and T of
  test_backends_match_reference; gradients include the reset state's."""
  rng = np.random.default_rng()
  x = inputs(rng)
  w = x["w5"] if op == "wkv5" else x["w6"]
  seg = segments(rng)
  reset = rng.standard_normal((reset_batch, H, N, N))
  want = run(op, "reference", x, w, seg, reset)
  assert len(want[2]) == 7
  impls = [b for b in ops.backends(op, reset_state=True) if b != "reference" and runs_here(b)]
  assert "chunked" in impls
  for impl in impls:
    assert_matches(run(op, impl, x, w, seg, reset), want, impl)


def test_chunked_with_exact_base_blocks_matches_reference():
  """chunk 64 over base blocks of 8 (exact pairwise decays inside, the hierarchy above), with resets."""
  rng = np.random.default_rng()
  x = inputs(rng)
  seg = segments(rng)
  assert_matches(run("wkv6", "chunked", x, x["w6"], seg, chunk_size=64, sub_chunk=8),
                 run("wkv6", "reference", x, x["w6"], seg), "chunk 64 / base 8")


def test_extreme_decays_stay_finite():
  """Decays from 1 (w = 0) down to e^-exp(8) per token: no overflow, no NaN in values or gradients, and the
  chunked backend still matches the reference."""
  rng = np.random.default_rng()
  x = inputs(rng)
  w = -np.exp(rng.uniform(-30.0, 8.0, (B, T, H, N)))
  w[:, ::5] = 0.0
  want = run("wkv6", "reference", x, w, None)
  assert all(np.all(np.isfinite(np.asarray(a))) for a in (*want[:2], *want[2]))
  for impl in other_backends("wkv6"):
    assert_matches(run("wkv6", impl, x, w, None), want, impl)


@pytest.mark.parametrize("op,impl", [("wkv5", "reference"), ("wkv6", "reference"), ("wkv6", "chunked")])
def test_bf16_inputs_give_bf16_output_and_fp32_state(op, impl):
  x = inputs(np.random.default_rng())
  o, s = call(op, x, x["w5"] if op == "wkv5" else x["w6"], impl, False, dtype=jnp.bfloat16)
  assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32


@pytest.mark.parametrize("impl", ["chunked"])
def test_single_token_and_short_sequences(impl):
  """T = 1 (the recurrent step) and T < chunk size continue a state exactly like one long call."""
  x = inputs(np.random.default_rng())
  args = [jnp.asarray(a, jnp.float32) for a in (x["r"], x["w6"], x["k"], x["v"])]
  u, s = jnp.asarray(x["u"], jnp.float32), jnp.asarray(x["s0"], jnp.float32)
  want_o, want_s = ops.wkv6(*args, u, s, impl="reference")
  outs = []
  fn = jax.jit(functools.partial(ops.wkv6, impl=impl))
  for a, b in ((0, 1), (1, 4), (4, 45)):
    o, s = fn(*(t[:, a:b] for t in args), u, s)
    outs.append(o)
  assert rel_err(jnp.concatenate(outs, 1), want_o) <= 1e-4 and rel_err(s, want_s) <= 1e-4


@pytest.mark.parametrize("bad", ["k_shape", "w5_shape", "u_shape", "state_shape", "seg_shape", "seg_dtype", "impl"])
def test_bad_inputs_name_the_argument(bad):
  x = jnp.zeros((1, 4, 2, 8))
  op, w, u, state, kwargs = "wkv6", x, jnp.zeros((2, 8)), None, {}
  args = {"r": x, "k": x, "v": x}
  if bad == "k_shape":
    args["k"], match = jnp.zeros((1, 4, 2, 4)), "k has shape"
  elif bad == "w5_shape":
    op, match = "wkv5", r"w has shape \(1, 4, 2, 8\); expected \[H, N\]"
  elif bad == "u_shape":
    u, match = jnp.zeros((8,)), "u has shape"
  elif bad == "state_shape":
    state, match = jnp.zeros((1, 2, 8, 4)), "initial_state"
  elif bad == "seg_shape":
    kwargs["segment_ids"], match = jnp.zeros((1, 3), jnp.int32), "segment_ids"
  elif bad == "seg_dtype":
    kwargs["segment_ids"], match = jnp.zeros((1, 4), jnp.float32), "integer"
  else:
    kwargs["impl"], match = "nope", "impl='nope'"
  with pytest.raises(ValueError, match=match):
    getattr(ops, op)(args["r"], w, args["k"], args["v"], u, state, **kwargs)


def test_auto_resolves_to_a_registered_backend():
  for op in ("wkv5", "wkv6"):
    assert ops.resolve_impl("auto", op) in ops.backends(op)
    assert {"reference", "chunked"} <= set(ops.backends(op))
