"""The Pallas WKV-5 / WKV-6 backends (`pallas_tpu`, `pallas_gpu`) against the float32 reference: outputs, final state
and the gradients of r, w, k, v, u and the initial state (and of a reset_state, for `pallas_tpu`), with resets and T
not a multiple of the chunk, fresh random inputs every run (the seed is in the failure message).

On CPU (CI) the kernels run in Pallas interpret mode (`interpret=True`; the backends `pallas_tpu_interpret` and
`pallas_gpu_interpret`), which checks their logic:
  * pallas_tpu: float32 arithmetic, relative error <= 2e-3 (it measures ~1e-7 .. 1e-6);
  * pallas_gpu: the Mosaic GPU interpreter reproduces the kernels' bf16 tensor-core numerics (bf16 inputs and
    intermediate tiles, bf16 level factors, split-bf16 products), so it is held to the GPU bound, <= 1e-2 against
    the float32 reference on the same bf16-rounded inputs (it measures 1e-3 .. 5e-3).
Decays: RWKV-6's w = -exp(d) with d up to 3 (and an extreme case up to 8, with w = 0 rows), far beyond what a
centred factorisation survives in float32; the kernels must stay finite and exact.
Lowering: the TPU kernels are lowered to Mosaic for TPU (always) and compiled for TPU topologies when libtpu is
installed (skipped otherwise); the GPU kernels are lowered to Mosaic GPU for CUDA (always). On a Hopper GPU,
`pallas_gpu` itself is compared with a float64 reference (bf16 inputs, <= 1e-2).
"""

from __future__ import annotations

import functools
import importlib.util
import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rwkvjax.ops as ops
from pallas_kernels import mosaic_gpu_tiles
from pallas_kernels.chunking import from_chunks, segment_index, to_chunks, vmap_chunks
from pallas_kernels.wkv56 import common, gpu, gpu_bwd, tpu
from pallas_kernels.wkv56.gpu import wkv5_pallas_gpu, wkv6_pallas_gpu
from pallas_kernels.wkv56.tpu import wkv5_pallas_tpu, wkv6_pallas_tpu
from rwkvjax.ops.wkv5 import wkv5_reference
from rwkvjax.ops.wkv6 import wkv6_reference
from tests.ops import pallas_checks
from tests.ops.wkv7_chunked_test import rel_err, segments_from_starts

TPU_TOL = 2e-3
GPU_TOL = 1e-2
NAMES = ("o", "final_state", "dr", "dw", "dk", "dv", "du", "dinitial_state")
REFERENCE = {"wkv5": wkv5_reference, "wkv6": wkv6_reference}


def make_inputs(seed, B, T, H, N, op="wkv6", decays="rwkv6"):
  """r, w, k, v, u, initial state (float32). w: [B, T, H, N] (wkv6) or [H, N] (wkv5), log-decays -exp(d).

  decays: "rwkv6": d in [-8, 3] (per-token decays from ~1 down to e^-20; a chunk's decay e^{Λ(chunk)} is then ~0,
  so the state barely carries across chunks); "slow": d in [-9, -2] (chunk decays ~0.3: the state carries, as in
  trained models' slow channels); "extreme": d in [-30, 8] and every fifth token w = 0 (no decay), so that Λ spans
  0 .. -3000 within one chunk."""
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  if op == "wkv5":
    w = -np.exp(rng.uniform(-6.0, 1.0, (H, N)))
  elif decays == "slow":
    w = -np.exp(rng.uniform(-9.0, -2.0, (B, T, H, N)))
  elif decays == "extreme":
    w = -np.exp(rng.uniform(-30.0, 8.0, (B, T, H, N)))
    w[:, ::5] = 0.0
  else:
    w = -np.exp(rng.uniform(-8.0, 3.0, (B, T, H, N)))
  return f(B, T, H, N) * 0.5, jnp.asarray(w, jnp.float32), f(B, T, H, N) * 0.5, f(B, T, H, N), f(H, N) * 0.5, \
      f(B, H, N, N)


