"""The chunk-parallel input gradients of `pallas_gpu` WKV-7 as one Mosaic GPU kernel (Hopper, sm_90).

`chunk_grads` computes, for every chunk of L = 64 tokens, the gradients dr, dw, dk, dv, da, db of the chunk's inputs
given the state S entering the chunk (saved by the forward state pass) and the state gradient dS' after it (from the
backward state pass): the math of `common.chunk_backward` (spec section 2.3), the VJP of `common.chunk_forward` with
S held fixed (dS0 comes from the state pass). It recomputes the forward terms of the chunk (factors, the four
intra-chunk matrices, T = (I - A_ab)^{-1} by block doubling, u = T (A0 S + A_ak V)) with the numerics of `gpu._prep`:
bf16 tensor-core products with fp32 accumulation, "split-bf16 x3" (hi hi + hi lo + lo hi) where neither operand is
exact bf16, two passes (hi, lo) where one operand is exact bf16 (v, dO, 0/1 matrices).

Grid (C, H, B), one warpgroup per CTA, head dim N = L = 64 only (every tile is 64 x 64; at N = 128 the tiles of this
plan would take about four times the SMEM, so `gpu` keeps the XLA gradients, `common.chunk_backward` vmapped, for it).
SMEM: 14 bf16 tiles of 8 KiB (six hi/lo pairs P0..P5, v, dO) = 112 KiB per CTA, so two CTAs fit on an H100 SM
(tests/ops/wkv7_pallas_test.py checks it through Mosaic GPU's lowering). To fit, operands used only as non-transposed
lhs stay in registers (split bf16), values are recomputed rather than kept across phases (the factors q~, a~, k^,
b^ and S are rebuilt in the gradient phase), and the four matrix gradients dA are never stored: each is a product
into registers in the orientation where it is used (dA for dq~, da~; dA^T for dk^, db^), so those 8 products run
twice. The slot plan is written at each step of `body`. Registers: a 64 x 64 fp32 value is 32 per thread, a split
bf16 one 32 too; about seven are live at most (the dk / db steps); not yet measured (MOSAIC_GPU_DUMP_PTXAS=1 on a
GPU). About 124 tensor-core products of 64 x 64 x 64 per chunk (x3 counted as 3), 30 of them in the inverse T.

The log-decay gradient is assembled as in `chunk_backward`, regrouped so that the last-segment terms cancel exactly:
    dw = M_>= P + M_> dgm + M_< Q + dec * diag(dS' S^T)      (M_op[i, j] = [j op i], 0/1 bf16 matrices)
with P = q~ dq~ + Q0 dQ0 - k^ dk^ - b^ db^ (dg without the Kbar / Bbar terms), dgm = a~ da~ + A0 dA0 and
Q = Kbar dKbar + Bbar dBbar; the last term enters as ones (diag(dec) S o dS')^T, every row the same.
"""

from __future__ import annotations

import math

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic_gpu_tiles import (
  COL, ROW, Mma, cols, compiler_params, interpret_params, iota, load, rows, split, store_split, swizzled,
)

F32 = jnp.float32
BF16 = jnp.bfloat16
L = 64  # tokens per chunk (= `gpu.L`)
SUPPORTED_HEAD_DIMS = (64,)  # N = 128: see the module docstring; `gpu` runs the XLA gradients for it

__all__ = ["chunk_grads", "SUPPORTED_HEAD_DIMS"]


def _x3(lhs, rhs):
  """Mma pairs of a split-bf16 x3 product of two (hi, lo) pairs (lhs: SMEM tiles or bf16 registers)."""
  return [(lhs[0], rhs[0]), (lhs[0], rhs[1]), (lhs[1], rhs[0])]


def _x2(lhs, rhs):
  """Mma pairs of a product with one exact bf16 side: lhs or rhs is a single operand, the other a (hi, lo) pair."""
  if isinstance(lhs, tuple):
    return [(lhs[0], rhs), (lhs[1], rhs)]
  return [(lhs, rhs[0]), (lhs, rhs[1])]


def _t(pair):
  return tuple(x.T for x in pair)


