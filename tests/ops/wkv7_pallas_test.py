"""The Pallas WKV-7 backends (`pallas_tpu`, `pallas_gpu`) against the float32 reference: outputs, final state and the
gradients of all six inputs and the initial state (and of a reset_state, for `pallas_tpu`), with resets and T not a
multiple of the chunk, fresh random inputs every run (the seed is in the failure message).

On CPU (CI) the kernels run in Pallas interpret mode (`interpret=True`; the backends `pallas_tpu_interpret` and
`pallas_gpu_interpret`), which checks their logic:
  * pallas_tpu: float32 arithmetic, relative error <= 2e-3 (it measures ~1e-6);
  * pallas_gpu: the Mosaic GPU interpreter reproduces the kernels' bf16 tensor-core numerics (bf16 inputs, bf16
    intermediate tiles, split-bf16 products), so it is held to the GPU bound, <= 1e-2 against the float32 reference
    on the same bf16-rounded inputs (it measures 2e-3 .. 5e-3, like FLA's 4e-3).
Lowering: the TPU kernels are lowered to Mosaic for TPU (always) and compiled ahead of time for TPU topologies when
libtpu is installed (`pip install "libtpu==0.0.48.*"`, the version jax 0.11.2 pins; skipped otherwise); the GPU
kernels are lowered to Mosaic GPU for CUDA (always). On a Hopper GPU, `pallas_gpu` itself is compared with a float64
reference (bf16 inputs, <= 1e-2), and so is `chunked` (whose bf16 inputs get x3 tensor-core products on a GPU).
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
from pallas_kernels.wkv7 import tpu
from pallas_kernels.wkv7.gpu import wkv7_pallas_gpu
from pallas_kernels.wkv7.tpu import wkv7_pallas_tpu
from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference
from tests.ops import pallas_checks
from tests.ops.wkv7_chunked_test import make_inputs, rel_err, segments_from_starts

TPU_TOL = 2e-3
GPU_TOL = 1e-2
NAMES = ("o", "final_state", "dr", "dw", "dk", "dv", "da", "db", "dinitial_state")


def compare(seed, fn, inputs, segment_ids, tol, dtype=jnp.float32, label="", use_s0=True, reset_state=None):
  """`pallas_checks.compare` against the float32 reference (r, k, v, a, b given to fn in dtype)."""
  return pallas_checks.compare(seed, fn, wkv7_reference, inputs, segment_ids, tol, names=NAMES, cast=(0, 2, 3, 4, 5),
                               dtype=dtype, label=label, use_s0=use_s0, reset_state=reset_state)


def row_segments(T, *starts_per_row):
  """[B, T] int32 segment ids, row i changing exactly at starts_per_row[i]."""
  change = np.zeros((len(starts_per_row), T), np.int32)
  for i, starts in enumerate(starts_per_row):
    change[i, list(starts)] = 1
  return jnp.asarray(np.cumsum(change, axis=1))


# ------------------------------------------------------------------------------------------------------------------
# pallas_tpu in interpret mode
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "B,T,H,N,chunk,starts,kind,use_s0",
  [
    (1, 37, 2, 16, 16, [5, 16], "rwkv7", True),  # resets inside a chunk and on a boundary; T % chunk != 0
    (2, 50, 1, 16, 32, None, "generic", False),  # no initial state
    (1, 80, 1, 16, 64, [3, 63, 64, 65], "aligned", True),  # worst-conditioned WY solve, adjacent resets
    (1, 70, 1, 64, 64, None, "strong_decay", True),  # largest factor exponents at N = 64
  ],
)
def test_tpu_interpret_matches_reference(B, T, H, N, chunk, starts, kind, use_s0):
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, B, T, H, N, kind)
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  fn = functools.partial(wkv7_pallas_tpu, chunk_size=chunk, interpret=True)
  compare(seed, fn, inputs, segment_ids, TPU_TOL, label=f"pallas_tpu chunk={chunk} {kind}", use_s0=use_s0)


def test_tpu_interpret_bfloat16_and_random_resets():
  seed = secrets.randbelow(2**31)
  rng = np.random.default_rng(seed)
  segment_ids = jnp.asarray(np.cumsum(rng.random((2, 40)) < 0.1, axis=1), jnp.int32)
  fn = functools.partial(wkv7_pallas_tpu, chunk_size=16, interpret=True)
  compare(seed, fn, make_inputs(seed, 2, 40, 1, 16), segment_ids, TPU_TOL, dtype=jnp.bfloat16,
          label="pallas_tpu bf16")


@pytest.mark.parametrize(
  "T,chunk,starts,reset_batch,use_s0,kind",
  [
    # per row: inside chunks, on a boundary (16), adjacent (16, 17 / 31, 32), the last token; T % chunk != 0
    (37, 16, ([5, 16, 17, 36], [15, 31, 32]), 2, True, "rwkv7"),
    # one reset state for every row; a row without resets; no initial state; several resets in one chunk
    (45, 32, ([3, 9, 32, 40], []), 1, False, "generic"),
  ],
)
def test_tpu_interpret_reset_state(T, chunk, starts, reset_batch, use_s0, kind):
  """Segments restart from reset_state: outputs, final state and all gradients, reset_state's included."""
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, len(starts), T, 2, 16, kind)
  reset_state = jax.random.normal(jax.random.PRNGKey(seed + 2), (reset_batch, 2, 16, 16))
  fn = functools.partial(wkv7_pallas_tpu, chunk_size=chunk, interpret=True)
  compare(seed, fn, inputs, row_segments(T, *starts), TPU_TOL, label=f"pallas_tpu reset_state [{reset_batch}, ...]",
          use_s0=use_s0, reset_state=reset_state)


