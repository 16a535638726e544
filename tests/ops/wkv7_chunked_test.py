"""The `chunked` WKV-7 backend against the float32 `lax.scan` reference: outputs, final state and the gradients of
all six inputs, the initial state and the reset state, with fresh random inputs on every run (the seed is in the
failure message)."""

from __future__ import annotations

import functools
import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rwkvjax.ops as ops
from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference

TOL = 1e-4  # max |chunked - reference| / max |reference|, float32 inputs
W_SCALE = 0.6065306597  # e^{-0.5}: RWKV-7's log-decay is -W_SCALE * sigmoid(.)


def make_inputs(seed, B, T, H, N, kind="rwkv7"):
  """r, w, k, v, a, b ([B, T, H, N] float32) and an initial state ([B, H, N, N]).

  kind: "rwkv7": a = -kappa, b = kappa * iclr with kappa unit-norm per head (the model's structure);
        "generic": independent random a, b of small norm;
        "aligned": kappa nearly the same for every token, iclr ~ 1 and decay ~ 1 (worst-conditioned WY solve);
        "strong_decay": the strongest RWKV-7 decay, w ~ -e^{-0.5} (largest intra-chunk exponents);
        "slow": "rwkv7" with decays ~ -0.004 per token, so that the state carries across chunks (with "rwkv7"'s
        ~ -0.3 a chunk of 64 decays it by ~e^-19).
  """
  ks = jax.random.split(jax.random.PRNGKey(seed), 8)
  shape = (B, T, H, N)
  normal = lambda key, s=shape: jax.random.normal(key, s, jnp.float32)  # noqa: E731
  r, k, v = (0.5 * normal(key) for key in ks[1:4])
  w = -W_SCALE * jax.nn.sigmoid(normal(ks[0]))
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  if kind == "generic":
    a = normal(ks[4]) / N
    b = normal(ks[5]) / N
  else:
    kappa = unit(normal(ks[4]))
    iclr = jax.nn.sigmoid(normal(ks[5]))
    if kind == "aligned":
      kappa = unit(normal(ks[4], (B, 1, H, N)) + 0.05 * normal(ks[7]) / np.sqrt(N))
      iclr = jax.nn.sigmoid(4.0 + normal(ks[5]))
      w = -W_SCALE * jax.nn.sigmoid(normal(ks[0]) - 6.0)
    elif kind == "strong_decay":
      w = -W_SCALE * jax.nn.sigmoid(normal(ks[0]) + 8.0)
    elif kind == "slow":
      w = -W_SCALE * jax.nn.sigmoid(normal(ks[0]) - 5.0)
    a, b = -kappa, kappa * iclr
  s0 = normal(ks[6], (B, H, N, N))
  return r, w, k, v, a, b, s0


def segments_from_starts(B, T, starts):
  """[B, T] int32 ids that change exactly at the given positions (the same for every row)."""
  change = np.zeros((B, T), np.int32)
  change[:, list(starts)] = 1
  return jnp.asarray(np.cumsum(change, axis=1) + 7)


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def runs_here(backend):
  """Whether a backend runs on JAX's default platform: a Pallas one ("pallas_tpu", "pallas_gpu") only on its own (its
  "_interpret" variant anywhere); the others everywhere."""
  if not backend.startswith("pallas_") or backend.endswith("_interpret"):
    return True
  return backend.split("_")[1] == jax.default_backend()


def backend_fn(backend, chunk_size):
  """fn(r, w, k, v, a, b, initial_state, segment_ids, reset_state=None) of a backend name: the reference and
  chunked functions themselves (chunked with this chunk size), others through the public op."""
  if backend == "reference":
    return wkv7_reference
  if backend == "chunked":
    return functools.partial(wkv7_chunked, chunk_size=chunk_size)
  return lambda *args, reset_state=None: ops.wkv7(*args[:7], segment_ids=args[7], reset_state=reset_state,
                                                  impl=backend)


