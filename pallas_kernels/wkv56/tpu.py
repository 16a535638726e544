"""`pallas_tpu`: WKV-6 (and WKV-5) as Pallas Mosaic-TPU kernels, forward and backward (custom_vjp), chunked.

The same tiling and calls as `pallas_kernels.wkv7.tpu` (`pallas_kernels.mosaic_tpu_calls`). One program per (batch
row, head, chunk); grid (B, H, C) with the chunk axis last and sequential ("arbitrary"), the two others parallel.
The state S [K, V] float32 lives in a VMEM scratch buffer carried from chunk to chunk; each program loads its
chunk's four [L, N] tiles (r, w, k, v) and the head's bonus u [1, N] and does the whole chunk
(`common.chunk_forward`: the hierarchical exact-decay intra-chunk matrix, the readout of the entering state and the
next state), all as 2-D float32 matmuls at Precision.HIGHEST. The forward also writes the state entering each chunk
(float32 [B, H, C, K, V]) for the backward.

Backward: the same grid walked in reverse chunk order, the state gradient dS in VMEM scratch; each program
recomputes its chunk's terms from the inputs and the saved entering state and applies `common.chunk_backward`,
writing the chunk's r, w, k, v gradients, carrying dS to the previous chunk and summing the bonus gradient over the
chunks of its (batch row, head) in a second scratch buffer; the last program writes the initial-state gradient and
that sum (XLA adds the batch rows).

Inputs are transposed to head-major [B, H, T, N] (Mosaic's block rule) and the tail is zero-padded to whole chunks
(w = 0 and zero inputs are an identity transition with zero outputs). Inputs may be float32 or bfloat16 (computed
in float32). Resets: `segment_ids` become a per-token segment index inside each chunk, passed as a [L, 1] column
and a [1, L] row. A `reset_state` R (the state segments restart from) is one more [K, V] block per (batch row,
head): rows of a segment starting inside a chunk read it decayed from their segment's start
(`common.chunk_forward(..., reset=R)`), and the backward sums its gradient per (batch row, head) in VMEM scratch as
it does u's (XLA sums the rows of a [1, H, K, V] one); without one the reset-free kernels run. WKV-5 broadcasts its
[H, N] decay over [B, T] and runs the WKV-6 kernels.

`interpret=True` runs the same kernels in Pallas' interpreter (any platform; CI runs it on CPU).
Not measured on TPU hardware (none here); see `lower_for_tpu` and `aot_lower` for the ahead-of-time lowering.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.chunking import segment_index
from pallas_kernels.mosaic_tpu_calls import backward_call, forward_call, head_major, time_major
from pallas_kernels.wkv56 import common as cm
from rwkvjax.ops.wkv5 import broadcast_decay

F32 = jnp.float32
DEFAULT_CHUNK = 64


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _wkv6(r, w, k, v, u, s0, seg, reset, L, interpret):
  return _wkv6_fwd(r, w, k, v, u, s0, seg, reset, L, interpret)[0]


def _wkv6_fwd(r, w, k, v, u, s0, seg, reset, L, interpret):
  T = r.shape[1]
  C = seg.shape[1]
  xs = [head_major(x, C * L) for x in (r, w, k, v)]
  u3 = u[:, None, :]
  o, final, states = forward_call(cm.chunk_forward, xs, [u3], seg, s0, r.dtype, name="wkv6_tpu_fwd",
                                  interpret=interpret, reset=reset)
  return (time_major(o, T), final), (xs, u3, seg, states, reset)


def _wkv6_bwd(L, interpret, res, cts):
  xs, u3, seg, states, reset = res
  d_o, d_final = cts
  T, Tp = d_o.shape[1], xs[0].shape[2]
  d_o = head_major(d_o.astype(F32), Tp)
  grads = backward_call(cm.chunk_backward, xs, [u3], seg, states, d_o, d_final.astype(F32), name="wkv6_tpu_bwd",
                        interpret=interpret, reset=reset)
  ds0, du = grads[4], grads[5]
  d_reset = None if reset is None else (grads[6].sum(axis=0, keepdims=True) if reset.shape[0] == 1 else grads[6])
  return tuple(time_major(g, T) for g in grads[:4]) + (du.sum(axis=(0, 2)), ds0, None, d_reset)


_wkv6.defvjp(_wkv6_fwd, _wkv6_bwd)


def wkv6_pallas_tpu(r, w, k, v, u, initial_state, segment_ids, reset_state=None, *,
                    chunk_size: int = DEFAULT_CHUNK, interpret: bool = False):
  """The `pallas_tpu` backend of wkv6; see `rwkvjax.ops.wkv6` for the contract.

  chunk_size: tokens per chunk L, a power of two in [8, 128]; T < L uses one chunk of the next power of two.
  interpret: run the kernels in Pallas interpret mode (any platform, e.g. CPU tests).
  Inputs r, k, v (and w) float32 or bfloat16; u, state and arithmetic float32; o in the dtype of r.
  reset_state: None (segments restart from zero) or [B or 1, H, K, V], the state they restart from (a separate
    kernel variant; its gradient is summed over the batch rows for a [1, ...] one).
  """
  B, T, H, N = r.shape
  if chunk_size & (chunk_size - 1) or not 8 <= chunk_size <= 128:
    raise ValueError(f"pallas_tpu: chunk_size must be a power of two in [8, 128], got {chunk_size}")
  L = min(chunk_size, max(8, 1 << (T - 1).bit_length()))
  if r.dtype == jnp.bfloat16 and L < 16:
    L = 16  # bf16 tiles pack 16 rows per vreg
  k, v = (x.astype(r.dtype) for x in (k, v))
  if w.dtype not in (jnp.float32, jnp.bfloat16):
    w = w.astype(F32)
  s0 = jnp.zeros((B, H, N, N), F32) if initial_state is None else initial_state.astype(F32)
  seg = segment_index(segment_ids, B, T, L)
  reset = None if reset_state is None else reset_state.astype(F32)
  return _wkv6(r, w, k, v, u.astype(F32), s0, seg, reset, L, interpret)


def wkv5_pallas_tpu(r, w, k, v, u, initial_state, segment_ids, reset_state=None, *,
                    chunk_size: int = DEFAULT_CHUNK, interpret: bool = False):
  """The `pallas_tpu` backend of wkv5 (w: [H, N]): the WKV-6 kernels with the decay broadcast over [B, T]."""
  return wkv6_pallas_tpu(r, broadcast_decay(w, r), k, v, u, initial_state, segment_ids, reset_state,
                         chunk_size=chunk_size, interpret=interpret)


def _grad_fn(op: str, chunk_size: int, with_reset: bool = False):
  """jit(grad) of a scalar loss of (o, final_state) w.r.t. r, w, k, v, u, the initial state (and the reset state)."""
  fn = wkv5_pallas_tpu if op == "wkv5" else wkv6_pallas_tpu

  def loss(r, w, k, v, u, s0, seg, *reset):
    o, s = fn(r, w, k, v, u, s0, seg, *reset, chunk_size=chunk_size)
    return jnp.sum(o.astype(F32)) + jnp.sum(s)

  return jax.jit(jax.grad(loss, argnums=tuple(range(6)) + ((7,) if with_reset else ())))


def _arg_specs(op: str, shape, dtype, sharding=None, reset_batch: int | None = None):
  B, T, H, N = shape
  spec = lambda s, dt: jax.ShapeDtypeStruct(s, dt, sharding=sharding)  # noqa: E731
  w_shape = (H, N) if op == "wkv5" else shape
  reset = () if reset_batch is None else (spec((reset_batch, H, N, N), F32),)
  return (spec(shape, dtype), spec(w_shape, F32), spec(shape, dtype), spec(shape, dtype), spec((H, N), F32),
          spec((B, H, N, N), F32), spec((B, T), jnp.int32)) + reset


def lower_for_tpu(op: str = "wkv6", shape=(2, 256, 4, 64), dtype=jnp.bfloat16, chunk_size: int = DEFAULT_CHUNK,
                  reset_batch: int | None = None):
  """Cross-platform lowering for TPU (no TPU plugin needed): traces forward+backward of `op` ("wkv5" or "wkv6")
  and runs the Pallas -> Mosaic lowering of both kernels; returns the StableHLO text (with the Mosaic modules).
  reset_batch: None, or 1 or B to lower the reset_state variant (a [reset_batch, H, K, V] reset state)."""
  fn = _grad_fn(op, chunk_size, reset_batch is not None)
  args = _arg_specs(op, shape, dtype, reset_batch=reset_batch)
  return fn.trace(*args).lower(lowering_platforms=("tpu",)).as_text()


def aot_lower(topology: str = "v5e:2x2", op: str = "wkv6", shape=(2, 256, 4, 64), dtype=jnp.bfloat16,
              chunk_size: int = DEFAULT_CHUNK):
  """Compiles forward+backward of `op` for a TPU topology without TPU hardware (needs libtpu installed, as
  `pallas_kernels.wkv7.tpu.aot_lower` does); returns the `jax.stages.Compiled` object."""
  from jax.experimental import topologies  # noqa: PLC0415
  from jax.sharding import SingleDeviceSharding  # noqa: PLC0415

  topo = topologies.get_topology_desc(topology, "tpu")
  args = _arg_specs(op, shape, dtype, sharding=SingleDeviceSharding(topo.devices[0]))
  return _grad_fn(op, chunk_size).trace(*args).lower().compile()
