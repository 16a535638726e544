"""The sequential state pass of the Mosaic GPU kernels (`pallas_kernels.wkv7.gpu`, `pallas_kernels.wkv56.gpu`).

One kernel builder for both ops' forward state pass and backward state-gradient pass: grid (N / bv, H, B) (names
"v", "h", "b"), one warpgroup per CTA, the state S [K, bv] (float32) in registers, walked over the C chunks of L
tokens (in reverse for the backward) with TMA double-buffered SMEM tiles. Each op supplies the per-chunk transition:
from the state (split into two bf16 SMEM tiles, hi + lo) and the chunk's tiles, the tensor-core products P such that
the next state is diag(dec) S + sum(lhs @ rhs for lhs, rhs in P), and, in a forward pass, the chunk's output rows; it
may also emit per-chunk tiles for the backward (WKV-7's u and dU) from SMEM tiles of its own. The saved states are
stored from the split's hi tile (bf16(S)) and those tiles from the transition's own, so no staging tile holds a copy:
WKV-7's backward pass at K1's bv 64 fits two CTAs per H100 SM (99344 bytes of SMEM; 115728 with staging tiles).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic_gpu_tiles import (
  ROW, Mma, compiler_params, interpret_params, load, rows, store_split, swizzled,
)

F32 = jnp.float32
BF16 = jnp.bfloat16

__all__ = ["state_pass"]


def state_pass(transition: Callable, k_tiles, v_tiles, tok_tiles, dec, s0, *, L: int, bv: int, reverse: bool,
               save: bool, with_output: bool, tile_outs: int = 0, scratch=(), name: str, interpret: bool = False):
  """Runs a state pass; returns the tuple (o if with_output, final, states if save, *tiles).

  k_tiles: [B, H, Tp, N] bf16 arrays (Tp = C * L) whose chunk tiles enter whole ([L, N], the key side);
  v_tiles: [B, H, Tp, N] bf16 arrays whose chunk tiles enter at the CTA's bv value columns ([L, bv]);
  tok_tiles: [B, Tp, H, N] bf16 arrays (token-major: v, dO) entering at the value columns ([L, bv]);
  dec: [B, H, C, N] float32 per-chunk decay of the state's key rows; s0: [B, H, N, N] float32, the state entering
  the walk (before chunk 0, or after chunk C - 1 when `reverse`).
  transition(S, k, v, extra, emit) -> P: S the (hi, lo) bf16 SMEM tiles [N, bv] of the float32 state (split,
  committed); k, v this chunk's SMEM tiles (tuples in the order of k_tiles, and of v_tiles then tok_tiles); extra
  the refs of `scratch` (SMEM types the transition needs); emit(x) writes x [L, bv] float32 (registers) as the
  chunk's output rows (only with `with_output`), emit(tile, i) the bf16 SMEM tile [L, bv] `tile` (written and
  committed, unchanged until the next chunk's transition) as the chunk's rows of tile output i < tile_outs.
  Outputs: o [B, Tp, H, N] bf16; final [B, H, N, N] float32, the state after the walk; states [B, H, C, N, N]
  bf16, the state at the start of each chunk's step (entering chunk n, or after chunk n when `reverse`); tiles:
  `tile_outs` arrays [B, H, Tp, N] bf16 (head-major, like k_tiles) of what the transition emitted.
  """
  B, H, C, N = dec.shape
  Tp = C * L
  KV = (N, bv)
  nk, nv = len(k_tiles), len(v_tiles) + len(tok_tiles)
  n_in, n_out = nk + nv + 2, int(with_output) + 1 + int(save) + tile_outs
  mm = Mma(None)  # every left operand of the update is an SMEM tile
  chunk = (lambda i: C - 1 - i) if reverse else (lambda i: i)

  def body(*refs):
    ins, outs, scr = refs[:n_in], refs[n_in:n_in + n_out], refs[n_in + n_out:]
    k_refs, v_refs, tok_refs = ins[:nk], ins[nk:nk + len(v_tiles)], ins[nk + len(v_tiles):nk + nv]
    dec_ref, s0_ref = ins[nk + nv:]
    o_ref = outs[0] if with_output else None
    fin_ref = outs[int(with_output)]
    st_ref = outs[int(with_output) + 1] if save else None
    tile_refs = outs[n_out - tile_outs:]
    k_s, v_s, dec_s = scr[:nk], scr[nk:nk + nv], scr[nk + nv]
    S_split = scr[nk + nv + 1:nk + nv + 3]  # the state's (hi, lo) bf16 tiles
    out_s = scr[nk + nv + 3] if with_output else None  # the output rows' staging tile for their TMA store
    extra, bars = scr[nk + nv + 3 + int(with_output):-1], scr[-1]
    vt, h, bi = lax.axis_index("v"), lax.axis_index("h"), lax.axis_index("b")
    vcols = pl.ds(vt * bv, bv)

    def fetch(n, slot):
      tok = pl.ds(n * L, L)
      bar = bars.at[slot]
      srcs = ([x.at[bi, h, tok] for x in k_refs] + [x.at[bi, h, tok, vcols] for x in v_refs]
              + [x.at[bi, tok, h, vcols] for x in tok_refs] + [dec_ref.at[bi, h, n]])
      for src, dst in zip(srcs, k_s + v_s + (dec_s,)):
        plgpu.copy_gmem_to_smem(src, dst.at[slot], bar)

    fetch(chunk(0), 0)
    s_in = load(s0_ref.at[bi, h, :, vcols])

    def step(i, S):
      n = chunk(i)
      slot = lax.rem(i, 2)

      @pl.when(i + 1 < C)
      def _():
        fetch(chunk(i + 1), 1 - slot)

      def emit(x, i=None):  # TMA stores, waited for at the next chunk's step
        rows_n = pl.ds(n * L, L)
        if i is None:  # registers -> the staging tile -> o
          out_s[...] = x.astype(BF16)
          plgpu.commit_smem()
          plgpu.copy_smem_to_gmem(out_s, o_ref.at[bi, rows_n, h, vcols])
        else:  # the transition's own SMEM tile -> tile output i
          plgpu.copy_smem_to_gmem(x, tile_refs[i].at[bi, h, rows_n, vcols])

      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous chunk's stores have read their SMEM tiles
      store_split(S, *S_split)
      plgpu.commit_smem()
      if save:  # bf16(S) is the split's hi tile
        plgpu.copy_smem_to_gmem(S_split[0], st_ref.at[bi, h, n, :, vcols])
      plgpu.barrier_wait(bars.at[slot])
      pairs = transition(S_split, tuple(x.at[slot] for x in k_s), tuple(x.at[slot] for x in v_s), extra, emit)
      d = rows(load(dec_s.at[slot], ROW), KV)
      return S * d + mm(KV, pairs)

    S = lax.fori_loop(0, C, step, s_in)
    fin_ref.at[bi, h, :, vcols][...] = S
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # (the CTA may exit while its last stores land)

  sw = min(2 * bv, 128)  # the swizzle of a bv-wide bf16 row: the K-side tiles must match it
  scratch_types = ([swizzled((2, L, N), swizzle=sw) for _ in range(nk)] + [swizzled((2, L, bv)) for _ in range(nv)]
                   + [plgpu.SMEM((2, N), F32), swizzled(KV), swizzled(KV)] + [swizzled((L, bv))] * with_output
                   + [*scratch, plgpu.Barrier(num_arrivals=nk + nv + 1, num_barriers=2)])
  out = ([jax.ShapeDtypeStruct((B, Tp, H, N), BF16)] if with_output else []) + [jax.ShapeDtypeStruct((B, H, N, N), F32)]
  if save:
    out.append(jax.ShapeDtypeStruct((B, H, C, N, N), BF16))
  out += [jax.ShapeDtypeStruct((B, H, Tp, N), BF16)] * tile_outs
  kern = plgpu.kernel(body, out_type=tuple(out), grid=(N // bv, H, B), grid_names=("v", "h", "b"),
                      scratch_types=tuple(scratch_types), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name=name)
  return kern(*k_tiles, *v_tiles, *tok_tiles, dec, s0)
