"""The chunk-parallel input gradients of `pallas_gpu` WKV-7 as one Mosaic GPU kernel (Hopper, sm_90).

`chunk_grads` computes, for every chunk of L = 64 tokens, the gradients dr, dw, dk, dv, da, db of the chunk's inputs
given the state S entering the chunk (saved by the forward state pass) and the state gradient dS' after it (from the
backward state pass): the math of `common.chunk_backward` (spec section 2.3), the VJP of `common.chunk_forward` with
S held fixed (dS0 comes from the state pass). It loads the chunk's split inverse T = (I - A_ab)^{-1} saved by
`gpu._prep` (by TMA, with v and dO) and recomputes the other forward terms (factors, three intra-chunk matrices,
u = T (A0 S + A_ak V)) with the numerics of `gpu._prep`:
bf16 tensor-core products with fp32 accumulation, "split-bf16 x3" (hi hi + hi lo + lo hi) where neither operand is
exact bf16, two passes (hi, lo) where one operand is exact bf16 (v, dO, 0/1 matrices).

Grid (C, H, B), one warpgroup per CTA, head dims N = 64 and 128. All tiles are 64 rows; the K dimension (state rows,
key channels) goes by 64-wide blocks kb: S and dS' pass through SMEM in 64-row blocks, and dr, dw, dk, da, db are
computed and written by 64-column blocks (at N = 128 the register-only matrix gradients below are recomputed per
block). SMEM: [L, N] pairs W0, W1 (and W2 if N > L), [L, L] pairs Q0..Q3, v and dO, bf16:
  N = 64:  14 tiles of 8 KiB = 112 KiB per CTA, so two CTAs fit on an H100 SM;
  N = 128: 192 KiB, one CTA per SM
(tests/ops/wkv7_pallas_test.py checks the N = 64 figure through Mosaic GPU's lowering). To fit, operands used only
as non-transposed lhs stay in registers (split bf16), values are recomputed rather than kept across phases (the
factors q~, a~, k^, b^ and S are rebuilt in the gradient phase), and the four matrix gradients dA are never stored:
each is a product into registers in the orientation where it is used (dA for dq~, da~; dA^T for dk^, db^), so those
8 products run twice. The slot plan is written at each step of `body`. Registers: a 64 x 64 fp32 value is 32 per
thread (64 x 128: 64), a split bf16 one as many; about seven 64 x 64 values are live at most (the dk / db steps).
ptxas (H100, before T was loaded): 255 registers, spills, serialised WGMMAs (docs/benchmarks.md, fourth session).
At N = 64, about 91 tensor-core products of 64 x 64 x 64 per chunk (x3 counted as 3); rebuilding T took 33 more.

The log-decay gradient is assembled as in `chunk_backward`, regrouped so that the last-segment terms cancel exactly:
    dw = M_>= P + M_> dgm + M_< Q + dec * diag(dS' S^T)      (M_op[i, j] = [j op i], 0/1 bf16 matrices)
with P = q~ dq~ + Q0 dQ0 - k^ dk^ - b^ db^ (dg without the Kbar / Bbar terms), dgm = a~ da~ + A0 dA0 and
Q = Kbar dKbar + Bbar dBbar; the last term enters as ones (diag(dec) S o dS')^T, every row the same. Each of the
four terms is its own product (see the note in `body`).
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


def chunk_grads(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, t_hi, t_lo, out_dtypes, *, interpret=False):
  """(dr, dw, dk, dv, da, db), each [B, Tp, H, N] in `out_dtypes` (a sequence of six dtypes).

  r, k, v, a, b, d_o: [B, Tp, H, N] bf16 (Tp a multiple of L); g_pad [B, 1 + Tp, H, N] float32 (a zero row, then
  the chunk-local inclusive cumulative log-decay); seg [B, Tp] float32 segment index inside each chunk;
  dec [B, H, C, N] float32 chunk decay (0 for chunks with a segment start); states [B, H, C, N, N] float32 the state
  entering each chunk; d_states [B, H, C, N, N] float32 the state gradient after each chunk; t_hi, t_lo
  [B, H, C, L, L] bf16 the split inverse T = (I - A_ab)^{-1} of each chunk (saved by `gpu._prep`)."""
  B, Tp, H, N = r.shape
  if N not in HEAD_DIMS:
    raise ValueError(f"chunk_grads: head dim {N} not in {HEAD_DIMS}")
  C = Tp // L
  LN, LL, KB = (L, N), (L, L), N // L  # KB: 64-wide blocks of the K (state row / key channel) dimension

  def body(r_ref, k_ref, v_ref, a_ref, b_ref, g_ref, s_ref, dec_ref, st_ref, do_ref, dst_ref, thi_ref, tlo_ref,
           dr_ref, dw_ref, dk_ref, dv_ref, da_ref, db_ref, wide, square, v_s, do_s, bar, *stage):
    Q0, Q1, Q2, Q3 = ((square.at[i, 0], square.at[i, 1]) for i in range(4))  # [L, L] (hi, lo) pairs
    W = [(wide.at[i, 0], wide.at[i, 1]) for i in range(wide.shape[0])]  # [L, N] (hi, lo) pairs
    W0, W1, W2 = W if KB > 1 else W + [Q2]  # N = L: du / dR take A_qb's slot when it dies
    staged = {LL: list(stage[:4])} | ({LN: list(stage[4:])} if KB > 1 else {})
    mm = Mma(staged if interpret else None)  # register lhs operands go through `stage` when interpreted
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok = pl.ds(c * L, L)
    plgpu.copy_gmem_to_smem(v_ref.at[bi, tok, h], v_s, bar)
    plgpu.copy_gmem_to_smem(do_ref.at[bi, tok, h], do_s, bar)
    plgpu.copy_gmem_to_smem(thi_ref.at[bi, h, c], Q0[0], bar)  # T (the forward's) into Q0
    plgpu.copy_gmem_to_smem(tlo_ref.at[bi, h, c], Q0[1], bar)

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

    def G(kb=None):  # chunk-local inclusive cumulative log-decay
      return load(g_ref.at[bi, pl.ds(c * L + 1, L), h, ks(kb)])

    def Gm(kb=None):  # exclusive
      return jnp.where(iota(shape(kb), 0) == 0, 0.0, load(g_ref.at[bi, pl.ds(c * L, L), h, ks(kb)]))

    # masks and broadcast rows are rebuilt where they are used (cheap loads and iotas) rather than kept live
    def mid(kb=None):  # the centring row m
      return cols(load(g_ref.at[bi, c * L + (L - 1) // 2 + 1, h, ks(kb)], COL), shape(kb))

    def gl(kb=None):  # the chunk's last row
      return cols(load(g_ref.at[bi, c * L + L, h, ks(kb)], COL), shape(kb))

    def seg_rows(shape):
      return rows(load(s_ref.at[bi, tok], ROW), shape)

    def first(kb=None):  # rows that see the entering state
      return seg_rows(shape(kb)) == 0.0

    def last(kb=None):  # rows of the chunk's last segment
      return seg_rows(shape(kb)) == s_ref[bi, c * L + L - 1]

    def causal(op):  # same segment and op(row, column): the masks of A (op >, >=) and of A^T (op <, <=)
      same = seg_rows(LL) == cols(load(s_ref.at[bi, tok], COL), LL)
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

    def state(ref, kb):  # rows kb of S or dS' [64, N]
      return load(ref.at[bi, h, c, ks(kb)])

    # Slot plan: [L, N] pairs W0, W1 (and W2 if N > L; else W2 is Q2), [L, L] pairs Q0..Q3, v, dO. Operands used
    # only as non-transposed lhs stay in registers (split), the rest are SMEM tiles, values are recomputed rather
    # than kept across phases, and S / dS' pass through W0 in 64-row blocks kb.
    # --- forward recompute: A_ak (Q1), A_qb (Q2), A_qk (Q3), u (W1); T (Q0) arrives with v and dO
    put(bh(), W0)
    put(kh(), W1)
    plgpu.commit_smem()
    a_t = split(at())
    put(jnp.where(causal(gt), mm(LL, x3(a_t, transposed(W1))), 0.0), Q1)
    q_t = split(qt())
    put(jnp.where(causal(ge), mm(LL, x3(q_t, transposed(W0))), 0.0), Q2)
    put(jnp.where(causal(ge), mm(LL, x3(q_t, transposed(W1))), 0.0), Q3)
    plgpu.commit_smem()
    plgpu.barrier_wait(bar)  # v, dO and T are in SMEM
    R = None  # A0 S + A_ak V
    for kb in range(KB):
      put(state(st_ref, kb), W0)
      plgpu.commit_smem()
      a0 = split(jnp.where(first(kb), inp(a_ref, kb) * jnp.exp(Gm(kb)), 0.0))
      R = mm(LN, x3(a0, W0) + x2(Q1, v_s)) if R is None else R + mm(LN, x3(a0, W0))
    put(R, W1)
    plgpu.commit_smem()
    put(mm(LN, x3(Q0, W1)), W1)  # u = T R
    # --- S' = diag(dec) S + Bbar^T u + Kbar^T V and o = Q0 S + A_qb u + A_qk V, backward to du, dR = T^T du, dv
    du = dv = None
    for kb in range(KB):  # du = Bbar dS' + A_qb^T dO, dv = Kbar dS' + A_qk^T dO
      put(state(dst_ref, kb), W0)
      plgpu.commit_smem()
      bbar = split(jnp.where(last(kb), inp(b_ref, kb) * jnp.exp(gl(kb) - G(kb)), 0.0))
      du = mm(LN, x3(bbar, W0) + x2(transposed(Q2), do_s)) if du is None else du + mm(LN, x3(bbar, W0))
      kbar = split(jnp.where(last(kb), inp(k_ref, kb) * jnp.exp(gl(kb) - G(kb)), 0.0))
      dv = mm(LN, x3(kbar, W0) + x2(transposed(Q3), do_s)) if dv is None else dv + mm(LN, x3(kbar, W0))
    put(du, W2)
    plgpu.commit_smem()
    put(mm(LN, x3(transposed(Q0), W2)), W2)  # dR = T^T du
    plgpu.commit_smem()
    out(dv_ref, dv + mm(LN, x3(transposed(Q1), W2)), None)  # + A_ak^T dR
    # live: u (W1), dR (W2), v, dO. The matrix gradients dA_ab = M_<(dR u^T), dA_ak = M_<(dR V^T),
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
      # dk, db (with the Kbar / Bbar terms), P and Q; a~ (Q0), q~ (Q1), dS' rows kb (W0)
      put(at(kb), Q0)
      put(qt(kb), Q1)
      put(state(dst_ref, kb), W0)
      plgpu.commit_smem()
      dA_akT = masked(lt, x2(v_s, transposed(W2)))
      dA_qkT = masked(le, [(v_s, do_s.T)])
      kv, d_kh, d_kbar, e_out, to_end = factor_grad((dA_akT, dA_qkT), last, x2(v_s, transposed(W0)), out_exps, k_ref,
                                                    dk_ref, kb)
      P = -(kv * e_out) * d_kh
      Q = jnp.where(last(kb), kv * to_end, 0.0) * d_kbar
      dA_abT = masked(lt, x3(W1, transposed(W2)))
      dA_qbT = masked(le, x2(W1, do_s.T))
      bv, d_bh, d_bbar, e_out, to_end = factor_grad((dA_abT, dA_qbT), last, x3(W1, transposed(W0)), out_exps, b_ref,
                                                    db_ref, kb)
      P = P - (bv * e_out) * d_bh
      put(Q + jnp.where(last(kb), bv * to_end, 0.0) * d_bbar, Q3)  # Q (A_qk is dead)
      # dr, da and dgm; b^ (Q0), k^ (Q1), S rows kb (W0)
      put(bh(kb), Q0)
      put(kh(kb), Q1)
      put(state(st_ref, kb), W0)
      plgpu.commit_smem()
      dA_qb = masked(ge, x2(do_s, transposed(W1)))
      dA_qk = masked(ge, [(do_s, v_s.T)])
      rv, d_qt, dq0, e_q, eq0 = factor_grad((dA_qb, dA_qk), first, x2(do_s, transposed(W0)), in_exps(G),
                                            r_ref, dr_ref, kb)
      P = P + (rv * e_q) * d_qt + jnp.where(first(kb), rv * eq0, 0.0) * dq0
      dA_ab = masked(gt, x3(W2, transposed(W1)))
      dA_ak = masked(gt, x2(W2, v_s.T))
      av, d_at, da0, e_a, ea0 = factor_grad((dA_ab, dA_ak), first, x3(W2, transposed(W0)), in_exps(Gm),
                                            a_ref, da_ref, kb)
      put(P, Q0)
      put((av * e_a) * d_at + jnp.where(first(kb), av * ea0, 0.0) * da0, Q1)  # dgm
      # dw = M_>= P + M_> dgm + M_< Q + ones (diag(dec) S o dS')^T (the last term: dec * diag(dS' S^T) in every row)
      dec_rows = rows(load(dec_ref.at[bi, h, c, ks(kb)], ROW), LN)
      put(dec_rows * state(st_ref, kb) * state(dst_ref, kb), W0)
      plgpu.commit_smem()
      ri, ci = iota(LL, 0), iota(LL, 1)
      tri = [jnp.where(m, 1.0, 0.0).astype(BF16) for m in (ci >= ri, ci > ri, ci < ri)]
      ones = jnp.where(iota(LN, 0) >= 0, 1.0, 0.0).astype(BF16)
      # one accumulator per term: as a single chain of 8 products with these register (iota-built) lhs operands,
      # dw came out NaN in some rows on the H100 (2026-11-26; each term alone, or summed from 4 chains, was right)
      parts = [mm(LL, x2(m, x)) for m, x in ((tri[0], Q0), (tri[1], Q1), (tri[2], Q3), (ones, transposed(W0)))]
      out(dw_ref, parts[0] + parts[1] + parts[2] + parts[3], kb)

  scratch = [swizzled((3 if KB > 1 else 2, 2, L, N)), swizzled((4, 2, L, L)), swizzled(LN), swizzled(LN),
             plgpu.Barrier(num_arrivals=4)]
  if interpret:
    scratch += [swizzled(LL) for _ in range(4)] + ([swizzled(LN) for _ in range(2)] if KB > 1 else [])
  out_type = tuple(jax.ShapeDtypeStruct((B, Tp, H, N), dt) for dt in out_dtypes)
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"),
                      scratch_types=tuple(scratch), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name="wkv7_chunk_grads")
  return kern(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, t_hi, t_lo)
