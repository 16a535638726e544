"""The chunk-parallel input gradients of `pallas_gpu` WKV-7 as one Mosaic GPU kernel (Hopper, sm_90).

`chunk_grads` computes, for every chunk of L = 64 tokens, the gradients dr, dw, dk, dv, da, db of the chunk's inputs
given the state S entering the chunk (saved by the forward state pass) and the state gradient dS' after it (from the
backward state pass): the math of `common.chunk_backward` (spec section 2.3), the VJP of `common.chunk_forward` with
S held fixed (dS0 comes from the state pass). What the other kernels already computed it loads rather than rebuilds:
the split inverse T = (I - A_ab)^{-1} (from `gpu._prep`), u = T (A0 S + A_ak V) (from the forward state pass), the
state's share of du, Bbar dS' (from the backward state pass), and S and dS' as bf16 (jax-linear-attention saves
its states in bf16 too). It recomputes the factors and three intra-chunk matrices with the numerics of `gpu._prep`:
bf16 tensor-core products with fp32 accumulation, "split-bf16 x3" (hi hi + hi lo + lo hi) where neither operand is
exact bf16, two passes (hi, lo) where one operand is exact bf16 (v, dO, u, S, dS', 0/1 matrices), one where both are.

Grid (C, H, B), one warpgroup per CTA, head dims N = 64 and 128. All tiles are 64 rows; the K dimension (state rows,
key channels) goes by 64-wide blocks kb: dr, dw, dk, da, db are computed and written by 64-column blocks (at N = 128
the register-only matrix gradients below are recomputed per block). SMEM (bf16): [L, L] pairs Q0..Q3, [L, N] pairs
W1 (and W2 if N > L, else W2 is Q2), tiles v, dO, u [L, N] and the state tile [N, N] (dS', whose 64-row block kb is
replaced by S's by TMA once the dk / db step of block kb is done with it):
  N = 64:  14 tiles of 8 KiB = 112 KiB per CTA, so two CTAs fit on an H100 SM;
  N = 128: 208 KiB, one CTA per SM
(tests/ops/wkv7_pallas_test.py checks the N = 64 figure through Mosaic GPU's lowering). To fit, operands used only
as non-transposed lhs stay in registers (split bf16), values are recomputed rather than kept across phases (the
factors q~, a~, k^, b^ are rebuilt in the gradient phase), and the four matrix gradients dA are never stored: each
is a product into registers in the orientation where it is used (dA for dq~, da~; dA^T for dk^, db^), so those 8
products run twice. The slot plan is written at each step of `body`. Registers: a 64 x 64 fp32 value is 32 per
thread (64 x 128: 64), a split bf16 one as many; about seven 64 x 64 values are live at most (the dk / db steps).
ptxas (H100, N = 64): 255 registers, 908 / 948 bytes of spill stores / loads (1676 / 2228 when the kernel rebuilt T,
u and the states' terms itself). At N = 64, 68 tensor-core products of 64 x 64 x 64 per chunk (x3 counted as 3);
rebuilding T, u and Bbar dS' and splitting the float32 states took 124.

The log-decay gradient is assembled as in `chunk_backward`, regrouped so that the last-segment terms cancel exactly:
    dw = M_>= P + M_> dgm + M_< Q + dec * diag(dS' S^T)      (M_op[i, j] = [j op i], 0/1 bf16 matrices)
       = M_>= (P + dgm) - dgm + M_< Q + dec * diag(dS' S^T)      (M_> = M_>= - I)
with P = q~ dq~ + Q0 dQ0 - k^ dk^ - b^ db^ (dg without the Kbar / Bbar terms), dgm = a~ da~ + A0 dA0 and
Q = Kbar dKbar + Bbar dBbar; the last term enters as ones (diag(dec) S o dS')^T, every row the same. Each of the
three products is its own, and their 0/1 matrices come from GMEM (see the note in `body`).
"""

from __future__ import annotations

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic_gpu_tiles import (
  CHUNK, COL, HEAD_DIMS, ROW, cols, compiler_params, interpret_params, iota, load, Mma, rows, split, store_split,
  swizzled, transposed, x2, x3,
)

F32 = jnp.float32
BF16 = jnp.bfloat16
L = CHUNK  # tokens per chunk

__all__ = ["chunk_grads", "HEAD_DIMS"]


