"""The Pallas Mosaic-TPU calls shared by `pallas_kernels.wkv7.tpu` and `pallas_kernels.wkv56.tpu`.

Both ops run one program per (batch row, head, chunk) on the grid (B, H, C), the chunk axis last and sequential
("arbitrary"), the two others parallel; the state S [K, V] float32 is carried from chunk to chunk in a VMEM scratch
buffer. A program loads its chunk's [L, N] tiles (any float dtype, computed in float32), the op's per-head parameter
rows [1, N] float32 (WKV-6's bonus u; none for WKV-7) and the chunk's segment index as a [L, 1] column and a [1, L]
row, and applies the op's chunk function (`common.chunk_forward` / `common.chunk_backward`). The backward walks the
chunks in reverse (the index maps read chunk C-1-c), carries dS and sums the parameter gradients over the chunks of
its (batch row, head).

A reset state R ([B or 1, H, N, N] float32, the state segments restart from; optional) is one more [N, N] block per
(batch row, head), passed to the chunk functions as `reset=`; the backward sums its per-chunk gradients in a VMEM
scratch buffer per (batch row, head) and returns them [B, H, N, N] (the caller sums the rows of a [1, ...] one).
Without one the kernels are the reset-free ones (no extra input, output or work).

Inputs are head-major [B, H, T, N] (Mosaic's block rule: the last two block dims must be (8, 128)-aligned or
whole, which a [L, 1, N] tile of [B, T, H, N] is not); `head_major` / `time_major` convert.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.chunking import pad_time

F32 = jnp.float32

__all__ = ["forward_call", "backward_call", "head_major", "time_major"]


def _compiler_params():
  return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _specs(L: int, N: int, reverse: bool, C: int):
  """BlockSpecs of a [B, H, Tp, N] tile, an [H, 1, N] parameter row, a [B, C, L, 1] segment column and a [B, C, 1, L]
  row, a [B, H, N, N] state and a [B, H, C, N, N] per-chunk state, at chunk c (C-1-c when `reverse`)."""
  cix = (lambda c: C - 1 - c) if reverse else (lambda c: c)
  tile = pl.BlockSpec((None, None, L, N), lambda b, h, c: (b, h, cix(c), 0))
  param = pl.BlockSpec((None, 1, N), lambda b, h, c: (h, 0, 0))
  seg_col = pl.BlockSpec((None, None, L, 1), lambda b, h, c: (b, cix(c), 0, 0))
  seg_row = pl.BlockSpec((None, None, 1, L), lambda b, h, c: (b, cix(c), 0, 0))
  state = pl.BlockSpec((None, None, N, N), lambda b, h, c: (b, h, 0, 0))
  per_chunk_state = pl.BlockSpec((None, None, None, N, N), lambda b, h, c: (b, h, cix(c), 0, 0))
  return tile, param, seg_col, seg_row, state, per_chunk_state


def _reset_spec(reset, N: int):
  """([the BlockSpec of the reset state], [reset]): a [B, H, N, N] one is read at (b, h), a [1, H, N, N] one at (0, h);
  both lists empty when reset is None."""
  if reset is None:
    return [], []
  if reset.shape[0] == 1:
    return [pl.BlockSpec((None, None, N, N), lambda b, h, c: (0, h, 0, 0))], [reset]
  return [pl.BlockSpec((None, None, N, N), lambda b, h, c: (b, h, 0, 0))], [reset]


def forward_call(chunk_forward: Callable, xs, params, seg, s0, out_dtype, *, name: str, interpret: bool, reset=None):
  """The forward kernel over all chunks.

  chunk_forward(*tiles, *params, seg_col, seg_row, S[, reset=R]) -> (o [L, V], S' [K, V]), all float32;
  xs: the op's inputs [B, H, Tp, N] (Tp = C * L); params: [H, 1, N] float32; seg [B, C, L] float32 segment index;
  s0 [B, H, N, N] float32; reset: None or [B or 1, H, N, N] float32. Returns o [B, H, Tp, N] (out_dtype), the final
  state [B, H, N, N] and the entering states [B, H, C, N, N] float32."""
  B, H, Tp, N = xs[0].shape
  C, L = seg.shape[1], seg.shape[2]
  tile, param, scol, srow, state, pcs = _specs(L, N, False, C)
  nx, n_in = len(xs), len(xs) + len(params)
  reset_specs, resets = _reset_spec(reset, N)

  def kernel(*refs):
    sc_ref, sr_ref, s0_ref, *rs_ref = refs[n_in:n_in + 3 + len(resets)]
    o_ref, fin_ref, st_ref, s_scr = refs[n_in + 3 + len(resets):]
    kw = {"reset": rs_ref[0][...]} if rs_ref else {}
    c = pl.program_id(2)

    @pl.when(c == 0)
    def _():
      s_scr[...] = s0_ref[...]

    S = s_scr[...]
    st_ref[...] = S
    vals = [ref[...].astype(F32) for ref in refs[:nx]] + [ref[...] for ref in refs[nx:n_in]]
    o, S_next = chunk_forward(*vals, sc_ref[...], sr_ref[...], S, **kw)
    o_ref[...] = o.astype(o_ref.dtype)
    s_scr[...] = S_next

    @pl.when(c == C - 1)
    def _():
      fin_ref[...] = S_next

  return pl.pallas_call(
    kernel,
    grid=(B, H, C),
    in_specs=[tile] * nx + [param] * len(params) + [scol, srow, state] + reset_specs,
    out_specs=[tile, state, pcs],
    out_shape=[
      jax.ShapeDtypeStruct((B, H, Tp, N), out_dtype),
      jax.ShapeDtypeStruct((B, H, N, N), F32),
      jax.ShapeDtypeStruct((B, H, C, N, N), F32),
    ],
    scratch_shapes=[pltpu.VMEM((N, N), F32)],
    compiler_params=_compiler_params(),
    interpret=interpret,
    name=name,
  )(*xs, *params, seg[..., None], seg[:, :, None, :], s0, *resets)


def backward_call(chunk_backward: Callable, xs, params, seg, states, d_o, d_final, *, name: str, interpret: bool,
                  reset=None):
  """The backward kernel over all chunks, in reverse.

  chunk_backward(*tiles, *params, seg_col, seg_row, S, dO, dS'[, reset=R]) -> (*tile grads, *param grads [1, N], dS
  [, dR]), all float32; xs, params, seg, reset as in `forward_call`; states [B, H, C, N, N] float32 (from it); d_o
  [B, H, Tp, N]; d_final [B, H, N, N] float32. Returns the gradients of xs [B, H, Tp, N] (in their dtypes), of the
  initial state [B, H, N, N] float32, of each param summed over the chunks of each (batch row, head) [B, H, 1, N]
  float32 and, with a reset, of it summed likewise [B, H, N, N] float32 (not yet over the rows of a [1, ...] one)."""
  B, H, Tp, N = xs[0].shape
  C, L = seg.shape[1], seg.shape[2]
  tile, param, scol, srow, state, pcs = _specs(L, N, True, C)
  per_head = pl.BlockSpec((None, None, 1, N), lambda b, h, c: (b, h, 0, 0))
  nx, n_in, npar = len(xs), len(xs) + len(params), len(params)
  reset_specs, resets = _reset_spec(reset, N)
  nr = len(resets)
  n_out = nx + 1 + npar + nr

  def kernel(*refs):
    sc_ref, sr_ref, st_ref, do_ref, dfin_ref = refs[n_in:n_in + 5]
    rs_ref = refs[n_in + 5:n_in + 5 + nr]
    outs = refs[n_in + 5 + nr:n_in + 5 + nr + n_out]
    grad_refs, ds0_ref, dp_refs = outs[:nx], outs[nx], outs[nx + 1:]  # dp_refs: the params', then the reset's
    ds_scr, *dp_scr = refs[n_in + 5 + nr + n_out:]
    kw = {"reset": rs_ref[0][...]} if rs_ref else {}
    c = pl.program_id(2)

    @pl.when(c == 0)
    def _():
      ds_scr[...] = dfin_ref[...]
      for scr in dp_scr:
        scr[...] = jnp.zeros_like(scr)

    vals = [ref[...].astype(F32) for ref in refs[:nx]] + [ref[...] for ref in refs[nx:n_in]]
    grads = chunk_backward(*vals, sc_ref[...], sr_ref[...], st_ref[...], do_ref[...].astype(F32), ds_scr[...], **kw)
    for ref, g in zip(grad_refs, grads[:nx]):
      ref[...] = g.astype(ref.dtype)
    dS = grads[nx + npar]
    ds_scr[...] = dS
    for scr, g in zip(dp_scr, grads[nx:nx + npar] + grads[nx + npar + 1:]):
      scr[...] += g

    @pl.when(c == C - 1)
    def _():
      ds0_ref[...] = dS
      for ref, scr in zip(dp_refs, dp_scr):
        ref[...] = scr[...]

  return pl.pallas_call(
    kernel,
    grid=(B, H, C),
    in_specs=[tile] * nx + [param] * npar + [scol, srow, pcs, tile, state] + reset_specs,
    out_specs=[tile] * nx + [state] + [per_head] * npar + [state] * nr,
    out_shape=[jax.ShapeDtypeStruct((B, H, Tp, N), x.dtype) for x in xs] + [jax.ShapeDtypeStruct((B, H, N, N), F32)]
    + [jax.ShapeDtypeStruct((B, H, 1, N), F32)] * npar + [jax.ShapeDtypeStruct((B, H, N, N), F32)] * nr,
    scratch_shapes=[pltpu.VMEM((N, N), F32)] + [pltpu.VMEM((1, N), F32)] * npar + [pltpu.VMEM((N, N), F32)] * nr,
    compiler_params=_compiler_params(),
    interpret=interpret,
    name=name,
  )(*xs, *params, seg[..., None], seg[:, :, None, :], states, d_o, d_final, *resets)


def head_major(x, Tp: int):
  """[B, T, H, N] -> [B, H, Tp, N], zero-padded in time; dtype kept."""
  return jnp.swapaxes(pad_time(x, Tp), 1, 2)


def time_major(x, T: int):
  """[B, H, Tp, N] -> [B, T, H, N] (the first T tokens); dtype kept."""
  return jnp.swapaxes(x, 1, 2)[:, :T]
