"""The chunk-parallel input gradients of `pallas_gpu` WKV-6 (and WKV-5) as one Mosaic GPU kernel (Hopper, sm_90).

`chunk_grads` computes, for every chunk of L = 64 tokens, the gradients dr, dw, dk, dv and the chunk's share of du
given the state S entering the chunk (saved by the forward state pass) and the state gradient dS' after it (from the
backward state pass): the math of `common.chunk_backward` without a reset state, the VJP of `common.chunk_forward`
with S held fixed (dS0 comes from the state pass). It recomputes the chunk's forward terms level by level with the
numerics of `gpu._prep`: the exponent sums E_h, F_h of every pair level as products of a 0/1 block-triangular
matrix (SMEM) with w split into two bf16 halves (fp32 accumulation, about 16 significant bits, so the decays stay
exact to that), the level factors P_h = r e^{E_h}, Q_h = k e^{F_h} rounded once to bf16 (as fla's kernels round
theirs), A^T's level products one bf16 pass, dr's and dk's two passes of the split dA_h (hi, lo) with the bf16
factors, and two passes (hi, lo) wherever one operand is exact bf16 (r, k, v, dO, states, 0/1 matrices).
Precision: the bf16 factors give the pair terms relative errors of about 2^-9, the size of the bf16 rounding of the
outputs; dw's regrouping (below) cancels X against Y, whose pair terms carry different roundings (Q's in X, P's in
Y), so dw's error is about twice the others'. Against float64 on an H100 (ninth session, ten cases) dw <= 6.1e-3,
the others <= 4.1e-3; in the Mosaic GPU interpreter over 24 cases dw max 4.9e-3 (mean 3.5e-3), against 2.5e-3 (1.4e-3)
with split-bf16 "x3" factors (hi hi + hi lo + lo hi, about 16 bits), which cost about 0.5 ms more at K1 on an H100
(chunk_grads 4.06 .. 4.24 against 3.46 .. 4.06 ms over four alternating rounds).

Per pair level h (pairs t > s of one segment, t in the right and s in the left half of an aligned 2h block):
    dA_h = M_h (dO V^T),  dP_h = dA_h Q_h,  dQ_h = dA_h^T P_h,
    dr += dP_h e^{E_h},  dk += dQ_h e^{F_h},  A^T += M_h^T (Q_h P_h^T)      (M_h: the level's pair mask)
and the chunk level: dQo = [first] dO S^T, dKbar = [last] V dS'^T, dv = Kbar dS' + A^T dO (A with the bonus on its
diagonal). The log-decay gradient is regrouped as in `pallas_kernels.wkv7.gpu_bwd`: the decay e^{Λ(s+1..t-1)} of a
pair (t, s) depends on w_j for s < j < t, so with the per-channel sums X = r (dr_pairs + dQo e_in) (pairs and the
state readout, by their later token t), Y = k dk_pairs (pairs, by their earlier token s) and Z = Kbar dKbar
    dw = U (X - Y) - Y + D Z + J (diag(dec) S o dS')^T      (U[j, t] = [t > j], D[j, s] = [s < j], J [L, N] ones)
(the last term is dec * diag(dS' S^T) in every row). These three x2 products replace the two per level of
`chunk_backward` (upper_h (dP P) + lower_h (dQ Q)): the pairs with j <= s are in both sums of U (X - Y) - Y and
cancel (every term is r, k, dA times factors <= 1, so the cancellation is of the size of the gradients themselves,
never of exponentials). The three share one accumulator (a chain of 6 products, every lhs an SMEM tile).
All sums in the kernel are row sums (inside warps): column sums go through products (the last dw term, and du as
(d_bonus r k)^T ones), so Pallas reserves no SMEM for cross-warp reductions (`compiler_params(cross_warp_sums=False)`).

Grid (C, H, B), one warpgroup per CTA, head dims N = 64 and 128. All tiles are 64 rows; the K dimension (key
channels, state rows) goes by 64-wide blocks kb: w, r, k and the level factors by 64-column blocks, S and dS' by
64-row blocks, and dr, dw, dk, du are computed and written by 64-column blocks, the level loop (dA recomputed) once
per block; A^T [L, L] accumulates over the blocks and dv [L, N] is computed last, recomputing Kbar per block.
Slot plan (bf16 SMEM):
  W [L, 64] x2   w of block kb (hi, lo); at the chunk level d_bonus r k for du; w again for dv's Kbar
  P, Q [L, 64] x2 each   the level factors (level 1: r and k in the hi tiles; bf16, one tile each) and, in the lo
                         tiles, DA = dO V^T over the same-segment pairs t > s (hi in P's, lo in Q's), written once per
                         K block; at the chunk level X - Y and Z
  M0, M1 [L, L]  the in-block lower / upper 0/1 triangles of a level, by TMA from a [7, 2, L, L] constant (the next
                 level's fetched once the current one's exponent products are done); the chunk level leaves D in
                 M0, U in M1
  Sx, Dx [64, N] x2 each   r and k (TMA, in the second tile of each; r fetched again per K block) for the level
                           loop, and in the first tiles DA's transpose V dO^T (hi in Sx's, lo in Dx's); at the chunk
                           level rows kb of S and dS' (bf16, as saved by the state passes, in the first tile of each);
                           then dec S o dS' (hi, lo) in Sx and ones in Dx's first tile
  v, dO [L, N]   (TMA, exact bf16)
  N = 64:  14 tiles of 8 KiB = 112 KiB per CTA (and three 8-byte barriers: inputs, the triangles, and r's refetch,
           which only N = 128 uses), so two CTAs fit on an H100 SM;
  N = 128: 160 KiB, one CTA per SM
(tests/ops/wkv56_pallas_test.py checks the N = 64 figure through Mosaic GPU's lowering). Register lhs operands are
data (the split dA_h, A^T and Kbar), never iota-built masks (see `Mma`); register->SMEM stores are committed before
the products that read them. Registers: the level loop holds A^T, dr_pairs and dk_pairs (three 64 x 64 fp32
values) and the same-segment mask (loaded once: reloading it at every level cost 0.4 ms at K1 on an H100) plus
e^{E_h}, e^{F_h}, the split dA_h (DA's tiles loaded and masked by the level: masking commutes with the split) and a
product, about seven at most; not yet measured.
Tensor-core products per chunk in units of 64 x 64 x 64 (two passes counted as 2), at N = 64: 2 for DA and its
transpose, 5 for the first pair level, 9 for each of the five others (E, F 4; A^T 1; dr, dk 4), 14 for the chunk
level (E, F 4; dQo, dKbar 2; dw 6; du 2) and 6 for dv (Kbar recomputed 2, A^T dO 2, Kbar dS' 2): 72. At N = 128:
176 (the level loop runs per K block, and DA, dQo, dKbar, dw's last term and du contract over or produce 128).
Recomputing dA_h and dA_h^T by two products per level instead (82 units at N = 64, tenth session's parent commit)
was slower on an H100 at K2 over two alternating rounds: chunk_grads 3.04 / 2.91 against 2.76 / 2.85 ms (the
results are bit-identical in the interpreter).

Checked in the Mosaic GPU interpreter (tests/ops/wkv56_pallas_test.py: against `common.chunk_backward` in float32,
relative errors ~2e-3 and dw ~3e-3 from the bf16 factors (one run: dr 1.9e-3, dw 3.2e-3), resets, slow and extreme
decays, N = 64 and 128; and through the backend's gradients
against the float32 reference), by lowering to Mosaic GPU, and on an H100 against float64 (`-k float64`).
"""

