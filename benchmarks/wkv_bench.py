"""GPU timing of the WKV ops: our backends against fla (`chunk_rwkv7`, `chunk_rwkv6`) and jax-linear-attention, in
ONE process.

Usage (on a GPU machine, with flash-linear-attention / fla-core and jax-linear-attention importable; without them
those impls are reported as failed and ours still run, also on CPU):
  XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. python benchmarks/wkv_bench.py [--op wkv7|wkv6|wkv5] \
      [--shapes S0,K1,K2,K3,K4,K5] [--impls pallas_gpu,chunked,fla,jla,reference] [--repeats 30] \
      [--commit HASH] [--append-docs] [--budget-s 540] [--pieces K1] [--state-bv 16,32,64] [--trace K2]

--op wkv7 (default). Implementations, each as its library's RWKV-7 layer calls it, bf16 inputs, fp32 state, no
initial state:
  pallas_gpu, chunked, reference  ours (`rwkvjax.ops.wkv7(impl=...)`): r, k, v, a, b bf16, w float32 (our model keeps
                                  decays in float32); `reference` (a lax.scan over tokens) only at the small shape S0;
  fla   fla.ops.rwkv7.chunk_rwkv7(..., scale=1, output_final_state=True, safe_gate=True,
        lower_bound=-0.6065306597126334, chunk_size=64) with all six inputs bf16 (fla/layers/rwkv7.py);
  jla   jla.ops.linear_attention("rwkv7", ..., impl="mosaic_gpu", lower_bound=-0.61, chunk_size=32,
        output_final_state=True) with r, k, v bf16 and w, a, b float32 (jla/layers/rwkv7.py).
--op wkv6 / wkv5 (RWKV-6 / RWKV-5.2; default impls pallas_gpu,chunked,fla,reference):
  ours  `rwkvjax.ops.wkv6(r, w, k, v, u, impl=...)` (wkv5: w [H, N]) with r, k, v bf16 and w, u float32;
  fla   fla.ops.rwkv6.chunk_rwkv6(r=r, k=k, v=v, w=w, u=u, scale=1.0, initial_state=None, output_final_state=True)
        as fla/layers/rwkv6.py calls it (chunk mode, its default chunk size), all inputs bf16; for wkv5 (fla has no
        RWKV-5 op) the [H, N] decay broadcast to [B, T, H, N].
  Inputs: r, k 0.5 N(0, 1), v N(0, 1), u 0.5 N(0, 1), log-decay w = -exp(d), d ~ U(-6, 1) (per token for wkv6,
  per head and channel for wkv5), all rounded to bf16 values.
Modes: forward (o and the final state; torch under no_grad) and forward+backward (the VJP of both outputs with
random cotangents for all six inputs; the output's cotangent in the output's dtype, bf16, cast before timing for
every impl: until the tenth session JAX impls cast it inside the timed call, 0.09 ms at K2 on an H100, which fla's
timings never included). Two timings on the host's clock, after 3 warm-up calls, all (impl, mode) pairs interleaved
within each repetition, the median of --repeats reported for each:
  device-bound (the table's "ms" and ratios; the spec's primary metric times on the device or amortises dispatch):
    10 calls enqueued back to back, then one device sync (JAX: block_until_ready; torch: cuda.synchronize), time / 10:
    each call's host work (JAX: jit dispatch, PjRt, buffer allocation, the launch, ~0.5-0.9 ms per call at K1 on the
    H100; fla: Python, autograd, Triton launches) runs while the device runs the call before it, as in training,
    where the host works ahead of the device; one call's host latency in ten is still counted (at K1 the result was
    0.03 ms above the profiler's device time per call);
  host-timed: one call timed around its device sync (the only timing before the seventeenth session), which adds the
    host latency before the first kernel to every call.
Peak memory: JAX from the compiled executable's memory analysis (temporaries + outputs), torch from
max_memory_allocated over one call; both exclude the inputs. F = the roofline fraction, bytes_min / (t * 3.0 TB/s)
with bytes_min per token-head (spec section 3) = 14N (fwd) or 40N + 8N^2/64 (fwd+bwd) for wkv7, 10N or 28N + 8N^2/64
for wkv6, 8N or 22N + 8N^2/64 for wkv5 (no per-token decay).
A forward correctness check at S0 compares every impl with the op's reference (relative max error of o and the state).
Prints a table; writes JSON and a markdown row to $OUT (if set); --append-docs appends the row to docs/benchmarks.md.
--pieces SHAPES also times pallas_gpu's kernels one by one at those shapes; --state-bv adds its two state kernels at
other V-tile widths (`block_v` picks one by a rule that was measured at K1 only).
--trace SHAPES traces 3 forward+backward calls of pallas_gpu (and chunked) at those shapes with jax.profiler (into
$OUT/trace_<op>_<shape>/<impl>, or out/) and prints each kernel's device time per call (`trace_summary`): where the
backend's time goes inside the real call, XLA glue included, without the host overhead of timing pieces one by one.

Budget: on a fresh H100 machine fla's first call (Triton compilation and autotuning of its DPLR kernels) took more
than 170 s (2026-11-26); each of our backends and jla builds in 10-25 s per shape.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import provenance  # benchmarks/, the script's folder
import trace_summary  # benchmarks/

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = {
  "XS": (1, 256, 2, 64),  # smoke test (CPU)
  "S0": (4, 1024, 8, 64),
  "K1": (8, 4096, 32, 64),
  "K2": (16, 4096, 12, 64),
  "K3": (8, 4096, 64, 64),
  "K4": (1, 32768, 32, 64),
  "K5": (8, 4096, 16, 128),
}
FLA_LOWER_BOUND = -0.6065306597126334
JLA_LOWER_BOUND = -0.61
BW = 3.0e12  # measured device-to-device copy bandwidth of our H100s (spec)
PIPELINE = 10  # calls enqueued back to back per device-bound timing


def make_inputs(seed, B, T, H, N):
  """RWKV-7-structured float32 inputs on the device: w = -e^{-0.5} sigmoid(.), a = -kappa, b = kappa * iclr."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 9)
  shape = (B, T, H, N)

  @jax.jit
  def gen(ks):
    w = -0.6065306597 * jax.nn.sigmoid(jax.random.normal(ks[0], shape))
    r, k, v = (0.5 * jax.random.normal(x, shape) for x in ks[1:4])
    kappa = jax.random.normal(ks[4], shape)
    kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
    b = kappa * jax.nn.sigmoid(jax.random.normal(ks[5], shape))
    do = jax.random.normal(ks[6], shape)
    ds = jax.random.normal(ks[7], (B, H, N, N))
    # bf16-representable values, so that impls taking some inputs in float32 see the same numbers
    rnd = lambda t: t.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    return rnd(r), rnd(w), rnd(k), rnd(v), rnd(-kappa), rnd(b), do, ds

  return gen(ks)