def chunk_grads(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, t_hi, t_lo, u, du_state, out_dtypes, *,
                interpret=False):
  """(dr, dw, dk, dv, da, db), each [B, Tp, H, N] in `out_dtypes` (a sequence of six dtypes).

  r, k, v, a, b, d_o: [B, Tp, H, N] bf16 (Tp a multiple of L); g_pad [B, 1 + Tp, H, N] float32 (a zero row, then
  the chunk-local inclusive cumulative log-decay); seg [B, Tp] float32 segment index inside each chunk;
  dec [B, H, C, N] float32 chunk decay (0 for chunks with a segment start); states [B, H, C, N, N] bf16 the state
  entering each chunk; d_states [B, H, C, N, N] bf16 the state gradient after each chunk; t_hi, t_lo [B, H, C, L, L]
  bf16 the split inverse T = (I - A_ab)^{-1} of each chunk (saved by `gpu._prep`); u [B, H, Tp, N] bf16 the WY
  values u = T (A0 S + A_ak V) of each chunk (saved by the forward state pass); du_state [B, H, Tp, N] bf16 their
  gradient through the state, Bbar dS' (from the backward state pass)."""
  B, Tp, H, N = r.shape
  if N not in HEAD_DIMS:
    raise ValueError(f"chunk_grads: head dim {N} not in {HEAD_DIMS}")
  C = Tp // L
  LN, LL, KB = (L, N), (L, L), N // L  # KB: 64-wide blocks of the K (state row / key channel) dimension

  def body(r_ref, k_ref, v_ref, a_ref, b_ref, g_ref, s_ref, dec_ref, st_ref, do_ref, dst_ref, thi_ref, tlo_ref,
           u_ref, dus_ref, tri_ref, ones_ref, dr_ref, dw_ref, dk_ref, dv_ref, da_ref, db_ref, wide, square, v_s,
           do_s, u_s, st_s, bar, st_bar, *stage):
    Q0, Q1, Q2, Q3 = ((square.at[i, 0], square.at[i, 1]) for i in range(4))  # [L, L] (hi, lo) pairs
    W = [(wide.at[i, 0], wide.at[i, 1]) for i in range(wide.shape[0])]  # [L, N] (hi, lo) pairs
    W1, W2 = W if KB > 1 else W + [Q2]  # N = L: du / dR take A_qb's slot when it dies
    staged = {LL: list(stage[:4])} | ({LN: list(stage[4:])} if KB > 1 else {})
    mm = Mma(staged if interpret else None)  # register lhs operands go through `stage` when interpreted
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok = pl.ds(c * L, L)
    for src, dst in ((v_ref.at[bi, tok, h], v_s), (do_ref.at[bi, tok, h], do_s), (thi_ref.at[bi, h, c], Q0[0]),
                     (tlo_ref.at[bi, h, c], Q0[1]), (u_ref.at[bi, h, tok], u_s), (dst_ref.at[bi, h, c], st_s)):
      plgpu.copy_gmem_to_smem(src, dst, bar)  # v, dO, T (the forward's, into Q0), u, dS'

    def put(x, dst):  # x (float32 registers) -> the (hi, lo) pair dst
      store_split(x, *dst)

    def ks(kb):  # the K columns of block kb (None: all)
      return slice(None) if kb is None else pl.ds(kb * L, L)

    def shape(kb):
      return LN if kb is None else LL

    def inp(ref, kb=None):
      return load(ref.at[bi, tok, h, ks(kb)]).astype(F32)

    def out(ref, x, kb):
      ref.at[bi, tok, h, ks(kb)][...] = x.astype(ref.dtype)

    def st_rows(kb):  # rows kb of the state tile: dS', then (fetched into it during block kb) S
      return st_s.at[ks(kb)]

    def G(kb=None):  # chunk-local inclusive cumulative log-decay
      return load(g_ref.at[bi, pl.ds(c * L + 1, L), h, ks(kb)])

    def Gm(kb=None):  # exclusive
      return jnp.where(iota(shape(kb), 0) == 0, 0.0, load(g_ref.at[bi, pl.ds(c * L, L), h, ks(kb)]))

    # masks and broadcast rows are rebuilt where they are used (cheap loads and iotas) rather than kept live
    def mid(kb=None):  # the centring row m
      return cols(load(g_ref.at[bi, c * L + (L - 1) // 2 + 1, h, ks(kb)], COL), shape(kb))

    def gl(kb=None):  # the chunk's last row
      return cols(load(g_ref.at[bi, c * L + L, h, ks(kb)], COL), shape(kb))

    seg_i, seg_last = load(s_ref.at[bi, tok], ROW), s_ref[bi, c * L + L - 1]  # loaded once (3 registers)

    def seg_rows(shape):
      return rows(seg_i, shape)

    def first(kb=None):  # rows that see the entering state
      return seg_rows(shape(kb)) == 0.0

    def last(kb=None):  # rows of the chunk's last segment
      return seg_rows(shape(kb)) == seg_last

    def causal(op):  # same segment and op(row, column): the masks of A (op >, >=) and of A^T (op <, <=)
      same = seg_rows(LL) == cols(load(s_ref.at[bi, tok], COL), LL)  # (a COL vector: 16 registers, not kept)
      return same & op(iota(LL, 0), iota(LL, 1))

    gt, ge, lt, le = jnp.greater, jnp.greater_equal, jnp.less, jnp.less_equal

    def kh(kb=None):
      return inp(k_ref, kb) * jnp.exp(mid(kb) - G(kb))

    def bh(kb=None):
      return inp(b_ref, kb) * jnp.exp(mid(kb) - G(kb))

    def at(kb=None):
      return inp(a_ref, kb) * jnp.exp(Gm(kb) - mid(kb))

    def qt(kb=None):
      return inp(r_ref, kb) * jnp.exp(G(kb) - mid(kb))

    # Slot plan: [L, L] pairs Q0..Q3, [L, N] pairs W1 (and W2 if N > L; else W2 is Q2), bf16 tiles v, dO, u and the
    # state tile [N, N] (dS', its 64-row blocks replaced by S's as the gradient phase goes). Operands used only as
    # non-transposed lhs stay in registers (split) and values are recomputed rather than kept across phases.
    # --- forward recompute: A_ak (Q1), A_qk (Q3), A_qb (Q2) from k^, then b^ (W1); T (Q0) arrives by TMA
    put(kh(), W1)
    plgpu.commit_smem()
    q_t = split(qt())
    put(jnp.where(causal(gt), mm(LL, x3(split(at()), transposed(W1))), 0.0), Q1)
    put(jnp.where(causal(ge), mm(LL, x3(q_t, transposed(W1))), 0.0), Q3)
    put(bh(), W1)
    plgpu.commit_smem()
    put(jnp.where(causal(ge), mm(LL, x3(q_t, transposed(W1))), 0.0), Q2)
    plgpu.commit_smem()
    plgpu.barrier_wait(bar)  # v, dO, T, u and dS' are in SMEM
    # --- du = Bbar dS' (the backward state pass's) + A_qb^T dO, dR = T^T du, dv = Kbar dS' + A_qk^T dO + A_ak^T dR
    put(load(dus_ref.at[bi, h, tok]).astype(F32) + mm(LN, x2(transposed(Q2), do_s)), W2)
    plgpu.commit_smem()
    put(mm(LN, x3(transposed(Q0), W2)), W2)  # dR
    plgpu.commit_smem()
    dv = mm(LN, x2(transposed(Q3), do_s) + x3(transposed(Q1), W2))
    for kb in range(KB):
      kbar = split(jnp.where(last(kb), inp(k_ref, kb) * jnp.exp(gl(kb) - G(kb)), 0.0))
      dv = dv + mm(LN, x2(kbar, st_rows(kb)))
    out(dv_ref, dv, None)

    # live: dR (W2), v, dO, u, dS'. The matrix gradients dA_ab = M_<(dR u^T), dA_ak = M_<(dR V^T),
    # dA_qb = M_<=(dO u^T), dA_qk = M_<=(dO V^T) are products into registers, each orientation where it is used.
    # The rest goes by 64-column blocks kb of dr, dw, dk, da, db.
    def factor_grad(dA, side_mask, side_pairs, exps, x_ref, dx_ref, kb):
      """One input's gradient block kb: d (its chunk factor) = dA[0] Q0 + dA[1] Q1 (dA: split pairs), d (its
      state-side factor) = side_mask(kb) o (side_pairs), dx = d_factor e_factor + d_side e_side with (e_factor,
      e_side) = exps(kb). Returns (x (the input block, float32), d_factor, d_side, e_factor, e_side)."""
      d_fac = mm(LL, x3(dA[0], Q0) + x3(dA[1], Q1))
      d_side = jnp.where(side_mask(kb), mm(LL, side_pairs), 0.0)
      e_fac, e_side = exps(kb)
      x = inp(x_ref, kb)
      out(dx_ref, d_fac * e_fac + d_side * e_side, kb)
      return x, d_fac, d_side, e_fac, e_side

    def out_exps(kb):  # the factors of k^, b^ and of Kbar, Bbar
      return jnp.exp(mid(kb) - G(kb)), jnp.exp(gl(kb) - G(kb))

    def in_exps(cumulative):  # the factors of q~ (cumulative = G) or a~ (Gm) and of the entering state's readout
      def exps(kb):
        Gv = cumulative(kb)
        return jnp.exp(Gv - mid(kb)), jnp.exp(Gv)
      return exps

    def masked(op, pairs):  # a matrix gradient: the product masked by causal(op), split for use as a register lhs
      return split(jnp.where(causal(op), mm(LL, pairs), 0.0))

    for kb in range(KB):
      # dk, db (with the Kbar / Bbar terms), P and Q; a~ (Q0), q~ (Q1), dS' rows kb
      put(at(kb), Q0)
      put(qt(kb), Q1)
      plgpu.commit_smem()
      dA_akT = masked(lt, x2(v_s, transposed(W2)))
      dA_qkT = masked(le, [(v_s, do_s.T)])
      kv, d_kh, d_kbar, e_out, to_end = factor_grad((dA_akT, dA_qkT), last, [(v_s, st_rows(kb).T)], out_exps, k_ref,
                                                    dk_ref, kb)
      P = -(kv * e_out) * d_kh
      Q = jnp.where(last(kb), kv * to_end, 0.0) * d_kbar
      dA_abT = masked(lt, x2(u_s, transposed(W2)))
      dA_qbT = masked(le, [(u_s, do_s.T)])
      bv, d_bh, d_bbar, e_out, to_end = factor_grad((dA_abT, dA_qbT), last, [(u_s, st_rows(kb).T)], out_exps, b_ref,
                                                    db_ref, kb)
      # the tensor cores are done with dS' rows kb (their last product's result is read): S's take their place
      plgpu.copy_gmem_to_smem(st_ref.at[bi, h, c, ks(kb)], st_rows(kb), st_bar.at[kb])
      P = P - (bv * e_out) * d_bh
      put(Q + jnp.where(last(kb), bv * to_end, 0.0) * d_bbar, Q3)  # Q (A_qk is dead)
      # dr, da and dgm; b^ (Q0), k^ (Q1), S rows kb
      put(bh(kb), Q0)
      put(kh(kb), Q1)
      plgpu.commit_smem()
      dA_qb = masked(ge, [(do_s, u_s.T)])
      dA_qk = masked(ge, [(do_s, v_s.T)])
      plgpu.barrier_wait(st_bar.at[kb])
      rv, d_qt, dq0, e_q, eq0 = factor_grad((dA_qb, dA_qk), first, [(do_s, st_rows(kb).T)], in_exps(G),
                                            r_ref, dr_ref, kb)
      P = P + (rv * e_q) * d_qt + jnp.where(first(kb), rv * eq0, 0.0) * dq0
      dA_ab = masked(gt, x2(W2, u_s.T))
      dA_ak = masked(gt, x2(W2, v_s.T))
      av, d_at, da0, e_a, ea0 = factor_grad((dA_ab, dA_ak), first, x2(W2, st_rows(kb).T), in_exps(Gm),
                                            a_ref, da_ref, kb)
      dgm = (av * e_a) * d_at + jnp.where(first(kb), av * ea0, 0.0) * da0
      put(P + dgm, Q0)  # M_>= P + M_> dgm = M_>= (P + dgm) - dgm
      # dw = M_>= (P + dgm) - dgm + M_< Q + ones (diag(dec) S o dS')^T (the last term: dec * diag(dS' S^T) in every
      # row)
      # S and dS' rows from GMEM (with S read from the state tile, and the masks below built with iota, dw came out
      # wrong on the H100, 2026-11-26; which of the two was at fault was not isolated)
      dec_rows = rows(load(dec_ref.at[bi, h, c, ks(kb)], ROW), LN)
      s_kb, ds_kb = (load(ref.at[bi, h, c, ks(kb)]).astype(F32) for ref in (st_ref, dst_ref))
      put(dec_rows * s_kb * ds_kb, W1)
      plgpu.commit_smem()
      # the 0/1 lhs operands come from GMEM (built with iota in registers, they gave NaN or wrong dw on the H100,
      # 2026-11-26, depending on register allocation), one accumulator per term
      parts = [mm(LL, x2(load(tri_ref.at[i]), x)) for i, x in enumerate((Q0, Q3))]
      out(dw_ref, sum(parts) + mm(LL, x2(load(ones_ref), transposed(W1))) - dgm, kb)

  scratch = [swizzled((KB, 2, L, N)), swizzled((4, 2, L, L)), swizzled(LN), swizzled(LN), swizzled(LN),
             swizzled((N, N)), plgpu.Barrier(num_arrivals=6), plgpu.Barrier(num_arrivals=1, num_barriers=KB)]
  if interpret:
    scratch += [swizzled(LL) for _ in range(4)] + ([swizzled(LN) for _ in range(2)] if KB > 1 else [])
  out_type = tuple(jax.ShapeDtypeStruct((B, Tp, H, N), dt) for dt in out_dtypes)
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"),
                      scratch_types=tuple(scratch), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name="wkv7_chunk_grads")
  ri, ci = jnp.indices((L, L))
  tri = jnp.stack([ci >= ri, ci < ri]).astype(BF16)  # M_>=, M_< of dw's products
  return kern(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, t_hi, t_lo, u, du_state, tri,
              jnp.ones(LN, BF16))
