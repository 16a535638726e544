"""The chunk-parallel input gradients of `pallas_gpu` WKV-7 as one Mosaic GPU kernel (Hopper, sm_90).

`chunk_grads` computes, for every chunk of L = 64 tokens, the gradients dr, dw, dk, dv, da, db of the chunk's inputs
given the state S entering the chunk (saved by the forward state pass) and the state gradient dS' after it (from the
backward state pass): the math of `common.chunk_backward` (spec section 2.3), the VJP of `common.chunk_forward` with
S held fixed (dS0 comes from the state pass). It recomputes the forward terms of the chunk (factors, the four
intra-chunk matrices, T = (I - A_ab)^{-1} by block doubling, u = T (A0 S + A_ak V)) with the numerics of `gpu._prep`:
bf16 tensor-core products with fp32 accumulation, "split-bf16 x3" (hi hi + hi lo + lo hi) where neither operand is
exact bf16, two passes (hi, lo) where one operand is exact bf16 (v, dO, 0/1 matrices).

Grid (C, H, B), one warpgroup per CTA, head dim N = L = 64 only: every tile is 64 x 64 and the slot plan reuses
[N, N] and [L, L] tiles for [L, N] values; at N = 128 the same plan would need 416 KiB of SMEM, so `gpu` keeps the
XLA gradients (`common.chunk_backward` vmapped) for N = 128.
All tensor-core operands are SMEM tiles (bf16, 128-byte swizzle), 26 tiles of 8 KiB = 208 KiB per CTA (Mosaic GPU's
lowering checks it against the 227 KiB limit), so one CTA per SM; the tiles are reused as their values die (the slot
plan is written at each step of `body`). Registers: a 64 x 64 fp32 value is 32 per thread; at most about seven are
live at once (the dk / db steps), masks and broadcast rows are rebuilt where used; not yet measured
(MOSAIC_GPU_DUMP_PTXAS=1 on a GPU). About 116 tensor-core products of 64 x 64 x 64 per chunk (x3 counted as 3),
30 of them in the recomputed inverse T.

The log-decay gradient is assembled as in `chunk_backward`, regrouped so that the last-segment terms cancel exactly:
    dw = M_>= P + M_> dgm + M_< Q + dec * diag(dS' S^T)      (M_op[i, j] = [j op i], 0/1 bf16 tiles)
with P = q~ dq~ + Q0 dQ0 - k^ dk^ - b^ db^ (dg without the Kbar / Bbar terms), dgm = a~ da~ + A0 dA0 and
Q = Kbar dKbar + Bbar dBbar; the last term enters as ones @ diag(...), every row the same.
"""

from __future__ import annotations

import math

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic_gpu_tiles import (
  COL, ROW, Mma, cols, compiler_params, interpret_params, iota, load, rows, store_split, swizzled,
)

F32 = jnp.float32
BF16 = jnp.bfloat16
L = 64  # tokens per chunk (= `gpu.L`)
SUPPORTED_HEAD_DIMS = (64,)  # N = 128 would need 416 KiB of SMEM with this tile plan; `gpu` runs XLA for it

__all__ = ["chunk_grads", "SUPPORTED_HEAD_DIMS"]


def _x3(lhs, rhs):
  """Mma pairs of a split-bf16 x3 product of two (hi, lo) SMEM tile pairs."""
  return [(lhs[0], rhs[0]), (lhs[0], rhs[1]), (lhs[1], rhs[0])]