def compare(seed, op, fn, inputs, segment_ids, tol, dtype=jnp.float32, label="", use_s0=True, reset_state=None):
  """`pallas_checks.compare` against the float32 reference of `op` (r, k, v given to fn in dtype)."""
  return pallas_checks.compare(seed, fn, REFERENCE[op], inputs, segment_ids, tol, names=NAMES, cast=(0, 2, 3),
                               dtype=dtype, label=label, use_s0=use_s0, reset_state=reset_state)


# ------------------------------------------------------------------------------------------------------------------
# pallas_tpu in interpret mode
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "op,B,T,H,N,chunk,starts,decays,use_s0",
  [
    ("wkv6", 1, 37, 2, 16, 16, [5, 16], "rwkv6", True),  # resets inside a chunk and on a boundary; T % chunk != 0
    ("wkv5", 2, 50, 1, 16, 32, None, "rwkv6", False),  # time-constant decay, no initial state
    ("wkv6", 1, 80, 1, 16, 64, [3, 63, 64, 65], "extreme", True),  # adjacent resets, decays 1 .. e^-3000
    ("wkv5", 1, 70, 1, 64, 64, [40], "rwkv6", True),  # head dim 64
    ("wkv6", 1, 80, 1, 16, 16, [40], "slow", True),  # the state carries across chunks
  ],
)
def test_tpu_interpret_matches_reference(op, B, T, H, N, chunk, starts, decays, use_s0):
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, B, T, H, N, op, decays)
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  backend = wkv5_pallas_tpu if op == "wkv5" else wkv6_pallas_tpu
  fn = functools.partial(backend, chunk_size=chunk, interpret=True)
  compare(seed, op, fn, inputs, segment_ids, TPU_TOL, label=f"{op} pallas_tpu chunk={chunk} {decays}", use_s0=use_s0)


def test_tpu_interpret_bfloat16_and_random_resets():
  seed = secrets.randbelow(2**31)
  rng = np.random.default_rng(seed)
  segment_ids = jnp.asarray(np.cumsum(rng.random((2, 40)) < 0.1, axis=1), jnp.int32)
  fn = functools.partial(wkv6_pallas_tpu, chunk_size=16, interpret=True)
  compare(seed, "wkv6", fn, make_inputs(seed, 2, 40, 1, 16), segment_ids, TPU_TOL, dtype=jnp.bfloat16,
          label="pallas_tpu bf16")


@pytest.mark.parametrize(
  "op,T,chunk,starts,reset_batch,use_s0,decays",
  [
    # per row: inside chunks, on a boundary (16), adjacent (16, 17 / 31, 32), the last token; T % chunk != 0
    ("wkv6", 37, 16, ([5, 16, 17, 36], [15, 31, 32]), 2, True, "rwkv6"),
    # one reset state for every row; a row without resets; no initial state; decays 1 .. e^-3000
    ("wkv6", 45, 32, ([3, 9, 32, 40], []), 1, False, "extreme"),
    ("wkv5", 37, 16, ([1, 16, 30], [8, 9]), 1, True, "rwkv6"),  # time-constant decay
  ],
)
def test_tpu_interpret_reset_state(op, T, chunk, starts, reset_batch, use_s0, decays):
  """Segments restart from reset_state: outputs, final state and all gradients, reset_state's included."""
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, len(starts), T, 2, 16, op, decays)
  reset_state = jax.random.normal(jax.random.PRNGKey(seed + 2), (reset_batch, 2, 16, 16))
  change = np.zeros((len(starts), T), np.int32)
  for i, row in enumerate(starts):
    change[i, row] = 1
  backend = wkv5_pallas_tpu if op == "wkv5" else wkv6_pallas_tpu
  fn = functools.partial(backend, chunk_size=chunk, interpret=True)
  compare(seed, op, fn, inputs, jnp.asarray(np.cumsum(change, axis=1)), TPU_TOL, use_s0=use_s0,
          label=f"{op} pallas_tpu reset_state [{reset_batch}, ...] {decays}", reset_state=reset_state)


