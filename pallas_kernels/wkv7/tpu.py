"""`pallas_tpu`: WKV-7 as Pallas Mosaic-TPU kernels, forward and backward (custom_vjp), chunked.

Tiling (the calls are `pallas_kernels.mosaic_tpu_calls`, shared with WKV-5/6). One program per (batch row, head,
chunk); grid (B, H, C) with the chunk axis last and sequential ("arbitrary"), the two others parallel (megacore).
The state S [K, V] float32 lives in a VMEM scratch buffer carried from chunk to chunk; each program loads its
chunk's six [L, N] tiles, does the whole chunk (spec sections 2.2-2.4, `common.chunk_forward`): cumulative
log-decay, the four intra-chunk matrices, the WY inverse by block doubling, the reads u, the outputs and the next
state, all as 2-D float32 matmuls at Precision.HIGHEST. The forward also writes the state entering each chunk
(float32 [B, H, C, K, V], N^2 * 4 / L bytes per token-head) for the backward.

Backward: the same grid walked in reverse chunk order (the index maps read chunk C-1-c), the state gradient dS in
VMEM scratch; each program recomputes its chunk's forward terms from the inputs and the saved entering state and
applies `common.chunk_backward` (the hand-written VJP), writing the six input gradients of the chunk and carrying
dS to the previous chunk; the last program writes the initial-state gradient.

Inputs are transposed to head-major [B, H, T, N] (Mosaic's block rule: the last two block dims must be
(8, 128)-aligned or whole, which a [L, 1, N] tile of [B, T, H, N] is not) and the tail is zero-padded to whole chunks
(w = 0 and zero inputs are an identity transition). Inputs may be float32 or bfloat16 (computed in float32).
Resets: `segment_ids` become a per-token segment index inside each chunk (`chunking.segment_index`), passed as a
[L, 1] column and a [1, L] row so that masks are plain broadcasts. A `reset_state` R (the state segments restart
from) is one more [K, V] block per (batch row, head): rows of a segment starting inside a chunk read it as the
chunk's first segment reads S (`common.chunk_forward(..., reset=R)`), and the backward sums its gradient per (batch
row, head) in VMEM scratch (XLA sums the rows of a [1, H, K, V] one). Without one the reset-free kernels run.

`interpret=True` runs the same kernels in Pallas' interpreter (any platform; CI runs it on CPU).
Not measured on TPU hardware (none here); see `aot_lower` for the ahead-of-time lowering.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.chunking import segment_index
from pallas_kernels.mosaic_tpu_calls import backward_call, forward_call, head_major, time_major
from pallas_kernels.wkv7 import common as cm

F32 = jnp.float32
DEFAULT_CHUNK = 64


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10))
def _wkv7(r, w, k, v, a, b, s0, seg, reset, L, interpret):
  return _wkv7_fwd(r, w, k, v, a, b, s0, seg, reset, L, interpret)[0]


def _wkv7_fwd(r, w, k, v, a, b, s0, seg, reset, L, interpret):
  B, T, H, N = r.shape
  C = seg.shape[1]
  xs = [head_major(x, C * L) for x in (r, w, k, v, a, b)]
  o, final, states = forward_call(cm.chunk_forward, xs, [], seg, s0, r.dtype, name="wkv7_tpu_fwd", interpret=interpret,
                                  reset=reset)
  return (time_major(o, T), final), (xs, seg, states, reset)


def _wkv7_bwd(L, interpret, res, cts):
  xs, seg, states, reset = res
  d_o, d_final = cts
  T, Tp = d_o.shape[1], xs[0].shape[2]
  d_o = head_major(d_o.astype(F32), Tp)
  grads = backward_call(cm.chunk_backward, xs, [], seg, states, d_o, d_final.astype(F32), name="wkv7_tpu_bwd",
                        interpret=interpret, reset=reset)
  d_reset = None if reset is None else (grads[7].sum(axis=0, keepdims=True) if reset.shape[0] == 1 else grads[7])
  return tuple(time_major(g, T) for g in grads[:6]) + (grads[6], None, d_reset)


_wkv7.defvjp(_wkv7_fwd, _wkv7_bwd)


def wkv7_pallas_tpu(r, w, k, v, a, b, initial_state, segment_ids, reset_state=None, *,
                    chunk_size: int = DEFAULT_CHUNK, interpret: bool = False):
  """The `pallas_tpu` backend; see `rwkvjax.ops.wkv7` for the contract.

  chunk_size: tokens per chunk L, a power of two in [8, 128]; T < L uses one chunk of the next power of two.
  interpret: run the kernels in Pallas interpret mode (any platform, e.g. CPU tests).
  Inputs r, k, v, a, b (and w) float32 or bfloat16; state and arithmetic float32; o in the dtype of r.
  reset_state: None (segments restart from zero) or [B or 1, H, K, V], the state they restart from (a separate
    kernel variant; its gradient is summed over the batch rows for a [1, ...] one).
  """
  B, T, H, N = r.shape
  L = min(chunk_size, max(8, 1 << (T - 1).bit_length()))
  if L & (L - 1) or not 8 <= L <= 128:
    raise ValueError(f"pallas_tpu: chunk_size must be a power of two in [8, 128], got {chunk_size}")
  if r.dtype == jnp.bfloat16 and L < 16:
    L = 16  # bf16 tiles pack 16 rows per vreg
  dtype = r.dtype
  k, v, a, b = (x.astype(dtype) for x in (k, v, a, b))
  if w.dtype not in (jnp.float32, jnp.bfloat16):
    w = w.astype(F32)
  s0 = jnp.zeros((B, H, N, N), F32) if initial_state is None else initial_state.astype(F32)
  seg = segment_index(segment_ids, B, T, L)
  reset = None if reset_state is None else reset_state.astype(F32)
  return _wkv7(r, w, k, v, a, b, s0, seg, reset, L, interpret)


def aot_lower(topology: str = "v5e:2x2", shape=(2, 256, 4, 64), dtype=jnp.bfloat16, chunk_size: int = DEFAULT_CHUNK):
  """Lowers (and compiles, when a TPU compiler is present) forward+backward for a TPU topology without TPU hardware.

  Uses `jax.experimental.topologies.get_topology_desc(topology, "tpu")`, as MaxText's AOT tests do; that needs the
  TPU PJRT plugin (libtpu) installed, even on a CPU-only machine. Returns the `jax.stages.Compiled` object, or the
  `Lowered` one when the topology cannot be created (the Mosaic kernels are still lowered to MLIR then).
  """
  B, T, H, N = shape
  spec = jax.ShapeDtypeStruct(shape, dtype)
  wspec = jax.ShapeDtypeStruct(shape, F32)
  sspec = jax.ShapeDtypeStruct((B, H, N, N), F32)
  seg_spec = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def loss(r, w, k, v, a, b, s0, seg):
    o, s = wkv7_pallas_tpu(r, w, k, v, a, b, s0, seg, chunk_size=chunk_size)
    return jnp.sum(o.astype(F32)) + jnp.sum(s)

  fn = jax.jit(jax.grad(loss, argnums=tuple(range(7))))
  args = (spec, wspec, spec, spec, spec, spec, sspec, seg_spec)
  from jax.experimental import topologies  # noqa: PLC0415

  topo = topologies.get_topology_desc(topology, "tpu")
  from jax.sharding import SingleDeviceSharding  # noqa: PLC0415

  sharding = SingleDeviceSharding(topo.devices[0])
  args = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in args)
  return fn.trace(*args).lower().compile()


def lower_for_tpu(shape=(2, 256, 4, 64), dtype=jnp.bfloat16, chunk_size: int = DEFAULT_CHUNK,
                  reset_batch: int | None = None):
  """Cross-platform lowering for TPU (no TPU plugin needed): traces forward+backward and runs the Pallas -> Mosaic
  lowering of both kernels; returns the StableHLO text (which embeds the serialized Mosaic modules).
  reset_batch: None, or 1 or B to lower the reset_state variant (a [reset_batch, H, K, V] reset state)."""
  B, T, H, N = shape
  spec = jax.ShapeDtypeStruct(shape, dtype)

  def loss(r, w, k, v, a, b, s0, seg, *reset):
    o, s = wkv7_pallas_tpu(r, w, k, v, a, b, s0, seg, *reset, chunk_size=chunk_size)
    return jnp.sum(o.astype(F32)) + jnp.sum(s)

  reset = () if reset_batch is None else (jax.ShapeDtypeStruct((reset_batch, H, N, N), F32),)
  fn = jax.jit(jax.grad(loss, argnums=tuple(range(7)) + ((8,) if reset else ())))
  args = (spec, jax.ShapeDtypeStruct(shape, F32), spec, spec, spec, spec,
          jax.ShapeDtypeStruct((B, H, N, N), F32), jax.ShapeDtypeStruct((B, T), jnp.int32)) + reset
  return fn.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
