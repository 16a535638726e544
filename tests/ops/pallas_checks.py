"""Checks shared by the Pallas backend tests (`wkv7_pallas_test.py`, `wkv56_pallas_test.py`): a backend's outputs,
final state and VJP against the float32 reference op (`compare`) and, on a GPU, against the recurrence run in
float64 (`compare_float64`, with `scan_recurrence` to write that recurrence), and that a Mosaic GPU kernel's SMEM
lets two CTAs share an H100 SM (`lower_for_two_ctas_per_sm`); `lower_for_cuda` lowers a backend's
forward and backward for CUDA on any host, within an H100's SMEM."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.ops.wkv7_chunked_test import rel_err


def run_vjp(fn, n_inputs, primals, segment_ids, cotangent, with_reset=False):
  """(fn's (o, final_state), the VJP of cotangent) with primals = the op's n_inputs inputs and, if given, the
  initial state (else None: a zero state), then (with_reset) the reset state, given to fn as `reset_state=`."""
  def f(*p):
    kw = {"reset_state": p[-1]} if with_reset else {}
    p = p[:-1] if with_reset else p
    return fn(*p[:n_inputs], p[n_inputs] if len(p) > n_inputs else None, segment_ids, **kw)

  out, vjp = jax.vjp(f, *primals)
  return out, vjp(cotangent)


def cotangents(seed, B, T, H, N, dtype):
  """(dO [B, T, H, N] in dtype, d_final [B, H, N, N] float32), standard normal from `seed + 1`."""
  key_o, key_s = jax.random.split(jax.random.PRNGKey(seed + 1))
  return jax.random.normal(key_o, (B, T, H, N)).astype(dtype), jax.random.normal(key_s, (B, H, N, N))


def _errors(names, results, refs):
  """{name: rel_err(result, ref)}, in zip order."""
  return {name: rel_err(x, y) for name, x, y in zip(names, results, refs)}


def _assert_within(seed, label, errors, tols):
  """Asserts errors[name] <= tols[name] for every name; returns the errors."""
  bad = {name: err for name, err in errors.items() if not err <= tols[name]}
  assert not bad, f"seed={seed} {label}: relative errors above their bounds {tols}: {bad}; all: {errors}"
  return errors


def compare(seed, fn, reference, inputs, segment_ids, tol, *, names, cast, dtype=jnp.float32, label="",
            use_s0=True, reset_state=None):
  """Asserts that outputs, final state and all gradients of `fn` match those of `reference` (float32) on the same
  (rounded) inputs.

  inputs: the op's inputs, then the initial state; the ones at the indices `cast` are given to fn in `dtype` (and to
  the reference as float32); use_s0=False passes initial_state=None. reset_state: None, or [B or 1, H, K, V] given
  to both as `reset_state=` (its gradient is checked as "dreset_state"). names: of o, the final state and the
  gradients of the inputs and the initial state. A bf16 result is allowed its own rounding on top of tol. Returns
  the relative errors by name."""
  *xs, s0 = inputs
  xs = tuple(x.astype(dtype) if i in cast else x for i, x in enumerate(xs))
  B, T, H, N = xs[0].shape
  cot = cotangents(seed, B, T, H, N, dtype)
  extra = ((s0,) if use_s0 else ()) + (() if reset_state is None else (reset_state,))
  names = tuple(names)[:2 + len(xs) + int(use_s0)] + (() if reset_state is None else ("dreset_state",))
  vjp_of = lambda f: jax.jit(functools.partial(run_vjp, f, len(xs), with_reset=reset_state is not None))  # noqa: E731
  (o, s), g = vjp_of(fn)(xs + extra, segment_ids, cot)
  up = lambda x: x.astype(jnp.float32)  # noqa: E731
  (o_ref, s_ref), g_ref = vjp_of(reference)(tuple(up(x) for x in xs) + extra, segment_ids, (up(cot[0]), cot[1]))
  assert o.shape == (B, T, H, N) and o.dtype == xs[0].dtype
  assert s.shape == (B, H, N, N) and s.dtype == jnp.float32
  assert all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(g, xs + extra))
  results = (o, s) + tuple(g)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in results), f"seed={seed} {label}: non-finite"
  # a bf16 result also carries its own rounding (half an ulp, 2^-9 of the largest magnitude)
  tols = {name: tol + (2.0**-8 if x.dtype == jnp.bfloat16 else 0.0) for name, x in zip(names, results)}
  return _assert_within(seed, label, _errors(names, results, (o_ref, s_ref) + tuple(g_ref)), tols)


def scan_recurrence(step, s0, xs, segment_ids):
  """(o [B, T, H, N], final state) of `S, o_t = step(S, *x_t)` over time from s0 [B, H, K, V], S zeroed where a
  segment starts. xs: [B, T, ...] arrays; segment_ids: [B, T] or None."""
  B, T = xs[0].shape[:2]
  starts = np.zeros((B, T), bool)
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]

  def body(S, inp):
    *x_t, st = inp
    return step(jnp.where(st[:, None, None, None], 0.0, S), *x_t)

  S, o = jax.lax.scan(body, s0, tuple(jnp.moveaxis(x, 1, 0) for x in xs) + (jnp.moveaxis(jnp.asarray(starts), 1, 0),))
  return jnp.moveaxis(o, 0, 1), S


def compare_float64(seed, fn, reference_f64, primals, segment_ids, tol, *, names, label):
  """Asserts that the outputs, final state and all gradients of `fn` (bf16 output cotangent) are within tol of
  `reference_f64(*primals, segment_ids)` -> (o, final_state) run in float64 on the same (float32-widened) primals.

  primals: the op's inputs, then the initial state. Prints the errors; returns them by name."""
  B, T, H, N = primals[0].shape
  cot = cotangents(seed, B, T, H, N, jnp.bfloat16)
  (o, s), g = jax.jit(functools.partial(run_vjp, fn, len(primals) - 1))(primals, segment_ids, cot)
  with jax.enable_x64(True):
    p64 = tuple(jnp.asarray(np.asarray(x.astype(jnp.float32), np.float64)) for x in primals)
    c64 = tuple(jnp.asarray(np.asarray(x.astype(jnp.float32), np.float64)) for x in cot)
    out, vjp = jax.vjp(lambda *p: reference_f64(*p, segment_ids), *p64)
    refs = tuple(np.asarray(x) for x in out + vjp(c64))
  errors = _errors(names, (o, s) + tuple(g), refs)
  print(f"{label}:", " ".join(f"{name}={e:.1e}" for name, e in errors.items()))
  return _assert_within(seed, label, errors, {name: tol for name in names})