@pytest.mark.parametrize("op", ["wkv5", "wkv6"])
def test_tpu_interpret_through_public_api(op):
  seed = secrets.randbelow(2**31)
  r, w, k, v, u, s0 = make_inputs(seed, 1, 21, 2, 16, op)
  segment_ids = segments_from_starts(1, 21, [9])
  o, s = getattr(ops, op)(r, w, k, v, u, s0, segment_ids=segment_ids, impl="pallas_tpu_interpret")
  o_ref, s_ref = REFERENCE[op](r, w, k, v, u, s0, segment_ids)
  assert rel_err(o, o_ref) <= TPU_TOL and rel_err(s, s_ref) <= TPU_TOL, f"seed={seed}"


# ------------------------------------------------------------------------------------------------------------------
# pallas_gpu (Mosaic GPU) in interpret mode
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "op,B,T,H,N,starts,dtype,decays",
  [
    ("wkv6", 1, 150, 1, 64, [5, 64, 100], jnp.bfloat16, "rwkv6"),  # 3 chunks, T % 64 != 0, resets incl. a boundary
    ("wkv5", 1, 64, 1, 128, None, jnp.float32, "rwkv6"),  # head dim 128, float32 inputs (rounded to bf16)
    ("wkv6", 1, 256, 1, 64, [100], jnp.bfloat16, "slow"),  # the state carries across chunks (the chunk decays)
  ],
)
def test_gpu_interpret_matches_reference(op, B, T, H, N, starts, dtype, decays):
  seed = secrets.randbelow(2**31)
  r, w, k, v, u, s0 = make_inputs(seed, B, T, H, N, op, decays)
  rnd = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731  (the kernels' bf16 inputs)
  inputs = (rnd(r), w, rnd(k), rnd(v), u, s0)
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  backend = wkv5_pallas_gpu if op == "wkv5" else wkv6_pallas_gpu
  compare(seed, op, functools.partial(backend, interpret=True), inputs, segment_ids, GPU_TOL, dtype=dtype,
          label=f"{op} pallas_gpu interpret N={N} {decays}")


@pytest.mark.parametrize("bv", [32, 64])
def test_gpu_interpret_state_tile_widths(monkeypatch, bv):
  """The state passes at the V-tile widths `block_v` picks for many heads (the other tests' few heads get 16), at
  N = 128 where each tile is a quarter or half of the state's columns."""
  monkeypatch.setattr(gpu, "block_v", lambda B, H, N: bv)
  B, T, H, N = 1, 90, 1, 128  # (a shape of its own: no trace cached at another width)
  seed = secrets.randbelow(2**31)
  r, w, k, v, u, s0 = make_inputs(seed, B, T, H, N, "wkv6", "slow")
  rnd = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
  compare(seed, "wkv6", functools.partial(wkv6_pallas_gpu, interpret=True), (rnd(r), w, rnd(k), rnd(v), u, s0),
          segments_from_starts(B, T, [70]), GPU_TOL, dtype=jnp.bfloat16, label=f"wkv6 pallas_gpu interpret bv={bv}")


@pytest.mark.parametrize("B,T,H,N,starts,decays", [(1, 192, 1, 64, [5, 64, 65, 100], "rwkv6"),
                                                    (1, 128, 2, 128, [40], "extreme")])
def test_gpu_chunk_grads_interpret_matches_chunk_backward(B, T, H, N, starts, decays):
  """The gradient kernel alone against `common.chunk_backward` (float32, vmapped over chunks) on the same bf16 r, k,
  v, dO and random bf16 entering states / state gradients: relative error <= GPU_TOL (the kernel rounds its level
  factors to bf16: it measures ~2e-3, dw ~3e-3; a missing pair level or mask costs far more)."""
  seed = secrets.randbelow(2**31)
  r, w, k, v, u, _ = make_inputs(seed, B, T, H, N, "wkv6", decays)
  rng = np.random.default_rng(seed + 1)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  rb, kb, vb, dob = (x.astype(jnp.bfloat16) for x in (r, k, v, f(B, T, H, N)))
  seg = segment_index(segments_from_starts(B, T, starts), B, T, gpu.L)
  C = seg.shape[1]
  states, d_states = (f(B, H, C, N, N).astype(jnp.bfloat16) for _ in range(2))  # bf16, as the state passes save them
  dec = jnp.exp(to_chunks(w, gpu.L).sum(axis=3)) * (seg[:, None, :, -1:] == 0.0)  # [B, H, C, N]; 0 after a start
  got = gpu_bwd.chunk_grads(rb, kb, vb, w, u, seg.reshape(B, T), dec, states, dob, d_states,
                            [jnp.float32] * 4, interpret=True)
  xs = [to_chunks(x.astype(jnp.float32), gpu.L) for x in (rb, w, kb, vb)]
  uc = jnp.broadcast_to(u[None, :, None, None, :], (B, H, C, 1, N))
  seg_col = jnp.broadcast_to(seg[:, None, :, :, None], (B, H, C, gpu.L, 1))
  seg_row = jnp.broadcast_to(seg[:, None, :, None, :], (B, H, C, 1, gpu.L))
  ref = vmap_chunks(common.chunk_backward)(*xs, uc, seg_col, seg_row, states.astype(jnp.float32),
                                           to_chunks(dob.astype(jnp.float32), gpu.L), d_states.astype(jnp.float32))
  refs = tuple(from_chunks(g, T) for g in ref[:4]) + (ref[4][:, :, :, 0],)
  errors = {name: rel_err(x, y) for name, x, y in zip(("dr", "dw", "dk", "dv", "du"), got, refs)}
  assert all(e <= GPU_TOL for e in errors.values()), f"seed={seed} N={N} {decays}: {errors}"


# ------------------------------------------------------------------------------------------------------------------
# registration, reset_state
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["wkv5", "wkv6"])
def test_backends_registered(op):
  names = ops.backends(op)
  for name in ("pallas_tpu", "pallas_gpu", "pallas_tpu_interpret", "pallas_gpu_interpret"):
    assert name in names
  if jax.default_backend() == "cpu":
    assert ops.resolve_impl("auto", op) == "chunked"  # interpret variants are never picked by "auto"