def test_tpu_interpret_through_public_api():
  seed = secrets.randbelow(2**31)
  r, w, k, v, a, b, s0 = make_inputs(seed, 1, 21, 2, 16)
  segment_ids = segments_from_starts(1, 21, [9])
  o, s = ops.wkv7(r, w, k, v, a, b, s0, segment_ids=segment_ids, impl="pallas_tpu_interpret")
  o_ref, s_ref = wkv7_reference(r, w, k, v, a, b, s0, segment_ids)
  assert rel_err(o, o_ref) <= TPU_TOL and rel_err(s, s_ref) <= TPU_TOL, f"seed={seed}"


# ------------------------------------------------------------------------------------------------------------------
# pallas_gpu (Mosaic GPU) in interpret mode
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "B,T,H,N,starts,kind,dtype",
  [
    (1, 150, 1, 64, [5, 64, 100], "rwkv7", jnp.bfloat16),  # 3 chunks, T % 64 != 0, resets incl. a chunk boundary
    (2, 64, 2, 64, None, "aligned", jnp.float32),  # float32 inputs (rounded to bf16 by the kernels); B, H > 1
    (1, 100, 1, 128, [70], "rwkv7", jnp.bfloat16),  # N = 128: the gradient kernel goes by two 64-wide K blocks
    (1, 256, 1, 64, [100], "slow", jnp.bfloat16),  # the state carries across chunks
  ],
)
def test_gpu_interpret_matches_reference(B, T, H, N, starts, kind, dtype):
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, B, T, H, N, kind)
  inputs = tuple(x.astype(jnp.bfloat16).astype(jnp.float32) if i in (0, 2, 3, 4, 5) else x
                 for i, x in enumerate(inputs))  # the kernels' bf16 inputs, so the reference sees the same values
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  fn = functools.partial(wkv7_pallas_gpu, interpret=True)
  compare(seed, fn, inputs, segment_ids, GPU_TOL, dtype=dtype, label=f"pallas_gpu interpret {kind}")


def test_gpu_interpret_state_tile_width_32(monkeypatch):
  """The state passes at V tiles of 32 at N = 128 (`state_block_v`'s choice for many heads; the other tests' few
  heads get 16): each tile a quarter of the state's columns."""
  from pallas_kernels.wkv7 import gpu  # noqa: PLC0415

  monkeypatch.setattr(gpu, "state_block_v", lambda B, H, N: 32)
  B, T, H, N = 1, 90, 1, 128  # (a shape of its own: no trace cached at another width)
  seed = secrets.randbelow(2**31)
  inputs = make_inputs(seed, B, T, H, N, "slow")
  inputs = tuple(x.astype(jnp.bfloat16).astype(jnp.float32) if i in (0, 2, 3, 4, 5) else x
                 for i, x in enumerate(inputs))
  compare(seed, functools.partial(wkv7_pallas_gpu, interpret=True), inputs, segments_from_starts(B, T, [70]),
          GPU_TOL, dtype=jnp.bfloat16, label="pallas_gpu interpret bv=32")