@functools.cache
def fwd_bwd(backend, chunk_size, use_initial_state, use_reset_state=False):
  """A jitted (primals, segment_ids, cotangent) -> ((o, final_state), gradients); cached so that cases of one
  shape share a compilation. primals: the six inputs, then the initial state and the reset state if used."""
  fn = backend_fn(backend, chunk_size)

  @jax.jit
  def run(primals, segment_ids, cotangent):
    def f(*p):
      kwargs = {"reset_state": p[-1]} if use_reset_state else {}
      return fn(*p[:6], p[6] if use_initial_state else None, segment_ids, **kwargs)

    out, vjp = jax.vjp(f, *primals)
    return out, vjp(cotangent)

  return run


def compare(seed, inputs, segment_ids=None, use_initial_state=True, chunk_size=16, reset_state=None,
            backend="chunked"):
  """Asserts that outputs, final state and all gradients (one random cotangent) match the reference."""
  r, w, k, v, a, b, s0 = inputs
  use_reset = reset_state is not None
  primals = (r, w, k, v, a, b) + ((s0,) if use_initial_state else ()) + ((reset_state,) if use_reset else ())
  key_o, key_s = jax.random.split(jax.random.PRNGKey(seed + 1))
  B, T, H, N = r.shape
  cotangent = (jax.random.normal(key_o, (B, T, H, N)), jax.random.normal(key_s, (B, H, N, N)))
  (o_ref, s_ref), g_ref = fwd_bwd("reference", None, use_initial_state, use_reset)(primals, segment_ids, cotangent)
  (o, s), g = fwd_bwd(backend, chunk_size, use_initial_state, use_reset)(primals, segment_ids, cotangent)

  assert o.shape == o_ref.shape and o.dtype == o_ref.dtype
  assert s.shape == (B, H, N, N) and s.dtype == jnp.float32
  names = ("o", "final_state", "dr", "dw", "dk", "dv", "da", "db")
  names += (("dinitial_state",) if use_initial_state else ()) + (("dreset_state",) if use_reset else ())
  errors = dict(zip(names, [rel_err(o, o_ref), rel_err(s, s_ref)] + [rel_err(x, y) for x, y in zip(g, g_ref)]))
  bad = {name: err for name, err in errors.items() if not err <= TOL}
  assert not bad, f"seed={seed} {backend} chunk={chunk_size}: relative errors above {TOL}: {bad}; all: {errors}"


# Cases share shapes where they can: each (shape, chunk, initial state, segments or not) compiles once.
@pytest.mark.parametrize(
  "B,T,H,N,chunk_size,use_initial_state,kind",
  [
    (2, 37, 2, 16, 16, True, "rwkv7"),
    (2, 37, 2, 16, 16, False, "rwkv7"),
    (2, 37, 2, 16, 16, True, "generic"),
    (1, 50, 3, 16, 32, True, "generic"),
    (2, 1, 2, 16, 16, True, "rwkv7"),
    (1, 70, 2, 64, 64, True, "rwkv7"),
    (1, 70, 2, 64, 16, False, "generic"),
    (1, 80, 1, 16, 64, True, "aligned"),
    (1, 80, 1, 16, 64, True, "strong_decay"),
  ],
)
def test_matches_reference(B, T, H, N, chunk_size, use_initial_state, kind):
  seed = secrets.randbelow(2**31)
  compare(seed, make_inputs(seed, B, T, H, N, kind), None, use_initial_state, chunk_size)


@pytest.mark.parametrize(
  "B,T,H,chunk_size,starts",
  [
    (2, 37, 2, 16, [16]),  # a reset exactly at a chunk boundary
    (2, 37, 2, 16, [5]),  # inside the first chunk
    (2, 37, 2, 16, [20, 21, 31, 32, 36]),  # several, adjacent, at a boundary and at the last token
    (1, 50, 3, 32, [1, 30, 33, 47]),
    (1, 80, 1, 64, [3, 63, 64, 65]),
  ],
)
def test_segment_resets(B, T, H, chunk_size, starts):
  seed = secrets.randbelow(2**31)
  compare(seed, make_inputs(seed, B, T, H, 16), segments_from_starts(B, T, starts), True, chunk_size)