def lower_for_two_ctas_per_sm(fn, *args) -> str:
  """The text of jax.jit(fn) lowered for CUDA under an SMEM limit of half an H100 SM (228 KiB) less the 1 KiB
  reserved per CTA: Mosaic GPU's lowering fails if a kernel's scratch needs more."""
  from jax.experimental.mosaic.gpu import core as mgpu_core  # noqa: PLC0415

  from pallas_kernels.mosaic_gpu_tiles import SMEM_TWO_CTAS_PER_SM  # noqa: PLC0415

  with mgpu_core.artificial_shared_memory_limit(SMEM_TWO_CTAS_PER_SM):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


H100_SMEM_PER_CTA = 232448  # bytes: the most SMEM one CTA may opt into on an H100 (227 KiB)


def lower_for_cuda(fn, *args) -> str:
  """The texts of `fn(*arrays, segment_ids)` -> (o, final state) and of the gradient of sum(o) + sum(final state)
  with respect to every array argument, lowered for CUDA on any host under the H100's SMEM limit per CTA (Mosaic
  GPU's lowering fails if a kernel's scratch needs more): args are ShapeDtypeStructs, the last one the segment ids."""
  from jax.experimental.mosaic.gpu import core as mgpu_core  # noqa: PLC0415

  def loss(*x):
    o, s = fn(*x)
    return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

  grad = jax.grad(loss, argnums=tuple(range(len(args) - 1)))
  with mgpu_core.artificial_shared_memory_limit(H100_SMEM_PER_CTA):
    return "\n".join(jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text() for f in (fn, grad))