def test_backends_registered():
  names = ops.backends()
  for name in ("pallas_tpu", "pallas_gpu", "pallas_tpu_interpret", "pallas_gpu_interpret"):
    assert name in names
  if jax.default_backend() == "cpu":
    assert ops.resolve_impl("auto") == "chunked"  # interpret variants are never picked by "auto"


def test_reset_state_support():
  """The TPU kernels support a reset_state; the GPU ones restart segments from zero only: a reset_state raises
  NotImplementedError for them, through the op and when the kernel function is called directly."""
  r, w, k, v, a, b, s0 = make_inputs(secrets.randbelow(2**31), 1, 16, 1, 64)
  seg, reset = segments_from_starts(1, 16, [8]), jax.random.normal(jax.random.PRNGKey(0), (1, 1, 64, 64))
  assert {"pallas_tpu", "pallas_tpu_interpret"} <= set(ops.backends(reset_state=True))
  assert not {"pallas_gpu", "pallas_gpu_interpret"} & set(ops.backends(reset_state=True))
  for impl in ("pallas_gpu", "pallas_gpu_interpret"):
    with pytest.raises(NotImplementedError, match="does not support reset_state"):
      ops.wkv7(r, w, k, v, a, b, s0, segment_ids=seg, reset_state=reset, impl=impl)
  with pytest.raises(NotImplementedError, match="does not support reset_state"):
    wkv7_pallas_gpu(r, w, k, v, a, b, s0, seg, reset, interpret=True)


# ------------------------------------------------------------------------------------------------------------------
# lowering without the hardware
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_batch", [None, 1, 2])
def test_tpu_kernels_lower_to_mosaic(reset_batch):
  text = tpu.lower_for_tpu(shape=(2, 128, 2, 64), dtype=jnp.bfloat16, chunk_size=64, reset_batch=reset_batch)
  assert text.count("tpu_custom_call") >= 2  # forward and backward kernels


def _has_libtpu():
  return importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not _has_libtpu(), reason="AOT compile for a TPU topology needs libtpu (the TPU PJRT plugin) even "
                    "without TPU hardware: pip install 'libtpu==0.0.48.*' (pinned by jax 0.11.2) to run this test")
@pytest.mark.parametrize("topology,dtype,chunk", [("v5e:2x2", jnp.bfloat16, 64), ("v6e:2x2", jnp.float32, 32)])
def test_tpu_aot_compile_for_topology(topology, dtype, chunk):
  compiled = tpu.aot_lower(topology, shape=(2, 200, 2, 64), dtype=dtype, chunk_size=chunk)
  assert "wkv7_tpu_fwd" in compiled.as_text() and "wkv7_tpu_bwd" in compiled.as_text()


@pytest.mark.parametrize("N, H", [(64, 2), (128, 2), (64, 66), (128, 66)])  # H 66: the state passes' widest V tile
def test_gpu_kernels_lower_to_mosaic_gpu(monkeypatch, N, H):
  monkeypatch.setattr(mosaic_gpu_tiles, "is_hopper", lambda: True)
  B, T = 1, 128
  spec = jax.ShapeDtypeStruct((B, T, H, N), jnp.bfloat16)
  args = (spec, jax.ShapeDtypeStruct((B, T, H, N), jnp.float32), spec, spec, spec, spec,
          jax.ShapeDtypeStruct((B, H, N, N), jnp.float32), jax.ShapeDtypeStruct((B, T), jnp.int32))
  text = pallas_checks.lower_for_cuda(wkv7_pallas_gpu, *args)
  for name in ("wkv7_prep", "wkv7_state_fwd", "wkv7_state_bwd", "wkv7_chunk_grads"):
    assert name in text