def chunk_grads(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, out_dtypes, *, interpret=False):
  """(dr, dw, dk, dv, da, db), each [B, Tp, H, N] in `out_dtypes` (a sequence of six dtypes).

  r, k, v, a, b, d_o: [B, Tp, H, N] bf16 (Tp a multiple of L); g_pad [B, 1 + Tp, H, N] float32 (a zero row, then
  the chunk-local inclusive cumulative log-decay); seg [B, Tp] float32 segment index inside each chunk;
  dec [B, H, C, N] float32 chunk decay (0 for chunks with a segment start); states [B, H, C, N, N] float32 the state
  entering each chunk; d_states [B, H, C, N, N] float32 the state gradient after each chunk."""
  B, Tp, H, N = r.shape
  if N not in SUPPORTED_HEAD_DIMS:
    raise ValueError(f"chunk_grads: head dim {N} not in {SUPPORTED_HEAD_DIMS}")
  C = Tp // L
  LN = LL = (L, N)
  levels = int(math.log2(L))

  def body(r_ref, k_ref, v_ref, a_ref, b_ref, g_ref, s_ref, dec_ref, st_ref, do_ref, dst_ref,
           dr_ref, dw_ref, dk_ref, dv_ref, da_ref, db_ref, pairs, v_s, do_s, bar, *stage):
    P0, P1, P2, P3, P4, P5 = ((pairs.at[i, 0], pairs.at[i, 1]) for i in range(6))  # (hi, lo) SMEM tile pairs
    mm = Mma({LL: list(stage)} if interpret else None)  # register lhs operands go through `stage` when interpreted
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok = pl.ds(c * L, L)
    plgpu.copy_gmem_to_smem(v_ref.at[bi, tok, h], v_s, bar)
    plgpu.copy_gmem_to_smem(do_ref.at[bi, tok, h], do_s, bar)

    def put(x, dst):  # x (float32 registers) -> the (hi, lo) pair dst
      store_split(x, *dst)

    def inp(ref):
      return load(ref.at[bi, tok, h]).astype(F32)

    def out(ref, x):
      ref.at[bi, tok, h][...] = x.astype(ref.dtype)

    def G():  # chunk-local inclusive cumulative log-decay
      return load(g_ref.at[bi, pl.ds(c * L + 1, L), h])

    def Gm():  # exclusive
      return jnp.where(iota(LN, 0) == 0, 0.0, load(g_ref.at[bi, pl.ds(c * L, L), h]))

    # masks and broadcast rows are rebuilt where they are used (cheap loads and iotas) rather than kept live
    def mid():  # the centring row m
      return cols(load(g_ref.at[bi, c * L + (L - 1) // 2 + 1, h], COL), LN)

    def gl():  # the chunk's last row
      return cols(load(g_ref.at[bi, c * L + L, h], COL), LN)

    def seg_rows(shape):
      return rows(load(s_ref.at[bi, tok], ROW), shape)

    def first():  # rows that see the entering state
      return seg_rows(LN) == 0.0

    def last():  # rows of the chunk's last segment
      return seg_rows(LN) == s_ref[bi, c * L + L - 1]

    def causal(op):  # same segment and op(row, column): the masks of A (op >, >=) and of A^T (op <, <=)
      same = seg_rows(LL) == cols(load(s_ref.at[bi, tok], COL), LL)
      return same & op(iota(LL, 0), iota(LL, 1))

    gt, ge, lt, le = jnp.greater, jnp.greater_equal, jnp.less, jnp.less_equal

    def kh():
      return inp(k_ref) * jnp.exp(mid() - G())

    def bh():
      return inp(b_ref) * jnp.exp(mid() - G())

    def at():
      return inp(a_ref) * jnp.exp(Gm() - mid())

    def qt():
      return inp(r_ref) * jnp.exp(G() - mid())

    # Slot plan (14 bf16 64 x 64 tiles: P0..P5 pairs, v, dO). Operands used only as non-transposed lhs stay in
    # registers (split), the rest are SMEM tiles, and values are recomputed rather than kept across phases.
    # --- forward recompute: T (P2), A_ak (P3), A_qb (P4), A_qk (P5), u (P1)
    put(bh(), P0)
    put(kh(), P1)
    plgpu.commit_smem()
    A_ab = jnp.where(causal(gt), mm(LL, _x3(split(at()), _t(P0))), 0.0)
    ri, ci = iota(LL, 0), iota(LL, 1)
    # T = (I - A_ab)^{-1} by block doubling (`common.unit_lower_inverse`): D <- D + (D A_off) D
    D = jnp.where(ri == ci, 1.0, 0.0) + jnp.where(((ri >> 1) == (ci >> 1)) & (ri != ci), A_ab, 0.0)
    for shift in range(1, levels):
      off = jnp.where(((ri >> (shift + 1)) == (ci >> (shift + 1))) & ((ri >> shift) != (ci >> shift)), A_ab, 0.0)
      put(off, P2)
      put(D, P3)
      plgpu.commit_smem()
      D = D + mm(LL, _x3(split(mm(LL, _x3(split(D), P2))), P3))
    put(D, P2)
    a_t = split(at())
    put(jnp.where(causal(gt), mm(LL, _x3(a_t, _t(P1))), 0.0), P3)
    q_t = split(qt())
    put(jnp.where(causal(ge), mm(LL, _x3(q_t, _t(P0))), 0.0), P4)
    put(jnp.where(causal(ge), mm(LL, _x3(q_t, _t(P1))), 0.0), P5)
    put(load(st_ref.at[bi, h, c]), P0)  # S
    plgpu.commit_smem()
    plgpu.barrier_wait(bar)  # v and dO are in SMEM
    a0 = split(jnp.where(first(), inp(a_ref) * jnp.exp(Gm()), 0.0))
    put(mm(LN, _x3(a0, P0) + _x2(P3, v_s)), P1)  # R = A0 S + A_ak V
    plgpu.commit_smem()
    put(mm(LN, _x3(P2, P1)), P1)  # u = T R
    # --- S' = diag(dec) S + Bbar^T u + Kbar^T V and o = Q0 S + A_qb u + A_qk V, backward to du, dR = T^T du, dv
    put(load(dst_ref.at[bi, h, c]), P0)  # dS'
    plgpu.commit_smem()
    bbar = split(jnp.where(last(), inp(b_ref) * jnp.exp(gl() - G()), 0.0))
    put(mm(LN, _x3(bbar, P0) + _x2(_t(P4), do_s)), P4)  # du = Bbar dS' + A_qb^T dO
    kbar = split(jnp.where(last(), inp(k_ref) * jnp.exp(gl() - G()), 0.0))
    dv = mm(LN, _x3(kbar, P0) + _x2(_t(P5), do_s))  # Kbar dS' + A_qk^T dO
    plgpu.commit_smem()
    put(mm(LN, _x3(_t(P2), P4)), P5)  # dR = T^T du
    plgpu.commit_smem()
    out(dv_ref, dv + mm(LN, _x3(_t(P3), P5)))  # + A_ak^T dR
    # live: dS' (P0), u (P1), dR (P5), v, dO. The matrix gradients dA_ab = M_<(dR u^T), dA_ak = M_<(dR V^T),
    # dA_qb = M_<=(dO u^T), dA_qk = M_<=(dO V^T) are products into registers, each orientation where it is used.
    # dk, db (with the Kbar / Bbar terms), P and Q; a~ (P2), q~ (P3)
    put(at(), P2)
    put(qt(), P3)
    plgpu.commit_smem()
    dA_akT = split(jnp.where(causal(lt), mm(LL, _x2(v_s, _t(P5))), 0.0))
    dA_qkT = split(jnp.where(causal(le), mm(LL, [(v_s, do_s.T)]), 0.0))
    d_kh = mm(LN, _x3(dA_akT, P2) + _x3(dA_qkT, P3))
    d_kbar = jnp.where(last(), mm(LN, _x2(v_s, _t(P0))), 0.0)
    e_out, to_end = jnp.exp(mid() - G()), jnp.exp(gl() - G())
    kv = inp(k_ref)
    out(dk_ref, d_kh * e_out + d_kbar * to_end)
    P = -(kv * e_out) * d_kh
    Q = jnp.where(last(), kv * to_end, 0.0) * d_kbar
    dA_abT = split(jnp.where(causal(lt), mm(LL, _x3(P1, _t(P5))), 0.0))
    dA_qbT = split(jnp.where(causal(le), mm(LL, _x2(P1, do_s.T)), 0.0))
    d_bh = mm(LN, _x3(dA_abT, P2) + _x3(dA_qbT, P3))
    d_bbar = jnp.where(last(), mm(LN, _x3(P1, _t(P0))), 0.0)
    e_out, to_end = jnp.exp(mid() - G()), jnp.exp(gl() - G())
    bv = inp(b_ref)
    out(db_ref, d_bh * e_out + d_bbar * to_end)
    P = P - (bv * e_out) * d_bh
    put(Q + jnp.where(last(), bv * to_end, 0.0) * d_bbar, P0)  # Q (dS' is dead)
    # dr, da and dgm; b^ (P2), k^ (P3), S (P4)
    put(bh(), P2)
    put(kh(), P3)
    put(load(st_ref.at[bi, h, c]), P4)
    plgpu.commit_smem()
    dA_qb = split(jnp.where(causal(ge), mm(LL, _x2(do_s, _t(P1))), 0.0))
    dA_qk = split(jnp.where(causal(ge), mm(LL, [(do_s, v_s.T)]), 0.0))
    d_qt = mm(LN, _x3(dA_qb, P2) + _x3(dA_qk, P3))
    dq0 = jnp.where(first(), mm(LN, _x2(do_s, _t(P4))), 0.0)
    Gv = G()
    e_q, eq0 = jnp.exp(Gv - mid()), jnp.exp(Gv)
    rv = inp(r_ref)
    out(dr_ref, d_qt * e_q + dq0 * eq0)
    P = P + (rv * e_q) * d_qt + jnp.where(first(), rv * eq0, 0.0) * dq0
    dA_ab = split(jnp.where(causal(gt), mm(LL, _x3(P5, _t(P1))), 0.0))
    dA_ak = split(jnp.where(causal(gt), mm(LL, _x2(P5, v_s.T)), 0.0))
    d_at = mm(LN, _x3(dA_ab, P2) + _x3(dA_ak, P3))
    da0 = jnp.where(first(), mm(LN, _x3(P5, _t(P4))), 0.0)
    Gv = Gm()
    e_a, ea0 = jnp.exp(Gv - mid()), jnp.exp(Gv)
    av = inp(a_ref)
    out(da_ref, d_at * e_a + da0 * ea0)
    put(P, P1)  # u is dead
    put((av * e_a) * d_at + jnp.where(first(), av * ea0, 0.0) * da0, P5)  # dgm (dR is dead)
    # dw = M_>= P + M_> dgm + M_< Q + ones (diag(dec) S o dS')^T   (the last term: dec * diag(dS' S^T) in every row)
    KV = (N, N)
    put(rows(load(dec_ref.at[bi, h, c], ROW), KV) * load(st_ref.at[bi, h, c]) * load(dst_ref.at[bi, h, c]), P2)
    plgpu.commit_smem()
    ri, ci = iota(LL, 0), iota(LL, 1)
    tri = [jnp.where(m, 1.0, 0.0).astype(BF16) for m in (ci >= ri, ci > ri, ci < ri, ci >= 0)]
    out(dw_ref, mm(LN, _x2(tri[0], P1) + _x2(tri[1], P5) + _x2(tri[2], P0) + _x2(tri[3], _t(P2))))

  scratch = [swizzled((6, 2, L, N)), swizzled((L, N)), swizzled((L, N)), plgpu.Barrier(num_arrivals=2)]
  if interpret:
    scratch += [swizzled(LL) for _ in range(4)]
  out_type = tuple(jax.ShapeDtypeStruct((B, Tp, H, N), dt) for dt in out_dtypes)
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"),
                      scratch_types=tuple(scratch), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name="wkv7_chunk_grads")
  return kern(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states)