@pytest.mark.parametrize("with_reset_state", [False, True])
def test_grouped_state_pass(monkeypatch, with_reset_state):
  """With at least `_GROUPED_FROM` chunks, more than the (batch, head) rows, the state pass (and its VJP) runs in
  groups; here 10 chunks of 16 for 4 rows (4 groups of 3 steps, the last with 2 identity steps of padding), with
  resets and the initial state."""
  from rwkvjax.ops import chunked  # noqa: PLC0415

  monkeypatch.setattr(chunked, "_GROUPED_FROM", 2)
  seed = secrets.randbelow(2**31)
  B, T, H = 2, 150, 2
  reset = jax.random.normal(jax.random.PRNGKey(seed + 2), (1, H, 16, 16)) if with_reset_state else None
  compare(seed, make_inputs(seed, B, T, H, 16), segments_from_starts(B, T, [20, 64, 100]), True, 16, reset)


def test_random_segment_resets_differ_per_row():
  seed = secrets.randbelow(2**31)
  rng = np.random.default_rng(seed)
  segment_ids = jnp.asarray(np.cumsum(rng.random((2, 37)) < 0.15, axis=1), jnp.int32)
  compare(seed, make_inputs(seed, 2, 37, 2, 16), segment_ids, True, 16)


@pytest.mark.parametrize(
  "B,T,H,chunk_size,starts,reset_batch,use_initial_state,kind",
  [
    (2, 37, 2, 16, [16], 1, True, "rwkv7"),  # on a chunk boundary; one reset state for every row
    (2, 37, 2, 16, [5, 20, 21, 31, 32, 36], 2, True, "rwkv7"),  # inside, adjacent, boundary, last token; per row
    (1, 80, 1, 64, [3, 63, 64, 65], 1, False, "strong_decay"),  # the largest intra-chunk exponents
  ],
)
def test_reset_state(B, T, H, chunk_size, starts, reset_batch, use_initial_state, kind):
  """Segments restart from reset_state: outputs, final state and all gradients, reset_state's included."""
  seed = secrets.randbelow(2**31)
  reset_state = jax.random.normal(jax.random.PRNGKey(seed + 2), (reset_batch, H, 16, 16))
  compare(seed, make_inputs(seed, B, T, H, 16, kind), segments_from_starts(B, T, starts), use_initial_state,
          chunk_size, reset_state)


def test_reset_state_backends_match_reference():
  """Every registered backend that supports reset_state (and runs on this platform; Pallas ones in interpret mode
  on CPU), with segments that differ per row."""
  seed = secrets.randbelow(2**31)
  rng = np.random.default_rng(seed)
  segment_ids = jnp.asarray(np.cumsum(rng.random((2, 37)) < 0.15, axis=1), jnp.int32)
  reset_state = jax.random.normal(jax.random.PRNGKey(seed + 2), (2, 2, 16, 16))
  backends = [b for b in ops.backends(reset_state=True) if b != "reference" and runs_here(b)]
  assert "chunked" in backends
  for backend in backends:
    compare(seed, make_inputs(seed, 2, 37, 2, 16), segment_ids, True, 16, reset_state, backend)