@pytest.mark.parametrize("op", ["wkv5", "wkv6"])
def test_reset_state_support(op):
  """The TPU kernels support a reset_state; the GPU ones raise NotImplementedError for one."""
  assert {"pallas_tpu", "pallas_tpu_interpret"} <= set(ops.backends(op, reset_state=True))
  assert not {"pallas_gpu", "pallas_gpu_interpret"} & set(ops.backends(op, reset_state=True))
  r, w, k, v, u, s0 = make_inputs(0, 1, 8, 1, 16, op)
  with pytest.raises(NotImplementedError, match="does not support reset_state"):
    (wkv5_pallas_gpu if op == "wkv5" else wkv6_pallas_gpu)(r, w, k, v, u, s0, segments_from_starts(1, 8, [4]), s0,
                                                           interpret=True)


# ------------------------------------------------------------------------------------------------------------------
# lowering without the hardware
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,dtype,chunk,reset_batch", [
  ("wkv6", jnp.bfloat16, 64, None), ("wkv5", jnp.float32, 32, None), ("wkv6", jnp.bfloat16, 64, 2),
  ("wkv5", jnp.float32, 32, 1),
])
def test_tpu_kernels_lower_to_mosaic(op, dtype, chunk, reset_batch):
  text = tpu.lower_for_tpu(op, shape=(2, 128, 2, 64), dtype=dtype, chunk_size=chunk, reset_batch=reset_batch)
  assert "wkv6_tpu_fwd" in text and "wkv6_tpu_bwd" in text


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="AOT compile for a TPU topology needs libtpu (the TPU PJRT plugin) even without TPU "
                    "hardware: pip install 'libtpu==0.0.48.*' (pinned by jax 0.11.2) to run this test")
@pytest.mark.parametrize("topology,op,dtype,chunk", [("v5e:2x2", "wkv6", jnp.bfloat16, 64),
                                                     ("v6e:2x2", "wkv5", jnp.float32, 32)])
def test_tpu_aot_compile_for_topology(topology, op, dtype, chunk):
  compiled = tpu.aot_lower(topology, op, shape=(2, 200, 2, 64), dtype=dtype, chunk_size=chunk)
  assert "wkv6_tpu_fwd" in compiled.as_text() and "wkv6_tpu_bwd" in compiled.as_text()