def test_gpu_chunk_grads_fits_two_ctas_per_sm():
  """The gradient kernel's SMEM (checked by Mosaic GPU's lowering) leaves room for two CTAs per H100 SM: 228 KiB per
  SM, 1 KiB of it reserved per CTA."""
  from pallas_kernels.wkv7 import gpu_bwd  # noqa: PLC0415

  B, Tp, H, N, C = 1, 128, 1, 64, 2
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  x = jax.ShapeDtypeStruct((B, Tp, H, N), jnp.bfloat16)
  fn = functools.partial(gpu_bwd.chunk_grads, out_dtypes=[jnp.bfloat16, jnp.float32] + [jnp.bfloat16] * 4)
  bf16 = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)  # noqa: E731
  t, state, tile = bf16(B, H, C, 64, 64), bf16(B, H, C, N, N), bf16(B, H, Tp, N)
  args = (x,) * 5 + (f32(B, 1 + Tp, H, N), f32(B, Tp), f32(B, H, C, N), state, x, state, t, t, tile, tile, tile)
  text = pallas_checks.lower_for_two_ctas_per_sm(fn, *args)
  assert "wkv7_chunk_grads" in text


def test_gpu_state_bwd_fits_two_ctas_per_sm():
  """The backward state pass at N = 64 with its widest V tile (bv 64, K1's) fits two CTAs per H100 SM: the states and
  dU leave from the split's hi tiles, with no staging copies (`mosaic_gpu_state_pass`)."""
  from pallas_kernels.wkv7 import gpu  # noqa: PLC0415

  B, Tp, H, N, C = 1, 128, 1, 64, 2
  tile = jax.ShapeDtypeStruct((B, H, Tp, N), jnp.bfloat16)
  args = (tile, tile, tile, jax.ShapeDtypeStruct((B, Tp, H, N), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, H, C, N), jnp.float32), jax.ShapeDtypeStruct((B, H, N, N), jnp.float32))
  text = pallas_checks.lower_for_two_ctas_per_sm(functools.partial(gpu._state_bwd, bv=64), *args)
  assert "wkv7_state_bwd" in text


# ------------------------------------------------------------------------------------------------------------------
# pallas_gpu (and chunked's GPU numerics for bf16 inputs) on a Hopper GPU, against a float64 reference
# ------------------------------------------------------------------------------------------------------------------


def _reference_f64(r, w, k, v, a, b, s0, segment_ids):
  """(o, final_state) of the WKV-7 recurrence, in the dtype of the inputs."""

  def step(S, r_t, w_t, k_t, v_t, a_t, b_t):
    sa = jnp.einsum("bhk,bhkv->bhv", a_t, S)
    S = jnp.exp(w_t)[..., None] * S + b_t[..., None] * sa[..., None, :] + k_t[..., None] * v_t[..., None, :]
    return S, jnp.einsum("bhk,bhkv->bhv", r_t, S)

  return pallas_checks.scan_recurrence(step, s0, (r, w, k, v, a, b), segment_ids)


@pytest.mark.skipif(not mosaic_gpu_tiles.is_hopper(), reason="needs a Hopper (sm_90) GPU")
@pytest.mark.parametrize("impl", ["pallas_gpu", "chunked"])  # chunked: its x3 products for bf16 inputs on a GPU
@pytest.mark.parametrize(
  "B,T,H,N,starts,kind",
  [(2, 256, 4, 64, None, "rwkv7"), (1, 300, 3, 64, [7, 64, 65, 200], "rwkv7"), (2, 192, 2, 128, [100], "rwkv7"),
   (1, 1100, 2, 64, [500], "rwkv7"),  # 35 chunks of 32: chunked's grouped state pass
   (2, 128, 66, 64, [50], "rwkv7"),  # 132 heads: the state passes' widest V tile (block_v 64)
   (2, 128, 66, 128, [50], "rwkv7"),  # N = 128 at its widest V tile (32)
   (2, 320, 4, 64, [100], "slow")],  # the state carries across chunks
)
def test_gpu_matches_float64_reference(B, T, H, N, starts, kind, impl):
  seed = secrets.randbelow(2**31)
  r, w, k, v, a, b, s0 = make_inputs(seed, B, T, H, N, kind)
  r, k, v, a, b = (x.astype(jnp.bfloat16) for x in (r, k, v, a, b))
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  fn = wkv7_pallas_gpu if impl == "pallas_gpu" else wkv7_chunked
  pallas_checks.compare_float64(seed, fn, _reference_f64, (r, w, k, v, a, b, s0), segment_ids, GPU_TOL,
                                names=NAMES, label=f"{impl} vs float64 B={B} T={T} H={H} N={N} resets={starts} {kind}")