def test_reset_restarts_from_zero():
  """Tokens after a reset depend neither on the initial state nor on anything before the reset."""
  seed = secrets.randbelow(2**31)
  r, w, k, v, a, b, s0 = make_inputs(seed, 2, 37, 2, 16)
  cotangent = (jnp.zeros((2, 37, 2, 16)), jnp.zeros((2, 2, 16, 16)))
  (o, s), _ = fwd_bwd("chunked", 16, True)((r, w, k, v, a, b, s0), segments_from_starts(2, 37, [21]), cotangent)
  tail = tuple(x[:, 21:] for x in (r, w, k, v, a, b))
  o_tail, s_tail = jax.jit(functools.partial(wkv7_chunked, chunk_size=16))(*tail, None, None)
  assert rel_err(o[:, 21:], o_tail) <= TOL and rel_err(s, s_tail) <= TOL, f"seed={seed}"


def test_bfloat16_inputs():
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, 2, 33, 2, 16)
  r, w, k, v, a, b = (x.astype(jnp.bfloat16) for x in inputs[:6])
  o, s = jax.jit(wkv7_chunked)(r, w, k, v, a, b, inputs[6], None)
  o_ref, s_ref = wkv7_reference(r, w, k, v, a, b, inputs[6], None)
  assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
  assert rel_err(s, s_ref) <= TOL, f"seed={seed}"
  assert rel_err(o, o_ref) <= 1e-2, f"seed={seed}"  # both round the float32 output to bfloat16


def test_public_api():
  assert "chunked" in ops.backends()
  seed = secrets.randbelow(2**31)
  r, w, k, v, a, b, s0 = make_inputs(seed, 2, 21, 2, 16)
  segment_ids = segments_from_starts(2, 21, [9])
  o, s = jax.jit(functools.partial(ops.wkv7, impl="chunked"))(r, w, k, v, a, b, s0, segment_ids=segment_ids)
  o_ref, s_ref = wkv7_reference(r, w, k, v, a, b, s0, segment_ids)
  assert rel_err(o, o_ref) <= TOL and rel_err(s, s_ref) <= TOL, f"seed={seed}"


def test_auto_prefers_chunked_on_cpu():
  if jax.default_backend() == "cpu":
    assert ops.resolve_impl("auto") == "chunked"


@pytest.mark.parametrize(
  "bad,match",
  [
    (dict(k=jnp.zeros((2, 21, 2, 8))), r"\bk has shape"),
    (dict(w=jnp.zeros((2, 21, 2))), r"\bw has shape"),
    (dict(initial_state=jnp.zeros((2, 2, 16, 8))), "initial_state has shape"),
    (dict(segment_ids=jnp.zeros((2, 20), jnp.int32)), "segment_ids has shape"),
    (dict(segment_ids=jnp.zeros((2, 21), jnp.float32)), "segment_ids has dtype"),
  ],
)
def test_public_api_rejects_bad_shapes(bad, match):
  r, w, k, v, a, b, s0 = make_inputs(secrets.randbelow(2**31), 2, 21, 2, 16)
  args = dict(r=r, w=w, k=k, v=v, a=a, b=b, initial_state=s0, segment_ids=None) | bad
  segment_ids = args.pop("segment_ids")
  with pytest.raises(ValueError, match=match):
    ops.wkv7(*args.values(), segment_ids=segment_ids, impl="chunked")


@pytest.mark.parametrize("n", [1, 3, 5, 16, 21, 64])
def test_unit_lower_inverse_by_block_doubling(n):
  """matops.unit_lower_inverse (the chunked backend's and the kernels' WY solve) inverts I - A for any size, also
  when the last block of a doubling level is partial, and batched as the chunked backend calls it."""
  from rwkvjax.ops.chunked import _unit_lower_inverse  # noqa: PLC0415

  rng = np.random.default_rng(secrets.randbelow(2**31))
  A = np.tril(rng.normal(size=(3, 2, n, n)) * 0.3, -1).astype(np.float32)
  T = np.asarray(_unit_lower_inverse(jnp.asarray(A)), np.float64)
  assert np.abs(T @ (np.eye(n) - A) - np.eye(n)).max() < 1e-5
  assert np.all(np.triu(T, 1) == 0.0)