@pytest.mark.parametrize("N, H", [(64, 2), (128, 2), (64, 66), (128, 66)])  # H 66: the state passes' widest V tile
def test_gpu_kernels_lower_to_mosaic_gpu(monkeypatch, N, H):
  monkeypatch.setattr(mosaic_gpu_tiles, "is_hopper", lambda: True)
  B, T = 1, 128
  spec = jax.ShapeDtypeStruct((B, T, H, N), jnp.bfloat16)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  args = (spec, f32(B, T, H, N), spec, spec, f32(H, N), f32(B, H, N, N), jax.ShapeDtypeStruct((B, T), jnp.int32))
  text = pallas_checks.lower_for_cuda(wkv6_pallas_gpu, *args)
  for name in ("wkv6_prep", "wkv6_state_fwd", "wkv6_state_bwd", "wkv6_chunk_grads"):
    assert name in text


def test_gpu_chunk_grads_fits_two_ctas_per_sm():
  """The gradient kernel's SMEM (checked by Mosaic GPU's lowering) leaves room for two CTAs per H100 SM: 228 KiB per
  SM, 1 KiB of it reserved per CTA."""
  B, Tp, H, N, C = 1, 128, 1, 64, 2
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  x = jax.ShapeDtypeStruct((B, Tp, H, N), jnp.bfloat16)
  fn = functools.partial(gpu_bwd.chunk_grads, out_dtypes=[jnp.bfloat16, jnp.float32] + [jnp.bfloat16] * 2)
  state = jax.ShapeDtypeStruct((B, H, C, N, N), jnp.bfloat16)
  args = (x, x, x, f32(B, Tp, H, N), f32(H, N), f32(B, Tp), f32(B, H, C, N), state, x, state)
  text = pallas_checks.lower_for_two_ctas_per_sm(fn, *args)
  assert "wkv6_chunk_grads" in text


# ------------------------------------------------------------------------------------------------------------------
# pallas_gpu on a Hopper GPU, against a float64 reference
# ------------------------------------------------------------------------------------------------------------------


def _reference_f64(r, w, k, v, u, s0, segment_ids):
  """(o, final_state) of the WKV-6 recurrence (w [B, T, H, N], or WKV-5's [H, N]), in the dtype of the inputs."""

  def step(S, r_t, w_t, k_t, v_t):
    o_t = jnp.einsum("bhk,bhkv->bhv", r_t, S) + (r_t * u * k_t).sum(-1, keepdims=True) * v_t
    return jnp.exp(w_t)[..., None] * S + k_t[..., None] * v_t[..., None, :], o_t

  return pallas_checks.scan_recurrence(step, s0, (r, jnp.broadcast_to(w, r.shape), k, v), segment_ids)


@pytest.mark.skipif(not mosaic_gpu_tiles.is_hopper(), reason="needs a Hopper (sm_90) GPU")
@pytest.mark.parametrize(
  "op,B,T,H,N,starts,decays",
  [("wkv6", 2, 256, 4, 64, None, "rwkv6"), ("wkv6", 1, 300, 3, 64, [7, 64, 65, 200], "rwkv6"),
   ("wkv6", 2, 192, 2, 128, [100], "rwkv6"), ("wkv5", 2, 200, 2, 64, [64, 130], "rwkv6"),
   ("wkv6", 2, 128, 66, 64, [50], "rwkv6"),  # 132 heads: block_v 64
   ("wkv6", 2, 128, 66, 128, [50], "rwkv6"),  # N = 128 at block_v 64
   ("wkv6", 2, 320, 4, 64, [100], "slow")],  # the state carries across chunks
)
def test_gpu_matches_float64_reference(op, B, T, H, N, starts, decays):
  seed = secrets.randbelow(2**31)
  r, w, k, v, u, s0 = make_inputs(seed, B, T, H, N, op, decays)
  r, k, v = (x.astype(jnp.bfloat16) for x in (r, k, v))
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  backend = wkv5_pallas_gpu if op == "wkv5" else wkv6_pallas_gpu
  pallas_checks.compare_float64(seed, backend, _reference_f64, (r, w, k, v, u, s0), segment_ids, GPU_TOL, names=NAMES,
                                label=f"{op} pallas_gpu vs float64 B={B} T={T} H={H} N={N} resets={starts} {decays}")
