"""`pallas_gpu`: WKV-7 on Pallas Mosaic GPU kernels (Hopper, sm_90), forward and backward.

Chunk L = 64 tokens, head dims N = 64 and 128, bf16 inputs, fp32 state. With the chunk algebra of `common` (spec
sections 2.2-2.4), four pieces:

1. `_prep` (Mosaic GPU, chunk-parallel, grid (C, H, B), one warpgroup per 64 channels): per chunk, from r, k, v, a, b
   (bf16, read in the caller's [B, T, H, N] layout) and w (float32), the chunk-local cumulative log-decay G (exact
   tensor-core sums) and the chunk decay, the factors q~, a~, k^, b^ through the middle token, the four intra-chunk
   matrices, T = (I - A_ab)^{-1} by block doubling (`common.unit_lower_inverse`), and writes six bf16 [L, N] tiles
   per chunk, head-major [B, H, T, N]: W = T A0, U_wy = T A_ak V, Qo = Q0 + A_qb W, Ob = A_qb U_wy + A_qk V, Bbar,
   Kbar. Products whose operands are not exact bf16 are "split-bf16 x3" (x = hi + lo; hi hi + hi lo + lo hi, fp32
   accumulation, about 16 significant bits; FLA keeps these in fp32/tf32, jla uses the same x3 trick), except A_qk
   and A_qb, which feed only the outputs (not T): q~ is rounded once to bf16 for them (two passes); V enters as
   exact bf16. Under autodiff it also writes G (float32) and the split T (hi, lo bf16 [B, H, C, L, L]: 2 L^2 bf16
   per chunk) for 4. Its bf16 inputs arrive by TMA into SMEM tiles that are free until they are read (r and a for
   the second time during the inverse), and independent products are issued together (`Mma.scope`): with 2 CTAs
   per SM (255 registers) a warp that waits on a register load from GMEM stalls its SM quarter (Nsight Compute,
   eleventh session: long-scoreboard stalls 2.1 of 6.6 cycles per instruction); at K1 on an H100 `_prep` went
   2.78 / 2.78 -> 2.73 / 2.66 ms (issuing together, two rounds), then 2.64 -> 2.36 ms (TMA inputs;
   docs/benchmarks.md). At N = 128 two warpgroups share a CTA, each with N = 64 tiles of its own: K5 (8, 4096, 16, 128)
   7.53 -> 2.48 ms on an H100 (twelfth session; one warpgroup with N = 128 tiles ran 4 warps per SM).
2. `_state_fwd` (Mosaic GPU, sequential over chunks, grid (V / bv, H, B), one warpgroup): the state S [K, bv]
   in fp32 registers; per chunk, with TMA double-buffered tiles, u = W S + U_wy, o = Qo S + Ob,
   S <- diag(d) S + Bbar^T u + Kbar^T V. S and u enter the tensor cores as split bf16 (hi + lo). Writes o (bf16,
   [B, T, H, N]), the final state and, for the backward, the state entering every chunk and u (both bf16).
3. `_state_bwd` (Mosaic GPU, same grid, chunks in reverse): the state gradient dS [K, bv] in registers,
   dU = Bbar dS, dS <- diag(d) dS + W^T dU + Qo^T dO; writes dS after every chunk and dU (both bf16), and dS0.
4. `gpu_bwd.chunk_grads` (Mosaic GPU, chunk-parallel, grid (C, H, B), one warpgroup per 64-channel K block): the
   input gradients, the math of `common.chunk_backward` per chunk from what 1-3 saved (S, dS', T, Kbar as 2 took it,
   u, dU) and the chunk's recomputed factors and intra-chunk matrices. At K1 (8, 4096, 32, 64) on an H100 it takes
   2.79 ms of device time (seventeenth session; XLA's vmapped `common.chunk_backward` 22.7 ms, thirteenth session;
   docs/benchmarks.md).

Verified on an H100 against a float64 reference (`tests/ops/wkv7_pallas_test.py`: bf16 inputs, resets, slow decays,
T % 64 != 0, N = 64 and 128): every output and gradient <= 5.6e-3 (tenth session, with the bf16 rounding of
`gpu_bwd`'s recomputed factors and matrix gradients; 4.1e-3 before), <= 6.4e-3 over the twelfth session's three
runs (the warpgroups per 64 channels, the state passes' hi tiles). At N = 128 the state passes' V tile is at most
32 (`state_block_v`): with 64 they need more SMEM than an H100 CTA has.

Resets: `segment_ids` -> the per-token segment index inside each chunk (float32 [B, T]); masks as in `common`.
`interpret=True` runs the Mosaic GPU kernels in the Mosaic GPU interpreter (CPU tests).
Tile helpers (layouts, swizzled SMEM, split bf16, tensor-core products) are in `pallas_kernels.mosaic_gpu_tiles`;
the state passes 2 and 3 are `pallas_kernels.mosaic_gpu_state_pass.state_pass` with WKV-7's per-chunk transitions.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.chunking import pad_time, segment_index
from pallas_kernels.mosaic_gpu_state_pass import state_pass
from pallas_kernels.mosaic_gpu_tiles import (
  CHUNK, COL, HEAD_DIMS, ROW, block_v, cols, compiler_params, interpret_params, iota, load, Mma, rows, split,
  store_split, swizzled, unsupported_reason, x2, x3,
)
from pallas_kernels.wkv7 import gpu_bwd

F32 = jnp.float32
BF16 = jnp.bfloat16
L = CHUNK  # tokens per chunk


# ------------------------------------------------------------------------------------------------------------------
# 1. per-chunk preparation
# ------------------------------------------------------------------------------------------------------------------


def _prep(r, k, v, a, b, w, seg, *, save_inverse=False, interpret=False):
  """Six bf16 tiles [B, H, Tp, N]: (wy_w, wy_u, qo, ob, bbar, kbar), see the module docstring, and the chunk decay
  dec [B, H, C, N] float32 (e^{G_last} of chunks without a segment start, else 0); with save_inverse, for the
  backward, also g_pad [B, 1 + Tp, H, N] float32 (row 1 + t: the chunk-local inclusive cumulative log-decay G of
  token t; row 0 is never written: the kernels only read it under a mask) and the split inverse
  T = (I - A_ab)^{-1} of every chunk, (hi, lo) bf16 [B, H, C, L, L] each (`gpu_bwd.chunk_grads` loads both instead of
  rebuilding them).

  r, k, v, a, b: [B, Tp, H, N] bf16, Tp a multiple of L; w [B, Tp, H, N] float32 log-decay (zero-padded); seg
  [B, Tp] float32 segment index inside each chunk.
  One warpgroup per 64 channels (N = 128: two, sharing the CTA's SMEM): each computes its channels' factors and
  outputs from tiles of its own, and the intra-chunk matrices (sums over all N channels) as its channels' share,
  exchanged through SMEM (`all_sum`: the same sum in every warpgroup), so that each builds the same inverse T.
  At N = 128 a CTA thus runs 8 warps as two N = 64 CTAs do (with one warpgroup of N = 128 tiles: 4 warps per SM, and
  `_prep` took 3.6x its K1 time at K5 on an H100, eleventh session).
  G is a tensor-core sum of w split into three bf16 parts (24 bits: w exactly) with the 0/1 lower triangle
  (`_cumsum_matrix`), fp32 accumulation; it replaces an XLA prologue (a cumsum and a copy, 0.66 ms at K1 on an H100).
  G goes to an untiled float32 SMEM tile (N = 128: `all_sum`'s exchange tile, free until the inverse), one row down,
  so that its middle row m, its last row and the chunk sums (for the decay) are row loads and Gm (G one row down, the
  backward's) is a load too: three more tensor-core sums, w's second load and Gm = G - w before (2.31 -> 2.22 ms at
  K1, 2.55 -> 2.47 at K5 on an H100, sixteenth session). At N = 64, G, m and Gm are loaded again after the inverse
  rather than kept live across it (ptxas: spills 532 -> 336 bytes; 2.25 -> 2.11 ms at K1).
  """
  B, Tp, H, N = r.shape
  C = Tp // L
  KB = N // L  # warpgroups, one per 64 channels
  LL = (L, L)  # every tile: L tokens (or L rows of T) x 64 channels
  levels = int(math.log2(L))

  def body(r_ref, k_ref, v_ref, a_ref, b_ref, w_ref, s_ref, tri_ref, ww_ref, wu_ref, qo_ref, ob_ref, bb_ref, kb_ref,
           dec_ref, *refs):
    g_refs, t_refs = refs[:save_inverse], refs[save_inverse:3 * save_inverse]  # g_pad; the (hi, lo) inverse
    tiles, *rest = refs[3 * save_inverse:]
    wg = lax.axis_index("wg")
    v_s, R0, R1, R2, R3, I0, I1, I2, I3, O0, O1 = (tiles.at[wg, i] for i in range(11))
    bar, sums_bar, late_bar = (x.at[wg] for x in rest[:3])
    g_tile = rest[3].at[wg]  # [L + 1, L] float32: G at rows 1..L (row 0 never written: read under a mask)
    exchange = rest[3:5] if KB > 1 else ()  # N = 128: the float32 tiles and the barrier of `all_sum`
    mm = Mma({LL: [rest[-1].at[wg, i] for i in range(4)]} if interpret else None)
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok, ch = pl.ds(c * L, L), pl.ds(wg * L, L)  # the chunk's tokens, the warpgroup's channels
    plgpu.copy_gmem_to_smem(v_ref.at[bi, tok, h, ch], v_s, bar)

    def store_pair(x0, ref0, x1, ref1):  # two bf16 output tiles through the staging tiles O0, O1, by TMA
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the staging tiles' previous stores have read them
      O0[...] = x0
      O1[...] = x1
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(O0, ref0.at[bi, h, tok, ch])
      plgpu.copy_smem_to_gmem(O1, ref1.at[bi, h, tok, ch])

    def all_sum(x):  # x [L, L] float32 summed over the warpgroups (each holds its channels' share)
      if KB == 1:
        return x
      xs, xbar = exchange
      xs.at[wg, pl.ds(1, L)][...] = x
      plgpu.commit_smem()
      plgpu.barrier_arrive(xbar)
      plgpu.barrier_wait(xbar)
      total = x + load(xs.at[1 - wg, pl.ds(1, L)])  # (KB = 2) the same sum in both: float addition commutes
      plgpu.barrier_arrive(xbar)  # both have read before the next exchange writes
      plgpu.barrier_wait(xbar)
      return total

    def G_row(t):  # G's row t (token t) in every row
      return cols(load(g_tile.at[1 + t], COL), LL)

    def seg_rows():  # each row's segment index, in every column: loaded again where used (the masks made from the
      # values loaded once, kept live across the inverse, spilled: 336 -> 296 bytes, 1.95 -> 1.87 ms at K1 on an H100)
      return rows(load(s_ref.at[bi, tok], ROW), LL)

    def first_rows():  # rows of the chunk's first segment (the entering state reaches them)
      return seg_rows() == 0.0

    def G_down():  # Gm, the exclusive prefix sums: G one row down, its first row 0
      return jnp.where(iota(LL, 0) == 0, 0.0, load(g_tile.at[pl.ds(0, L)]))

    with jax.named_scope("sums"):  # regions of the kernel in `mosaic_gpu_tiles.profiled` traces
      # G (inclusive prefix sums of w): the 0/1 lower triangle (TMA) times w in three exact bf16 parts; its middle row
      # m and last row (in every row) are row loads from G in SMEM. The inputs come by TMA into tiles that are free
      # until they are read (k, b: the output staging tiles; a: R3); r and a (again) come later (`late_bar`), so no
      # warp waits on a load from GMEM
      plgpu.copy_gmem_to_smem(tri_ref, I0, sums_bar)
      for src, dst in ((k_ref, O0), (b_ref, O1), (a_ref, R3)):
        plgpu.copy_gmem_to_smem(src.at[bi, tok, h, ch], dst, sums_bar)
      wv = load(w_ref.at[bi, tok, h, ch])
      w_hi = wv.astype(BF16)
      w_rest = wv - w_hi.astype(F32)
      w_mid = w_rest.astype(BF16)
      R0[...], R1[...], R2[...] = w_hi, w_mid, (w_rest - w_mid.astype(F32)).astype(BF16)
      plgpu.commit_smem()
      plgpu.barrier_wait(sums_bar)

      G = mm(LL, [(I0, R) for R in (R0, R1, R2)])
      g_tile.at[pl.ds(1, L)][...] = G
      plgpu.commit_smem()
      mid, last = G_row((L - 1) // 2), G_row(L - 1)
      if save_inverse:
        g_refs[0].at[bi, pl.ds(1 + c * L, L), h, ch][...] = G
    with jax.named_scope("factors"):
      seg_i = load(s_ref.at[bi, tok], ROW)
      seg_j = load(s_ref.at[bi, tok], COL)
      seg_last = s_ref[bi, c * L + L - 1]
      last_rows = rows(seg_i, LL) == seg_last
      chunk_sum = load(g_tile.at[L], ROW)  # G's last row, a channel per column
      dec_ref.at[bi, h, c, ch][...] = jnp.where(seg_last == 0.0, jnp.exp(chunk_sum), 0.0)

      # the left factor a~ = a e^{Gm-m} (split, registers), read from R3 before b^ takes it
      Gm = G_down()
      at = split(load(R3).astype(F32) * jnp.exp(Gm - mid))

      # right factors k^ = k e^{m-G}, b^ = b e^{m-G} (split, SMEM); Bbar, Kbar
      e_out = jnp.exp(mid - G)
      to_end = jnp.exp(last - G)
      kk = load(O0).astype(F32)
      store_split(kk * e_out, R0, R1)
      bv = load(O1).astype(F32)
      store_split(bv * e_out, R2, R3)
      store_pair(jnp.where(last_rows, kk * to_end, 0.0).astype(BF16), kb_ref,
                 jnp.where(last_rows, bv * to_end, 0.0).astype(BF16), bb_ref)
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # O0, O1 are read: r and a arrive there during the inverse
      for src, dst in ((r_ref, O0), (a_ref, O1)):
        plgpu.copy_gmem_to_smem(src.at[bi, tok, h, ch], dst, late_bar)

    with jax.named_scope("a_rows"):
      ri, ci = iota(LL, 0), iota(LL, 1)
      same = rows(seg_i, LL) == cols(seg_j, LL)
      strict = same & (ri > ci)

      # T = (I - A_ab)^{-1}: block doubling, D <- D + (D A_off) D, with A_off the level's off-diagonal blocks of A_ab.
      # D is block diagonal (blocks of 2^shift), so D A_off is D A_ab masked to those blocks: A_ab is stored once.
      def a_rows(issue, read):  # A_ab first (the inverse waits for it); A_ak runs meanwhile
        issue(0, x3(at, (R2.T, R3.T)))
        issue(1, x3(at, (R0.T, R1.T)))
        A_ab = jnp.where(strict, all_sum(read(0)), 0.0)
        D = jnp.where(ri == ci, 1.0, 0.0) + jnp.where(((ri >> 1) == (ci >> 1)) & (ri != ci), A_ab, 0.0)
        store_split(A_ab, I0, I1)
        return D, jnp.where(strict, all_sum(read(1)), 0.0)

      D, A_ak = mm.scope([LL, LL], a_rows)

    with jax.named_scope("inverse"):
      def doubling(shift, D):  # one loop body (so the code is fetched once)
        off = ((ri >> (shift + 1)) == (ci >> (shift + 1))) & ((ri >> shift) != (ci >> shift))
        store_split(D, I2, I3)
        plgpu.commit_smem()
        P = jnp.where(off, mm(LL, x3(split(D), (I0, I1))), 0.0)
        return D + mm(LL, x3(split(P), (I2, I3)))

      D = lax.fori_loop(1, levels, doubling, D)
      Ts = split(D)
      if save_inverse:  # staged in I0, I1 (free from here on); every warpgroup holds the same T: the first stores it
        I0[...], I1[...] = Ts
        plgpu.commit_smem()

        @pl.when(wg == 0)
        def _():
          for t_ref, t_s in zip(t_refs, (I0, I1)):
            plgpu.copy_smem_to_gmem(t_s, t_ref.at[bi, h, c])

    with jax.named_scope("q_rows"):
      # q rows: A_qk, A_qb (r and a from O0, O1 into registers before the outputs' staging takes them)
      plgpu.barrier_wait(late_bar)
      if KB == 1:  # (N = 128: G's tile is `all_sum`'s exchange tile since the inverse)
        G, mid = load(g_tile.at[pl.ds(1, L)]), G_row((L - 1) // 2)
      rv = load(O0).astype(F32)
      av = load(O1).astype(F32)
      qt = (rv * jnp.exp(G - mid)).astype(BF16)  # rounded once (A_qk, A_qb feed only the outputs, not T)
      q0 = jnp.where(first_rows(), rv * jnp.exp(G), 0.0)

      def q_rows(issue, read):
        issue(0, x2(qt, (R0.T, R1.T)))
        issue(1, x2(qt, (R2.T, R3.T)))
        incl = (seg_rows() == cols(load(s_ref.at[bi, tok], COL), LL)) & (ri >= ci)
        return [jnp.where(incl, all_sum(read(i)), 0.0) for i in range(2)]

      A_qk, A_qb = mm.scope([LL, LL], q_rows)

    with jax.named_scope("wy"):
      # WY: W = T A0, U_wy = T (A_ak V)
      if KB == 1:
        Gm = G_down()
      store_split(jnp.where(first_rows(), av * jnp.exp(Gm), 0.0), R0, R1)
      plgpu.commit_smem()
      plgpu.barrier_wait(bar)  # v is in SMEM
      ak = split(A_ak)

      def wy(issue, read):  # A_ak V first (U waits for it), W meanwhile
        issue(0, [(ak[0], v_s), (ak[1], v_s)])
        issue(1, x3(Ts, (R0, R1)))
        store_split(read(0), R2, R3)
        plgpu.commit_smem()
        issue(2, x3(Ts, (R2, R3)))
        return read(1), read(2)

      W, U = mm.scope([LL] * 3, wy)
      store_pair(W.astype(BF16), ww_ref, U.astype(BF16), wu_ref)

    with jax.named_scope("outputs"):
      # outputs: Qo = Q0 + A_qb W, Ob = A_qb U_wy + A_qk V
      store_split(W, R0, R1)
      store_split(U, R2, R3)
      plgpu.commit_smem()
      qb, qk = split(A_qb), split(A_qk)

      def outputs(issue, read):
        issue(0, x3(qb, (R0, R1)))
        issue(1, x3(qb, (R2, R3)) + [(qk[0], v_s), (qk[1], v_s)])
        return q0 + read(0), read(1)

      qo, ob = mm.scope([LL, LL], outputs)
      store_pair(qo.astype(BF16), qo_ref, ob.astype(BF16), ob_ref)
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # (the CTA may exit while its last stores land)

  # per warpgroup: v, R0-R3, I0-I3 and the output staging tiles O0, O1 (11 tiles of 8 KiB), three TMA barriers (v,
  # the sums' operands, r and a late) and G's untiled float32 tile (16 KiB: 106 KiB per CTA at N = 64, two CTAs per
  # SM); N = 128: G's tiles are also the exchange tiles of `all_sum`, with their barrier
  scratch = [swizzled((KB, 11, L, L))] + [plgpu.Barrier(num_arrivals=n, num_barriers=KB) for n in (1, 4, 2)]
  scratch += [plgpu.SMEM((KB, L + 1, L), F32)]
  if KB > 1:
    scratch += [plgpu.Barrier(num_arrivals=KB)]
  if interpret:
    scratch += [swizzled((KB, 4, L, L))]  # `Mma`'s staging of register lhs operands
  out = jax.ShapeDtypeStruct((B, H, Tp, N), BF16)
  dec = jax.ShapeDtypeStruct((B, H, C, N), F32)
  g_pad = jax.ShapeDtypeStruct((B, 1 + Tp, H, N), F32)
  inverse = jax.ShapeDtypeStruct((B, H, C, L, L), BF16)
  out_type = (out,) * 6 + (dec,) + ((g_pad,) + (inverse,) * 2 if save_inverse else ())
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"), num_threads=KB,
                      thread_name="wg", scratch_types=tuple(scratch), compiler_params=compiler_params(False),
                      interpret=interpret_params(interpret), kernel_name="wkv7_prep")
  return kern(r, k, v, a, b, w, seg, _cumsum_matrix())


def _cumsum_matrix():
  """[L, L] bf16 0/1, the inclusive lower triangle (G = tri w), fetched by `_prep` into SMEM by TMA."""
  i, j = jnp.arange(L)[:, None], jnp.arange(L)[None, :]
  return (i >= j).astype(BF16)


# ------------------------------------------------------------------------------------------------------------------
# 2. forward state pass
# ------------------------------------------------------------------------------------------------------------------


def _state_fwd(ww, wu, qo, ob, bb, kb, v, dec, h0, *, bv: int, save: bool, interpret=False):
  """o [B, Tp, H, N] bf16, final [B, H, N, N] f32 and, if `save` (for the backward), the entering states
  [B, H, C, N, N] bf16 and u = W S + U_wy [B, H, Tp, N] bf16 of every chunk.

  ww, wu, qo, ob, bb, kb: [B, H, Tp, N] bf16 (from `_prep`); v [B, Tp, H, N] bf16; dec [B, H, C, N] f32;
  h0 [B, H, N, N] f32."""
  mm = Mma(None)  # every left operand is an SMEM tile

  def transition(S, k, v, extra, emit):  # u = W S + U_wy, o = Qo S + Ob; S <- diag(d) S + Bbar^T u + Kbar^T V
    (ww_s, qo_s, bb_s, kb_s), (wu_s, ob_s, v_s), (U_hi, U_lo) = k, v, extra
    u = load(wu_s).astype(F32) + mm((L, bv), x2(ww_s, S))
    emit(load(ob_s).astype(F32) + mm((L, bv), x2(qo_s, S)))
    store_split(u, U_hi, U_lo)
    plgpu.commit_smem()
    if save:
      emit(U_hi, 0)  # bf16(u)
    return [(bb_s.T, U_hi), (bb_s.T, U_lo), (kb_s.T, v_s)]

  return state_pass(transition, (ww, qo, bb, kb), (wu, ob), (v,), dec, h0, L=L, bv=bv, reverse=False, save=save,
                    with_output=True, tile_outs=int(save), scratch=(swizzled((L, bv)), swizzled((L, bv))),
                    name="wkv7_state_fwd", interpret=interpret)


# ------------------------------------------------------------------------------------------------------------------
# 3. backward state pass
# ------------------------------------------------------------------------------------------------------------------


def _state_bwd(ww, qo, bb, d_o, dec, d_final, *, bv: int, interpret=False):
  """(dS after each chunk [B, H, C, N, N] bf16, dS0 [B, H, N, N] f32, dU = Bbar dS of each chunk [B, H, Tp, N] bf16).

  ww, qo, bb: [B, H, Tp, N] bf16; d_o [B, Tp, H, N] bf16; dec [B, H, C, N]; d_final [B, H, N, N] f32."""
  mm = Mma(None)  # every left operand is an SMEM tile

  def transition(dS, k, v, extra, emit):  # dU = Bbar dS; dS <- diag(d) dS + W^T dU + Qo^T dO
    (ww_s, qo_s, bb_s), (do_s,), (E_hi, E_lo) = k, v, extra
    dU = mm((L, bv), x2(bb_s, dS))
    store_split(dU, E_hi, E_lo)
    plgpu.commit_smem()
    emit(E_hi, 0)  # bf16(dU)
    return [(ww_s.T, E_hi), (ww_s.T, E_lo), (qo_s.T, do_s)]

  ds0, d_states, du = state_pass(transition, (ww, qo, bb), (), (d_o,), dec, d_final, L=L, bv=bv, reverse=True,
                                 save=True, with_output=False, tile_outs=1,
                                 scratch=(swizzled((L, bv)), swizzled((L, bv))), name="wkv7_state_bwd",
                                 interpret=interpret)
  return d_states, ds0, du


# ------------------------------------------------------------------------------------------------------------------
# glue: custom_vjp, backend
# ------------------------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _wkv7(r, w, k, v, a, b, s0, seg, interpret):
  return _wkv7_fwd(r, w, k, v, a, b, s0, seg, interpret, save=False)[0]


def state_block_v(B, H, N):
  """The V-tile width of WKV-7's state passes (`block_v`): at most 32 at N = 128, where bv 64 needs more SMEM than
  an H100 CTA has (lowered: 239632 bytes forward, 263184 saving the states, against 232448)."""
  return block_v(B, H, N, widest=32 if N == 128 else 64)


def _wkv7_fwd(r, w, k, v, a, b, s0, seg, interpret, save=True):
  B, T, H, N = r.shape
  C = seg.shape[1]
  Tp = C * L
  xs = [pad_time(x.astype(BF16), Tp) for x in (r, k, v, a, b)]
  ww, wu, qo, ob, bb, kb, dec, *saved = _prep(*xs, pad_time(w.astype(F32), Tp), seg.reshape(B, Tp),
                                              save_inverse=save, interpret=interpret)
  bv = state_block_v(B, H, N)
  outs = _state_fwd(ww, wu, qo, ob, bb, kb, xs[2], dec, s0, bv=bv, save=save, interpret=interpret)
  o, final = outs[0][:, :T], outs[1]
  if not save:
    return (o.astype(r.dtype), final), None
  g_pad, *inverse = saved
  return (o.astype(r.dtype), final), (r, g_pad, k, v, a, b, seg, outs[2], outs[3], ww, qo, bb, kb, dec, inverse)


def _wkv7_bwd(interpret, res, cts):
  r, g_pad, k, v, a, b, seg, states, u, ww, qo, bb, kb, dec, inverse = res
  d_o, d_final = cts
  B, T, H, N = r.shape
  C = seg.shape[1]
  Tp = C * L
  bv = state_block_v(B, H, N)
  d_o_p = pad_time(d_o.astype(BF16), Tp)
  d_states, ds0, du = _state_bwd(ww, qo, bb, d_o_p, dec, d_final.astype(F32), bv=bv, interpret=interpret)
  xs = [pad_time(x.astype(BF16), Tp) for x in (r, k, v, a, b)]
  dtypes = [r.dtype, F32, k.dtype, v.dtype, a.dtype, b.dtype]  # w is float32 here (`wkv7_pallas_gpu`)
  grads = gpu_bwd.chunk_grads(*xs, g_pad, seg.reshape(B, Tp), dec, states, d_o_p, d_states, *inverse, kb, u, du, dtypes,
                              interpret=interpret)
  return tuple(g[:, :T] for g in grads) + (ds0, None)


_wkv7.defvjp(_wkv7_fwd, _wkv7_bwd)


def wkv7_pallas_gpu(r, w, k, v, a, b, initial_state, segment_ids, reset_state=None, *, interpret: bool = False):
  """The `pallas_gpu` backend; see `rwkvjax.ops.wkv7` for the contract.

  r, k, v, a, b are used as bf16 (cast if not), w as float32 (cumulated in float32); state float32; o in the dtype of
  r. Calls the kernels cannot run (no Hopper GPU, head dim not in HEAD_DIMS) run the `chunked` backend instead.
  interpret: run the Mosaic GPU kernels in the Mosaic GPU interpreter (CPU tests).
  reset_state: not supported (segments restart from zero); a non-None one raises NotImplementedError.
  """
  if reset_state is not None:
    raise NotImplementedError("pallas_gpu does not support reset_state; use impl='chunked' (or 'auto')")
  reason = unsupported_reason(r, HEAD_DIMS, interpret)
  if reason is not None:
    from rwkvjax.ops.chunked import wkv7_chunked  # noqa: PLC0415

    return wkv7_chunked(r, w, k, v, a, b, initial_state, segment_ids)
  B, T, H, N = r.shape
  s0 = jnp.zeros((B, H, N, N), F32) if initial_state is None else initial_state.astype(F32)
  seg = segment_index(segment_ids, B, T, L)
  return _wkv7(r, w.astype(F32), k, v, a, b, s0, seg, interpret)  # dw: float32, cast back by autodiff