def _x2(lhs, rhs):
  """Mma pairs of a product with one exact bf16 side: lhs or rhs is a single tile, the other a (hi, lo) pair."""
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
           dr_ref, dw_ref, dk_ref, dv_ref, da_ref, db_ref,
           qt_s, at_s, kh_s, bh_s, u_s, x_s, m1_s, m2_s, m3_s, m4_s, s_s, ds_s, v_s, do_s, bar):
    pair = lambda ref: (ref.at[0], ref.at[1])  # noqa: E731
    QT, AT, KH, BH, U, X, M1, M2, M3, M4, S, DS = map(
      pair, (qt_s, at_s, kh_s, bh_s, u_s, x_s, m1_s, m2_s, m3_s, m4_s, s_s, ds_s))
    mm = Mma(None)  # every operand is an SMEM tile
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

    rN = iota(LN, 0)

    def G():  # chunk-local inclusive cumulative log-decay
      return load(g_ref.at[bi, pl.ds(c * L + 1, L), h])

    def Gm():  # exclusive
      return jnp.where(rN == 0, 0.0, load(g_ref.at[bi, pl.ds(c * L, L), h]))

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

    def same():
      return seg_rows(LL) == cols(load(s_ref.at[bi, tok], COL), LL)

    def strict():
      return same() & (iota(LL, 0) > iota(LL, 1))

    def incl():
      return same() & (iota(LL, 0) >= iota(LL, 1))

    # --- forward recompute: factors (QT, AT, KH, BH), T (M1), A_ak (M2), A_qb (M3), A_qk (M4), u (U)
    put(inp(k_ref) * jnp.exp(mid() - G()), KH)
    put(inp(b_ref) * jnp.exp(mid() - G()), BH)
    put(inp(a_ref) * jnp.exp(Gm() - mid()), AT)
    put(inp(r_ref) * jnp.exp(G() - mid()), QT)
    plgpu.commit_smem()
    A_ab = jnp.where(strict(), mm(LL, _x3(AT, _t(BH))), 0.0)
    ri, ci = iota(LL, 0), iota(LL, 1)
    # T = (I - A_ab)^{-1} by block doubling (`common.unit_lower_inverse`): D <- D + (D A_off) D; M2..M4 as scratch
    D = jnp.where(ri == ci, 1.0, 0.0) + jnp.where(((ri >> 1) == (ci >> 1)) & (ri != ci), A_ab, 0.0)
    for shift in range(1, levels):
      off = jnp.where(((ri >> (shift + 1)) == (ci >> (shift + 1))) & ((ri >> shift) != (ci >> shift)), A_ab, 0.0)
      put(off, M2)
      put(D, M3)
      plgpu.commit_smem()
      put(mm(LL, _x3(M3, M2)), M4)
      plgpu.commit_smem()
      D = D + mm(LL, _x3(M4, M3))
    put(D, M1)
    put(jnp.where(strict(), mm(LL, _x3(AT, _t(KH))), 0.0), M2)
    put(jnp.where(incl(), mm(LL, _x3(QT, _t(BH))), 0.0), M3)
    put(jnp.where(incl(), mm(LL, _x3(QT, _t(KH))), 0.0), M4)
    put(load(st_ref.at[bi, h, c]), S)
    put(jnp.where(first(), inp(a_ref) * jnp.exp(Gm()), 0.0), DS)  # A0 (DS is free until dS' arrives)
    plgpu.commit_smem()
    plgpu.barrier_wait(bar)  # v and dO are in SMEM
    R = mm(LN, _x3(DS, S) + _x2(M2, v_s))  # A0 S + A_ak V
    put(R, DS)
    plgpu.commit_smem()
    put(mm(LN, _x3(M1, DS)), U)  # u = T R
    # --- S' = diag(dec) S + Bbar^T u + Kbar^T V and o = Q0 S + A_qb u + A_qk V, backward to du, dR = T^T du, dv
    dS_next = load(dst_ref.at[bi, h, c])
    d_dec = jnp.sum(load(st_ref.at[bi, h, c]) * dS_next, axis=1) * load(dec_ref.at[bi, h, c], ROW)  # [N] (ROW)
    put(dS_next, DS)
    put(jnp.where(last(), inp(b_ref) * jnp.exp(gl() - G()), 0.0), X)  # Bbar
    plgpu.commit_smem()
    du = mm(LN, _x3(X, DS) + _x2(_t(M3), do_s))  # Bbar dS' + A_qb^T dO
    put(jnp.where(last(), inp(k_ref) * jnp.exp(gl() - G()), 0.0), X)  # Kbar
    plgpu.commit_smem()
    dv = mm(LN, _x3(X, DS) + _x2(_t(M4), do_s))  # Kbar dS' + A_qk^T dO
    put(du, X)
    plgpu.commit_smem()
    put(mm(LN, _x3(_t(M1), X)), X)  # dR = T^T du
    plgpu.commit_smem()
    out(dv_ref, dv + mm(LN, _x3(_t(M2), X)))  # + A_ak^T dR
    # --- the four intra-chunk matrix gradients: dA_ab (M1), dA_ak (M2), dA_qb (M3), dA_qk (M4)
    put(jnp.where(strict(), mm(LL, _x3(X, _t(U))), 0.0), M1)
    put(jnp.where(strict(), mm(LL, _x2(X, v_s.T)), 0.0), M2)
    put(jnp.where(incl(), mm(LL, _x2(do_s, _t(U))), 0.0), M3)
    put(jnp.where(incl(), mm(LL, [(do_s, v_s.T)]), 0.0), M4)
    plgpu.commit_smem()
    # dk, db (with the Kbar / Bbar terms), P and Q
    e_out, to_end = jnp.exp(mid() - G()), jnp.exp(gl() - G())
    kv = inp(k_ref)
    d_kh = mm(LN, _x3(_t(M2), AT) + _x3(_t(M4), QT))
    d_kbar = jnp.where(last(), mm(LN, _x2(v_s, _t(DS))), 0.0)
    out(dk_ref, d_kh * e_out + d_kbar * to_end)
    P = -(kv * e_out) * d_kh
    Q = jnp.where(last(), kv * to_end, 0.0) * d_kbar
    e_out, to_end = jnp.exp(mid() - G()), jnp.exp(gl() - G())
    bv = inp(b_ref)
    d_bh = mm(LN, _x3(_t(M1), AT) + _x3(_t(M3), QT))
    d_bbar = jnp.where(last(), mm(LN, _x3(U, _t(DS))), 0.0)
    out(db_ref, d_bh * e_out + d_bbar * to_end)
    P = P - (bv * e_out) * d_bh
    put(Q + jnp.where(last(), bv * to_end, 0.0) * d_bbar, DS)  # Q (dS' is dead)
    # dr, da and dgm
    Gv = G()
    e_q, eq0 = jnp.exp(Gv - mid()), jnp.exp(Gv)
    rv = inp(r_ref)
    d_qt = mm(LN, _x3(M3, BH) + _x3(M4, KH))
    dq0 = jnp.where(first(), mm(LN, _x2(do_s, _t(S))), 0.0)
    out(dr_ref, d_qt * e_q + dq0 * eq0)
    put(P + (rv * e_q) * d_qt + jnp.where(first(), rv * eq0, 0.0) * dq0, U)  # P (u is dead)
    Gv = Gm()
    e_a, ea0 = jnp.exp(Gv - mid()), jnp.exp(Gv)
    av = inp(a_ref)
    d_at = mm(LN, _x3(M1, BH) + _x3(M2, KH))
    da0 = jnp.where(first(), mm(LN, _x3(X, _t(S))), 0.0)
    out(da_ref, d_at * e_a + da0 * ea0)
    put((av * e_a) * d_at + jnp.where(first(), av * ea0, 0.0) * da0, X)  # dgm (dR is dead)
    # dw = M_>= P + M_> dgm + M_< Q + ones diag(dec * d_dec)
    ri, ci = iota(LL, 0), iota(LL, 1)
    put(jnp.where(ri == ci, rows(d_dec, LL), 0.0), QT)
    for mat, dst in (((ci >= ri), M1[0]), ((ci > ri), M1[1]), ((ci < ri), M2[0]), (ci >= 0, M2[1])):
      dst[...] = jnp.where(mat, 1.0, 0.0).astype(BF16)
    plgpu.commit_smem()
    out(dw_ref, mm(LN, _x2(M1[0], U) + _x2(M1[1], X) + _x2(M2[0], DS) + _x2(M2[1], QT)))

  pairs = [swizzled((2, L, N)) for _ in range(6)] + [swizzled((2, L, L)) for _ in range(4)]
  pairs += [swizzled((2, N, N)) for _ in range(2)]
  scratch = pairs + [swizzled((L, N)), swizzled((L, N)), plgpu.Barrier(num_arrivals=2)]
  out_type = tuple(jax.ShapeDtypeStruct((B, Tp, H, N), dt) for dt in out_dtypes)
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"),
                      scratch_types=tuple(scratch), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name="wkv7_chunk_grads")
  return kern(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states)