from __future__ import annotations

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic_gpu_tiles import (
  CHUNK, COL, HEAD_DIMS, ROW, cols, compiler_params, interpret_params, iota, load, Mma, rows, split, store_split,
  swizzled, transposed, x2,
)
from pallas_kernels.wkv56 import common

F32 = jnp.float32
BF16 = jnp.bfloat16
L = CHUNK  # tokens per chunk
LEVELS = L.bit_length() - 1  # pair levels of the hierarchy (h = 1 .. L/2); block size L is the chunk level

__all__ = ["chunk_grads", "level_triangles", "HEAD_DIMS"]


def chunk_grads(r, k, v, w, u, seg, dec, states, d_o, d_states, out_dtypes, *, interpret=False):
  """(dr, dw, dk, dv), each [B, Tp, H, N] in `out_dtypes` (a sequence of four dtypes), and du [B, H, C, N] float32,
  every chunk's share of the bonus gradient (the caller sums it).

  r, k, v, d_o: [B, Tp, H, N] bf16 (Tp a multiple of L); w [B, Tp, H, N] float32 log-decay (zero-padded);
  u [H, N] float32; seg [B, Tp] float32 segment index inside each chunk; dec [B, H, C, N] float32 chunk decay (0 for
  chunks with a segment start); states [B, H, C, N, N] bf16 the state entering each chunk; d_states
  [B, H, C, N, N] bf16 the state gradient after each chunk."""
  B, Tp, H, N = r.shape
  if N not in HEAD_DIMS:
    raise ValueError(f"chunk_grads: head dim {N} not in {HEAD_DIMS}")
  C = Tp // L
  LN, LL, KB = (L, N), (L, L), N // L  # KB: 64-wide blocks of the K (key channel / state row) dimension

  def body(r_ref, k_ref, v_ref, w_ref, u_ref, s_ref, dec_ref, st_ref, do_ref, dst_ref, tri_ref,
           dr_ref, dw_ref, dk_ref, dv_ref, du_ref, narrow, tri, wide, v_s, do_s, bar, r_bar, mask_bar, *stage):
    W, P, Q = ((narrow.at[i], narrow.at[i + 1]) for i in (0, 2, 4))  # [L, 64] (hi, lo) pairs
    M0, M1 = tri.at[0], tri.at[1]  # [L, L] 0/1 matrices
    Sx, Dx = (wide.at[0], wide.at[1]), (wide.at[2], wide.at[3])  # rows kb of S and dS' [64, N]; (hi, lo) pairs
    mm = Mma({LL: list(stage)} if interpret else None)  # register lhs operands go through `stage` when interpreted
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok = pl.ds(c * L, L)
    # v, dO, and r, k into the lo tiles of Sx, Dx (free until the chunk level; Dx's stays free, so k stays there, and
    # r is fetched again for each later K block), so the level loop reads r and k from SMEM
    for src, dst in ((v_ref, v_s), (do_ref, do_s), (r_ref, Sx[1]), (k_ref, Dx[1])):
      plgpu.copy_gmem_to_smem(src.at[bi, tok, h], dst, bar)

    def ks(kb):  # the K columns of block kb (None: all)
      return slice(None) if kb is None else pl.ds(kb * L, L)

    def inp(ref, kb=None):  # token rows of the chunk, float32
      return load(ref.at[bi, tok, h, ks(kb)]).astype(F32)

    def out(ref, x, kb):
      ref.at[bi, tok, h, ks(kb)][...] = x.astype(ref.dtype)

    def r_blk(kb):  # columns kb of r (bf16, from SMEM)
      return Sx[1].at[:, ks(kb)][...]

    def k_blk(kb):  # columns kb of k
      return Dx[1].at[:, ks(kb)][...]

    def state(ref, kb):  # rows kb of S or dS' [64, N]
      return load(ref.at[bi, h, c, ks(kb)])

    def u_cols(kb):  # u over the columns of block kb [L, 64]
      return cols(load(u_ref.at[h, ks(kb)], COL), LL)

    # masks are rebuilt where they are used (cheap loads and iotas) rather than kept live
    def seg_rows():
      return rows(load(s_ref.at[bi, tok], ROW), LL)

    def first():  # rows that see the entering state
      return seg_rows() == 0.0

    def last():  # rows of the chunk's last segment
      return seg_rows() == s_ref[bi, c * L + L - 1]

    def diagonal():
      return iota(LL, 0) == iota(LL, 1)

    same = seg_rows() == cols(load(s_ref.at[bi, tok], COL), LL)  # (symmetric) loaded once, kept for the level loop

    def token_grids(transposed):  # (t, s): rows t, columns s (transposed, as in A^T: rows s, columns t)
      ri, ci = iota(LL, 0), iota(LL, 1)
      return (ci, ri) if transposed else (ri, ci)

    def ordered(transposed=False):  # same-segment pairs t > s
      t, s = token_grids(transposed)
      return same & (t > s)

    def level_pairs(shift, transposed=False):  # t and s in different halves of one aligned block of 2^(shift + 1)
      t, s = token_grids(transposed)
      return ((t >> (shift + 1)) == (s >> (shift + 1))) & ((t >> shift) != (s >> shift))

    def pairs(shift, transposed=False):  # the pair mask of level 2^shift
      return ordered(transposed) & level_pairs(shift, transposed)

    def fetch_masks(shift):  # the in-block lower / upper 0/1 triangles of blocks of 2^shift into M0, M1 (TMA; the
      # products that read the previous ones must be done)
      plgpu.copy_gmem_to_smem(tri_ref.at[shift], tri, mask_bar)

    def exponents(shift, fetch_next=True):  # (E, F) [L, 64] of block kb (in W): in-block exclusive prefix / suffix
      # sums of w; then fetches the next level's triangles (not after the chunk level: its D, U stay for dw and dv)
      plgpu.barrier_wait(mask_bar)
      E, F = mm(LL, x2(M0, W)), mm(LL, x2(M1, W))
      if fetch_next:
        fetch_masks(shift + 1)
      return E, F

    DA = (P[1], Q[1])  # dO V^T over the same-segment pairs t > s, split (free tiles until the chunk level)
    DAT = tuple(x[0].at[:, :L] for x in (Sx, Dx))  # its transpose V dO^T (rows s, columns t), split

    def put_pair_grads():  # DA and DAT, once per K block (the chunk level overwrites their tiles); committed by the
      # caller
      store_split(jnp.where(ordered(), mm(LL, [(do_s, v_s.T)]), 0.0), *DA)
      store_split(jnp.where(ordered(True), mm(LL, [(v_s, do_s.T)]), 0.0), *DAT)

    def d_attn(shift, transposed=False):  # dA_h = M_h (dO V^T) (transposed: dA_h^T from DAT), split: the halves of DA
      # masked by the level (masking commutes with the split)
      m = level_pairs(shift, transposed)
      return tuple(jnp.where(m, load(x), jnp.zeros((), BF16)) for x in (DAT if transposed else DA))

    def put_block(kb):  # w, r and k of block kb: w split into W, r into P's and k into Q's hi tile (level 1)
      store_split(inp(w_ref, kb), *W)
      P[0][...] = r_blk(kb)
      Q[0][...] = k_blk(kb)
      plgpu.commit_smem()

    plgpu.barrier_wait(bar)  # v, dO, r and k are in SMEM
    # the bonus A_tt = r_t . u . k_t and its cotangent dO_t . v_t (ROW layout, over all N)
    f32 = lambda tile: tile[...].astype(F32)  # noqa: E731
    bonus = jnp.sum(f32(Sx[1]) * cols(load(u_ref.at[h], COL), LN) * f32(Dx[1]), axis=1)
    d_bonus_row = jnp.sum(f32(do_s) * f32(v_s), axis=1)  # kept as one value per row, broadcast where used
    AT = jnp.where(diagonal(), rows(bonus, LL), 0.0)  # A^T, accumulated over levels and K blocks
    fetch_masks(1)
    for kb in range(KB):
      if kb > 0:  # r again (the chunk level of block kb - 1 overwrote it; its products are done)
        plgpu.copy_gmem_to_smem(r_ref.at[bi, tok, h], Sx[1], r_bar.at[kb - 1])
        plgpu.barrier_wait(r_bar.at[kb - 1])
      put_pair_grads()
      put_block(kb)
      # level h = 1: P = r, Q = k (exact bf16, the hi tiles), no decay between the pair
      AT = AT + jnp.where(pairs(0, True), mm(LL, [(Q[0], P[0].T)]), 0.0)
      dr_pairs = mm(LL, x2(d_attn(0), Q[0]))
      dk_pairs = mm(LL, x2(d_attn(0, True), P[0]))

      def level(shift, carry):  # pair levels 2 .. L/2 as one loop body (so the code is fetched once; folding level 1
        # into it as well, then at 8 more product units (4 with today's bf16 factors), timed within the noise on the
        # H100 in the eighth session: 6.19 vs 6.06 ms, two calls)
        AT, dr_pairs, dk_pairs = carry
        E, F = exponents(shift)
        eE, eF = jnp.exp(E), jnp.exp(F)
        P[0][...] = (r_blk(kb).astype(F32) * eE).astype(BF16)
        Q[0][...] = (k_blk(kb).astype(F32) * eF).astype(BF16)
        plgpu.commit_smem()
        AT = AT + jnp.where(pairs(shift, True), mm(LL, [(Q[0], P[0].T)]), 0.0)
        dr_pairs = dr_pairs + mm(LL, x2(d_attn(shift), Q[0])) * eE
        dk_pairs = dk_pairs + mm(LL, x2(d_attn(shift, True), P[0])) * eF
        return AT, dr_pairs, dk_pairs

      AT, dr_pairs, dk_pairs = lax.fori_loop(1, LEVELS, level, (AT, dr_pairs, dk_pairs))
      # chunk level: the readout Qo = [first] r e^{E_L} of S and the key factors Kbar = [last] k e^{F_L} of S'
      E, F = exponents(LEVELS, fetch_next=False)  # leaves D (strict lower over the chunk) in M0, U (strict upper) in M1
      e_in, e_out = jnp.exp(E), jnp.exp(F)
      plgpu.commit_smem()  # every warp's last loads of DAT are done before its tiles take the states
      Sx[0][...] = state(st_ref, kb)  # the states are bf16: exact single operands
      Dx[0][...] = state(dst_ref, kb)
      plgpu.commit_smem()
      d_qo = jnp.where(first(), mm(LL, [(do_s, Sx[0].T)]), 0.0)  # dO S^T
      d_kbar = jnp.where(last(), mm(LL, [(v_s, Dx[0].T)]), 0.0)  # V dS'^T
      rv, kv = r_blk(kb).astype(F32), k_blk(kb).astype(F32)  # (before the split dw term overwrites r's tile)
      d_bonus = rows(d_bonus_row, LL)
      out(dr_ref, d_bonus * u_cols(kb) * kv + d_qo * e_in + dr_pairs, kb)
      out(dk_ref, d_bonus * u_cols(kb) * rv + d_kbar * e_out + dk_pairs, kb)
      # dw = U (X - Y) + D Z - Y + J (diag(dec) S o dS')^T (module docstring); du as a column sum
      y = kv * dk_pairs
      store_split(rv * (dr_pairs + d_qo * e_in) - y, *P)
      store_split(jnp.where(last(), kv * e_out, 0.0) * d_kbar, *Q)
      store_split(d_bonus * rv * kv, *W)
      dec_rows = rows(load(dec_ref.at[bi, h, c, ks(kb)], ROW), LN)
      store_split(dec_rows * state(st_ref, kb).astype(F32) * state(dst_ref, kb).astype(F32), *Sx)
      Dx[0][...] = jnp.where(iota(LN, 0) >= 0, 1.0, 0.0).astype(BF16)  # ones [64, N]
      plgpu.commit_smem()
      out(dw_ref, mm(LL, x2(M1, P) + x2(M0, Q) + x2(Dx[0], transposed(Sx))) - y, kb)
      if kb + 1 < KB:
        fetch_masks(1)  # for the next block's level loop (this block's products with D, U are done)
      du_cols = mm(LN, x2(transposed(W), Dx[0]))  # (d_bonus r k)^T ones: du of block kb in every column
      du_ref.at[bi, h, c, ks(kb)][...] = jnp.sum(jnp.where(iota(LN, 1) == 0, du_cols, 0.0), axis=1)
    # dv = A^T dO + Kbar dS', Kbar recomputed by block (U is still in M1)
    dv = mm(LN, x2(split(AT), do_s))
    for kb in range(KB):
      store_split(inp(w_ref, kb), *W)
      Dx[0][...] = state(dst_ref, kb)
      plgpu.commit_smem()
      kbar = jnp.where(last(), k_blk(kb).astype(F32) * jnp.exp(mm(LL, x2(M1, W))), 0.0)
      dv = dv + mm(LN, x2(split(kbar), Dx[0]))
    out(dv_ref, dv, None)

  scratch = [swizzled((6, L, L)), swizzled((2, L, L)), swizzled((4, L, N)), swizzled(LN), swizzled(LN),
             plgpu.Barrier(num_arrivals=4), plgpu.Barrier(num_arrivals=1, num_barriers=max(KB - 1, 1)),
             plgpu.Barrier(num_arrivals=1)]
  if interpret:
    scratch += [swizzled(LL) for _ in range(2)]
  out_type = tuple(jax.ShapeDtypeStruct((B, Tp, H, N), dt) for dt in out_dtypes)
  out_type += (jax.ShapeDtypeStruct((B, H, C, N), F32),)
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"),
                      scratch_types=tuple(scratch), compiler_params=compiler_params(cross_warp_sums=False),
                      interpret=interpret_params(interpret), kernel_name="wkv6_chunk_grads")
  return kern(r, k, v, w, u, seg, dec, states, d_o, d_states, level_triangles())


def level_triangles():
  """[LEVELS + 1, 2, L, L] bf16: the in-block (lower, upper) 0/1 triangles of blocks of 2^shift tokens for every
  shift 0..LEVELS (`common.block_triangles`), fetched into SMEM by TMA level by level."""
  return jnp.stack([jnp.stack(common.block_triangles(L, shift)) for shift in range(LEVELS + 1)]).astype(BF16)