def make_inputs_v56(seed, B, T, H, N, op):
  """(r, w, k, v, u, do, ds) float32 on the device, bf16-representable: w [B, T, H, N] (wkv6) or [H, N] (wkv5)."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 7)
  shape = (B, T, H, N)
  w_shape = (H, N) if op == "wkv5" else shape

  @jax.jit
  def gen(ks):
    rnd = lambda t: t.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    w = -jnp.exp(jax.random.uniform(ks[0], w_shape, minval=-6.0, maxval=1.0))
    r, k = (0.5 * jax.random.normal(x, shape) for x in ks[1:3])
    v = jax.random.normal(ks[3], shape)
    u = 0.5 * jax.random.normal(ks[4], (H, N))
    return (rnd(r), rnd(w), rnd(k), rnd(v), rnd(u), jax.random.normal(ks[5], shape),
            jax.random.normal(ks[6], (B, H, N, N)))

  return gen(ks)


# ------------------------------------------------------------------------------------------------------------------
# implementations: each returns {"fwd": (callable, mem_bytes), "fwdbwd": (...)}; a callable runs once and syncs
# ------------------------------------------------------------------------------------------------------------------


def _jax_memory(jitted, *args):
  try:
    m = jitted.lower(*args).compile().memory_analysis()
    return int(m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001
    return None


def _jax_modes(fn, args, cot):
  """fn(*args) -> (o, S); cot = (do, ds), do cast to o's dtype here, outside the timed calls (as fla's is)."""
  fwd = jax.jit(fn)
  do, ds = cot
  cot = (jax.block_until_ready(do.astype(jax.eval_shape(fn, *args)[0].dtype)), ds)

  def vjp(*primals_and_cot):
    *primals, do, ds = primals_and_cot
    out, pull = jax.vjp(fn, *primals)
    return pull((do, ds))

  fb = jax.jit(vjp)

  def run_fwd(n=1):  # n calls enqueued back to back, one wait (calls run in order on the device's stream)
    jax.block_until_ready([fwd(*args) for _ in range(n)][-1])

  def run_fb(n=1):
    jax.block_until_ready([fb(*args, *cot) for _ in range(n)][-1])

  return ({"fwd": (run_fwd, _jax_memory(fwd, *args)), "fwdbwd": (run_fb, _jax_memory(fb, *args, *cot))},
          lambda: fwd(*args))


def ours(name, x, op="wkv7"):
  import rwkvjax.ops as ops  # noqa: PLC0415

  bf = lambda t: t.astype(jnp.bfloat16)  # noqa: E731
  if op == "wkv7":
    r, w, k, v, a, b, do, ds = x
    args = (bf(r), w, bf(k), bf(v), bf(a), bf(b))
  else:
    r, w, k, v, u, do, ds = x
    args = (bf(r), w, bf(k), bf(v), u)

  def fn(*arrays):
    return getattr(ops, op)(*arrays, None, impl=name)

  return _jax_modes(fn, args, (do, ds))


def jla_impl(x):
  from jla.ops import linear_attention  # noqa: PLC0415

  r, w, k, v, a, b, do, ds = x
  bf = lambda t: t.astype(jnp.bfloat16)  # noqa: E731
  args = (bf(r), w, bf(k), bf(v), a, b)

  def fn(r, w, k, v, a, b):
    o, s = linear_attention("rwkv7", r, k, v, w=w, a=a, b=b, scale=1.0, impl="mosaic_gpu", lower_bound=JLA_LOWER_BOUND,
                            chunk_size=32, output_final_state=True)
    return o, s

  return _jax_modes(fn, args, (do, ds))


def fla_impl(x, op="wkv7"):
  import torch  # noqa: PLC0415

  def to_torch(t):
    return torch.from_dlpack(jax.block_until_ready(t.astype(jnp.bfloat16))).clone()

  if op == "wkv7":
    from fla.ops.rwkv7 import chunk_rwkv7  # noqa: PLC0415

    inputs = tuple(to_torch(t) for t in x[:6])

    def call(*p):
      return chunk_rwkv7(r=p[0], w=p[1], k=p[2], v=p[3], a=p[4], b=p[5], scale=1.0, initial_state=None,
                         output_final_state=True, safe_gate=True, lower_bound=FLA_LOWER_BOUND, chunk_size=64)
  else:
    from fla.ops.rwkv6 import chunk_rwkv6  # noqa: PLC0415

    r, w, k, v, u = x[:5]
    w = jnp.broadcast_to(w, r.shape)  # wkv5: fla has no RWKV-5 op; its decay broadcast over time
    inputs = tuple(to_torch(t) for t in (r, w, k, v, u))

    def call(*p):  # as fla/layers/rwkv6.py calls it (chunk mode)
      return chunk_rwkv6(r=p[0], k=p[2], v=p[3], w=p[1], u=p[4], scale=1.0, initial_state=None,
                         output_final_state=True)

  do = to_torch(x[-2])
  ds = torch.from_dlpack(jax.block_until_ready(x[-1])).clone()

  def run_fwd(n=1):  # n calls enqueued back to back, one wait
    with torch.no_grad():
      for _ in range(n):
        call(*inputs)
    torch.cuda.synchronize()

  leaves = [t.detach().clone().requires_grad_(True) for t in inputs]

  def run_fb(n=1):
    for _ in range(n):
      for t in leaves:
        t.grad = None
      o, s = call(*leaves)
      torch.autograd.backward([o, s], [do, ds])
    torch.cuda.synchronize()

  def mem(f):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    f()
    return int(torch.cuda.max_memory_allocated() - base)

  run_fwd()
  run_fb()
  modes = {"fwd": (run_fwd, mem(run_fwd)), "fwdbwd": (run_fb, mem(run_fb))}

  def fwd_np():
    with torch.no_grad():
      o, s = call(*inputs)
    return o.float().cpu().numpy(), s.float().cpu().numpy()

  return modes, fwd_np


# ------------------------------------------------------------------------------------------------------------------


BYTES_PER_TOKEN_HEAD = {  # op -> (fwd, fwd+bwd without the state checkpoints), in units of N bytes (spec section 3)
  "wkv7": (14, 40),
  "wkv6": (10, 28),
  "wkv5": (8, 22),
}


def _bytes_min(op, B, T, H, N, mode):
  fwd, fwdbwd = BYTES_PER_TOKEN_HEAD[op]
  per = fwd * N if mode == "fwd" else fwdbwd * N + 8 * N * N / 64
  return per * B * T * H


def _reference(op):
  from rwkvjax.ops.reference import wkv7_reference  # noqa: PLC0415
  from rwkvjax.ops.wkv5 import wkv5_reference  # noqa: PLC0415
  from rwkvjax.ops.wkv6 import wkv6_reference  # noqa: PLC0415

  return {"wkv7": wkv7_reference, "wkv6": wkv6_reference, "wkv5": wkv5_reference}[op]


def bench_shape(label, shape, impls, repeats, log, op="wkv7", trace_dir=None):
  """Times `impls` at `shape` (module docstring); with `trace_dir`, then traces our backends' forward+backward."""
  B, T, H, N = shape
  seed = hash(label) % 1000
  x = make_inputs(seed, *shape) if op == "wkv7" else make_inputs_v56(seed, *shape, op)
  n_arrays = 6 if op == "wkv7" else 5
  built, fwd_fns, errors = {}, {}, {}
  for name in sorted(impls, key=lambda n: n != "fla"):  # fla first: its first call compiles and autotunes
    if name == "reference" and label not in ("XS", "S0"):
      continue
    t0 = time.time()
    try:
      if name == "fla":
        built[name], fwd_fns[name] = fla_impl(x, op)
      elif name == "jla":
        if op != "wkv7":
          raise NotImplementedError("jla is benchmarked for wkv7 only")
        built[name], fwd_fns[name] = jla_impl(x)
      else:
        built[name], fwd_fns[name] = ours(name, x, op)
      for mode in ("fwd", "fwdbwd"):
        for _ in range(3):  # warm-up (compilation, autotuning)
          built[name][mode][0]()
      log(f"  {label} {name}: built and warmed up in {time.time() - t0:.1f}s")
    except Exception as e:  # noqa: BLE001
      errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
      log(f"  {label} {name}: FAILED {errors[name]}")
      traceback.print_exc()
      built.pop(name, None)
  # forward check against the reference on the same bf16-rounded inputs (small shape only)
  check = {}
  if label in ("XS", "S0"):
    o_ref, s_ref = jax.jit(_reference(op))(*x[:n_arrays], None, None)
    o_ref, s_ref = np.asarray(o_ref), np.asarray(s_ref)
    for name, f in fwd_fns.items():
      if name not in built:
        continue
      try:
        o, s = f()
        o, s = np.asarray(jnp.asarray(o, jnp.float32)), np.asarray(s)
        check[name] = (float(np.abs(o - o_ref).max() / np.abs(o_ref).max()),
                       float(np.abs(s - s_ref).max() / np.abs(s_ref).max()))
        log(f"  check {name}: rel err o {check[name][0]:.1e}, state {check[name][1]:.1e}")
      except Exception as e:  # noqa: BLE001
        log(f"  check {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
  times = {(n, m): [] for n in built for m in ("fwd", "fwdbwd")}  # (device-bound, host-timed) seconds per call
  for _ in range(repeats):
    for (n, m), ts in times.items():
      f = built[n][m][0]
      t0 = time.perf_counter()
      f(PIPELINE)
      t1 = time.perf_counter()
      f()
      ts.append(((t1 - t0) / PIPELINE, time.perf_counter() - t1))
  for name in ("pallas_gpu", "chunked") if trace_dir else ():
    if name in built:
      _trace(built[name]["fwdbwd"][0], os.path.join(trace_dir, name), log)
  res = {}
  for n in built:
    res[n] = {}
    for m in ("fwd", "fwdbwd"):
      device_bound, host_timed = (np.array(t) * 1e3 for t in zip(*times[(n, m)]))
      med = float(np.median(device_bound))
      res[n][m] = {"ms": med, "spread_ms": (float(device_bound.min()), float(device_bound.max())),
                   "host_ms": float(np.median(host_timed)),
                   "mem_mb": None if built[n][m][1] is None else built[n][m][1] / 2**20,
                   "F": _bytes_min(op, B, T, H, N, m) / (med * 1e-3 * BW)}
  return {"shape": shape, "results": res, "errors": errors, "check": check}


def _trace(run, trace_dir, log, steps=3):
  """Traces `steps` calls of `run` (warmed up) into `trace_dir` and logs the per-call kernel table."""
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      run()
  device = "GPU" if jax.default_backend() == "gpu" else "CPU"
  log(trace_summary.summary(trace_summary.newest_trace(pathlib.Path(trace_dir)), steps=steps, top=20, device=device))


def _median_ms(calls, repeats):
  """{name: median ms of `repeats` timed calls of f (after one warm-up call)} for the zero-argument calls {name: f}."""
  out = {}
  for name, f in calls.items():
    jax.block_until_ready(f())
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      ts.append(time.perf_counter() - t0)
    out[name] = statistics.median(ts) * 1e3
  return out


def _add_state_widths(calls, state_bvs, gpu, fwd_args, bwd_args):
  """Adds to `calls` the op module `gpu`'s two state kernels at each V-tile width in `state_bvs` ("state_fwd@bv32",
  ...), called on fwd_args / bwd_args (the forward saving its states, as in training)."""
  import functools  # noqa: PLC0415

  for width in state_bvs:
    state_fwd = jax.jit(functools.partial(gpu._state_fwd, bv=width, save=True))
    state_bwd = jax.jit(functools.partial(gpu._state_bwd, bv=width))
    calls[f"state_fwd@bv{width}"] = functools.partial(state_fwd, *fwd_args)
    calls[f"state_bwd@bv{width}"] = functools.partial(state_bwd, *bwd_args)


def pieces(label, shape, repeats, log, state_bvs=()):
  """Times the parts of pallas_gpu separately (median of `repeats`): prep kernel, forward state
  kernel (saving states), backward state kernel, the chunk-parallel gradients kernel (`gpu_bwd`) and, for
  comparison, the same gradients in XLA (`common.chunk_backward` vmapped, the backward's former path); the two state
  kernels also at each V-tile width in `state_bvs` (as "state_fwd@bv32", ...), to tune `block_v`."""
  import functools  # noqa: PLC0415

  from pallas_kernels.chunking import segment_index, to_chunks, vmap_chunks  # noqa: PLC0415
  from pallas_kernels.matops import x3_on_gpu  # noqa: PLC0415
  from pallas_kernels.wkv7 import common as cm  # noqa: PLC0415
  from pallas_kernels.wkv7 import gpu, gpu_bwd  # noqa: PLC0415

  B, T, H, N = shape
  r, w, k, v, a, b, do, ds = make_inputs(1, *shape)
  bf = lambda t: t.astype(jnp.bfloat16)  # noqa: E731
  seg = segment_index(None, B, T, gpu.L)
  C = seg.shape[1]
  bv = gpu.state_block_v(B, H, N)
  s0 = jnp.zeros((B, H, N, N), jnp.float32)
  seg_flat = seg.reshape(B, T)
  prep = jax.jit(functools.partial(gpu._prep, save_inverse=True))  # as in training (the forward saving for the VJP)
  ww, wu, qo, ob, bb, kb, dec, g_pad, t_hi, t_lo = prep(bf(r), bf(k), bf(v), bf(a), bf(b), w, seg_flat)
  sf = jax.jit(functools.partial(gpu._state_fwd, bv=bv, save=True))
  o, fin, states, u = sf(ww, wu, qo, ob, bb, kb, bf(v), dec, s0)
  sb = jax.jit(functools.partial(gpu._state_bwd, bv=bv))
  dst, ds0, du = sb(ww, qo, bb, bf(do), dec, ds)

  def b1(r, w, k, v, a, b, seg, states, d_o, d_states):
    xs = [to_chunks(x.astype(jnp.float32), gpu.L) for x in (r, w, k, v, a, b)]
    seg_col = jnp.broadcast_to(seg[:, None, :, :, None], (B, H, C, gpu.L, 1))
    seg_row = jnp.broadcast_to(seg[:, None, :, None, :], (B, H, C, 1, gpu.L))
    bwd = vmap_chunks(functools.partial(cm.chunk_backward, ops=x3_on_gpu()))
    f32 = lambda t: t.astype(jnp.float32)  # noqa: E731
    return bwd(*xs, seg_col, seg_row, f32(states), to_chunks(f32(d_o), gpu.L), f32(d_states))

  b1j = jax.jit(b1)
  cg = jax.jit(functools.partial(gpu_bwd.chunk_grads, out_dtypes=[jnp.bfloat16, jnp.float32] + [jnp.bfloat16] * 4))
  jax.block_until_ready(b1j(bf(r), w, bf(k), bf(v), bf(a), bf(b), seg, states, bf(do), dst))
  rb, kb_, vb_, ab, bb_, dob = (bf(t) for t in (r, k, v, a, b, do))  # cast once, outside the timed calls
  calls = {
    "prep": lambda: prep(rb, kb_, vb_, ab, bb_, w, seg_flat),
    "state_fwd": lambda: sf(ww, wu, qo, ob, bb, kb, vb_, dec, s0),
    "state_bwd": lambda: sb(ww, qo, bb, dob, dec, ds),
    "chunk_grads": lambda: cg(rb, kb_, vb_, ab, bb_, g_pad, seg_flat, dec, states, dob, dst, t_hi, t_lo, kb, u, du),
    "xla_chunk_grads": lambda: b1j(rb, w, kb_, vb_, ab, bb_, seg, states, dob, dst),
  }
  _add_state_widths(calls, state_bvs, gpu, (ww, wu, qo, ob, bb, kb, vb_, dec, s0), (ww, qo, bb, dob, dec, ds))
  out = _median_ms(calls, repeats)
  log(f"  pieces {label} (bv={bv}): " + ", ".join(f"{n} {t:.2f} ms" for n, t in out.items()))
  return out


def pieces_v56(label, shape, repeats, log, op, state_bvs=()):
  """Times the parts of the wkv5/wkv6 pallas_gpu separately (median of `repeats`): XLA chunk decay, prep kernel,
  forward state kernel (saving states), backward state kernel, the chunk-parallel gradients kernel (`gpu_bwd`) and,
  for comparison, the same gradients in XLA (`common.chunk_backward` vmapped, the backward's former path); the state
  kernels also at each width in `state_bvs`, as in `pieces`. T must be a multiple of 64 (every benchmark shape is)."""
  import functools  # noqa: PLC0415

  from pallas_kernels.chunking import segment_index, to_chunks, vmap_chunks  # noqa: PLC0415
  from pallas_kernels.matops import x3_on_gpu  # noqa: PLC0415
  from pallas_kernels.mosaic_gpu_tiles import block_v  # noqa: PLC0415
  from pallas_kernels.wkv56 import common as cm  # noqa: PLC0415
  from pallas_kernels.wkv56 import gpu, gpu_bwd  # noqa: PLC0415

  B, T, H, N = shape
  r, w, k, v, u, do, ds = make_inputs_v56(1, *shape, op)
  w = jnp.broadcast_to(w, r.shape)  # wkv5 runs the wkv6 kernels on its broadcast decay
  rb, kb, vb, dob = (t.astype(jnp.bfloat16) for t in (r, k, v, do))  # cast once, outside the timed calls
  seg = segment_index(None, B, T, gpu.L)
  C = seg.shape[1]
  seg_flat = seg.reshape(B, T)
  bv = block_v(B, H, N)
  s0 = jnp.zeros((B, H, N, N), jnp.float32)
  decay = jax.jit(gpu._chunk_decay)
  dec = decay(w, seg)
  prep = jax.jit(gpu._prep)
  qo, ob, kbar = prep(rb, kb, vb, w, u, seg_flat)
  sf = jax.jit(functools.partial(gpu._state_fwd, bv=bv, save=True))
  _, _, states = sf(qo, ob, kbar, vb, dec, s0)
  sb = jax.jit(functools.partial(gpu._state_bwd, bv=bv))
  dst, _ = sb(qo, dob, dec, ds)

  def xla_grads(r, w, k, v, u, seg, states, d_o, d_states):
    xs = [to_chunks(x.astype(jnp.float32), gpu.L) for x in (r, w, k, v)]
    uc = jnp.broadcast_to(u[None, :, None, None, :], (B, H, C, 1, N))
    seg_col = jnp.broadcast_to(seg[:, None, :, :, None], (B, H, C, gpu.L, 1))
    seg_row = jnp.broadcast_to(seg[:, None, :, None, :], (B, H, C, 1, gpu.L))
    bwd = vmap_chunks(functools.partial(cm.chunk_backward, ops=x3_on_gpu()))
    f32 = lambda t: t.astype(jnp.float32)  # noqa: E731
    return bwd(*xs, uc, seg_col, seg_row, f32(states), to_chunks(f32(d_o), gpu.L), f32(d_states))

  xla = jax.jit(xla_grads)
  cg = jax.jit(functools.partial(gpu_bwd.chunk_grads, out_dtypes=[jnp.bfloat16, jnp.float32] + [jnp.bfloat16] * 2))
  calls = {
    "chunk_decay": lambda: decay(w, seg),
    "prep": lambda: prep(rb, kb, vb, w, u, seg_flat),
    "state_fwd": lambda: sf(qo, ob, kbar, vb, dec, s0),
    "state_bwd": lambda: sb(qo, dob, dec, ds),
    "chunk_grads": lambda: cg(rb, kb, vb, w, u, seg_flat, dec, states, dob, dst),
    "xla_chunk_grads": lambda: xla(rb, w, kb, vb, u, seg, states, dob, dst),
  }
  _add_state_widths(calls, state_bvs, gpu, (qo, ob, kbar, vb, dec, s0), (qo, dob, dec, ds))
  out = _median_ms(calls, repeats)
  log(f"  pieces {op} {label} (bv={bv}): " + ", ".join(f"{n} {t:.2f} ms" for n, t in out.items()))
  return out


def table(all_res):
  lines = []
  hdr = ("| shape | impl | fwd ms | fwd+bwd ms | fwd / fla | fwd+bwd / fla | fwd+bwd / jla | host-timed fwd / fwd+bwd "
         "ms | host-timed fwd+bwd / fla | F fwd+bwd | peak MB fwd / fwd+bwd |")
  lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
  for label, d in all_res.items():
    res = d["results"]
    fla, jla = res.get("fla"), res.get("jla")
    for n, rr in res.items():
      def ratio(ref, m, key="ms"):
        return f"{rr[m][key] / ref[m][key]:.2f}" if ref else "-"

      mem = "/".join("-" if rr[m]["mem_mb"] is None else f"{rr[m]['mem_mb']:.0f}" for m in ("fwd", "fwdbwd"))
      lines.append(f"| {label} {tuple(d['shape'])} | {n} | {rr['fwd']['ms']:.2f} | {rr['fwdbwd']['ms']:.2f} | "
                   f"{ratio(fla, 'fwd')} | {ratio(fla, 'fwdbwd')} | {ratio(jla, 'fwdbwd')} | "
                   f"{rr['fwd']['host_ms']:.2f} / {rr['fwdbwd']['host_ms']:.2f} | {ratio(fla, 'fwdbwd', 'host_ms')} | "
                   f"{rr['fwdbwd']['F']:.2f} | {mem} |")
    for n, e in d["errors"].items():
      lines.append(f"| {label} | {n} | failed: {e[:80]} | | | | | | | | |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--op", default="wkv7", choices=("wkv7", "wkv6", "wkv5"))
  p.add_argument("--shapes", default="S0,K1,K3,K2,K4,K5")
  p.add_argument("--impls", default=None, help="default: pallas_gpu,chunked,fla,jla,reference (wkv7), "
                 "pallas_gpu,chunked,fla,reference (wkv6, wkv5)")
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--commit", default=None)
  p.add_argument("--append-docs", action="store_true")
  p.add_argument("--budget-s", type=float, default=1e9, help="skip the remaining shapes after this many seconds")
  p.add_argument("--pieces", default="", help="comma list of shapes at which to also time the parts of pallas_gpu")
  p.add_argument("--state-bv", default="", help="with --pieces: comma list of V-tile widths (16, 32, 64) at which to "
                 "also time the state kernels")
  p.add_argument("--trace", default="", help="comma list of shapes at which to trace our backends' forward+backward")
  args = p.parse_args(argv)
  start = time.time()
  out_dir = os.environ.get("OUT")

  def log(msg):
    print(msg, flush=True)

  dev = jax.devices()[0]
  device = getattr(dev, "device_kind", str(dev))
  commit = args.commit or provenance.commit()
  log(f"op {args.op}, device {device}, jax {jax.__version__}, commit {commit}")
  default_impls = "pallas_gpu,chunked,fla,jla,reference" if args.op == "wkv7" else "pallas_gpu,chunked,fla,reference"
  impls = (args.impls or default_impls).split(",")
  all_res = {}
  for label in args.shapes.split(","):
    if time.time() - start > args.budget_s:
      log(f"budget reached: skipping {label}")
      continue
    log(f"shape {label} {SHAPES[label]}")
    if label in args.pieces.split(","):
      state_bvs = [int(x) for x in args.state_bv.split(",") if x]
      try:
        if args.op == "wkv7":
          pieces(label, SHAPES[label], max(5, args.repeats // 3), log, state_bvs)
        else:
          pieces_v56(label, SHAPES[label], max(5, args.repeats // 3), log, args.op, state_bvs)
      except Exception as e:  # noqa: BLE001
        log(f"  pieces {label}: FAILED {type(e).__name__}: {str(e)[:300]}")
    trace_dir = (os.path.join(out_dir or "out", f"trace_{args.op}_{label}")
                 if label in args.trace.split(",") else None)
    all_res[label] = bench_shape(label, SHAPES[label], impls, args.repeats, log, args.op, trace_dir)
    if out_dir:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, f"wkv_bench_{args.op}.json"), "w") as f:
        json.dump(all_res, f, indent=1, default=str)
  text = table(all_res)
  log(text)
  date = datetime.date.today().isoformat()
  cmd = "XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/wkv_bench.py " + " ".join(argv or sys.argv[1:])
  cells = []
  for label, d in all_res.items():
    part = ", ".join(f"{n} {rr['fwd']['ms']:.2f}/{rr['fwdbwd']['ms']:.2f} (host-timed {rr['fwd']['host_ms']:.2f}/"
                     f"{rr['fwdbwd']['host_ms']:.2f})" for n, rr in d["results"].items())
    cells.append(f"{label} {tuple(d['shape'])} fwd/fwd+bwd ms: {part}")
  op_name = {"wkv7": "WKV-7", "wkv6": "WKV-6", "wkv5": "WKV-5"}[args.op]
  row = f"| {date} | {device} | `{cmd.strip()}` | {commit} | {op_name}: " + "; ".join(cells) + " |"
  log(row)
  if out_dir:
    with open(os.path.join(out_dir, f"wkv_bench_{args.op}_row.md"), "w") as f:
      f.write(row + "\n\n" + text + "\n")
  if args.append_docs:
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md"), "a") as f:
      f.write(row + "\n")


if __name__ == "__main__":
  main()
