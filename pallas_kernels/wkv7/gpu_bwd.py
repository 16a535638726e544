"""The chunk-parallel input gradients of `pallas_gpu` WKV-7 as one Mosaic GPU kernel (Hopper, sm_90).

`chunk_grads` computes, for every chunk of L = 64 tokens, the gradients dr, dw, dk, dv, da, db of the chunk's inputs
given the state S entering the chunk (saved by the forward state pass) and the state gradient dS' after it (from the
backward state pass): the math of `common.chunk_backward` (spec section 2.3), the VJP of `common.chunk_forward` with
S held fixed (dS0 comes from the state pass). What the other kernels already computed it loads rather than rebuilds:
the split inverse T = (I - A_ab)^{-1} (from `gpu._prep`), u = T (A0 S + A_ak V) (from the forward state pass), the
state's share of du, Bbar dS' (from the backward state pass), and S and dS' as bf16 (jax-linear-attention saves
its states in bf16 too). It recomputes the factors and three intra-chunk matrices A_ak, A_qk, A_qb: bf16 tensor-core
products with fp32 accumulation, "split-bf16 x3" (hi hi + hi lo + lo hi) where neither operand is exact bf16, two
passes (hi, lo) where one operand is exact bf16 (v, dO, u, S, dS', 0/1 matrices), one where both are; rounded once to
bf16 (one pass): the factors of the three recomputed matrices, and the matrix gradients dA (so the factor gradients
are two passes of dA with the split factors). Rounding the factors of the factor gradients instead tripled dw's
error (the Mosaic GPU interpreter against float64: max 7.4e-3 against 1.8e-3 over 20 cases), as dw's regrouping then
cancels sums whose terms carry different roundings; with dA rounded, dw max 2.6e-3, every output <= 5.5e-3 as before.

Grid (C, H, B), one warpgroup per 64-wide block kb of the K dimension (state rows, key channels), head dims N = 64
and 128. All tiles are 64 rows. The first phase (the forward recompute, du, dR, dv) runs on the first warpgroup; then
each warpgroup computes and writes the 64 columns kb of dr, dw, dk, da, db (at N = 128 both recompute the
register-only matrix gradients below). At N = 128 the two warpgroups share the CTA's SMEM and run 8 warps per SM, as
two N = 64 CTAs do: with one warpgroup walking both blocks (4 warps per SM) the kernel took 10.12 ms at K5 (8, 4096,
16, 128) on an H100, with two 5.95 (twelfth session). SMEM (bf16): one stack `wide` [5, L, N] of the pair W2 and the
tiles v, dO, u (so that a loop index can pick them; u's tile holds the forward recompute's right factors k^, b^ until u
arrives by TMA), the [L, L] pairs `square` (T, A_ak, A_qk and, N = 128, A_qb in the first phase, N = L: A_qb takes W2;
then Q0, Q1, Q3 of each warpgroup), the state tile [N, N] (dS', whose 64-row block kb is replaced by S's by TMA once
the role loop is done with it, after role b) and, N = 64 only, the inputs k and a (by TMA at the start: the kernel
reads k four times and a three; the others come from GMEM into registers each time):
  N = 64:  14 tiles of 8 KiB = 112 KiB per CTA, so two CTAs fit on an H100 SM (113 KiB each; two warpgroups on
           one chunk instead, the roles split and every input, G and S staged, one CTA per SM, took 4.26 ms at
           K1 against 3.49: fifteenth session, docs/benchmarks.md; the module is in git at bbaad13);
  N = 128: 208 KiB, one CTA (two warpgroups) per SM
(tests/ops/wkv7_pallas_test.py checks both figures through Mosaic GPU's lowering). Roles with a single product issue
it twice and halve the sum instead of adding a product with a tile of zeros, which freed the tile for k and a
(fourteenth session). To fit, operands used only
as non-transposed lhs stay in registers (split bf16), values are recomputed rather than kept across phases (the
factors q~, a~, k^, b^ are rebuilt in the gradient phase), and the four matrix gradients dA are never stored: each
is a product into registers in the orientation where it is used (dA for dq~, da~; dA^T for dk^, db^), so those 8
products run twice. The slot plan is written at each step of `body`. Where the cycles go, by region of `body`
(`benchmarks/kernel_regions.py`, K1 on an H100, thirteenth session, before the attention recompute was written out):
105.6k cycles per chunk and warpgroup, of them the attention recompute 26.3k, the role loop 65.7k (dx 16.7k, the
other pair's factors 11.9k, dw 11.6k, dA 10.8k): the regions that load inputs and G from GMEM into registers take
most. Saving the forward's factors in `gpu._prep` instead (taken by TMA here) cut this kernel 3.82 -> 3.38 ms at K1
but `_prep` grew 2.25 -> 2.71 (its extra stores; 537 MB more residuals): not kept. What staging loads in SMEM would
save, measured with what-if variants that load from an SMEM tile instead (`benchmarks/kernel_variants.py`, K1, one
process, fourteenth session): every input 0.5-0.6 ms, G 0.4 ms, dw's 0/1 matrices 0.2 ms; k and a in SMEM (the
tiles the SMEM has room for) took the kernel 3.66 -> 3.41 ms on an H100, while G in SMEM (in place of k and a) gained
0.1 ms and dw's operands taken by TMA into idle tiles inside the role loop cost 0.36 ms (H200). Registers: a 64 x 64
fp32 value is 32 per thread (64 x 128: 64), a split bf16 one as many; about seven 64 x 64 values are live at most (the
dk / db steps).
ptxas (H100): 255 registers, 292 / 216 bytes of spill stores / loads at N = 64, 1112 / 1016 at N = 128 (twelfth
session; 1676 / 2228 at N = 64 when the kernel rebuilt T, u and the states' terms itself). Issuing the independent
products of the role loop and of dv together (`Mma.scope`) made it slower (K1 3.94 / 3.98 -> 4.42 / 4.51 ms,
eleventh session): their results live at once, in a kernel already at 255 registers. dR rounded to bf16 in the role
loop (49 products instead of 54 + 7 zero ones; 4ec4602, reverted by 39fb7e3) took it 3.99 -> 3.72 ms at K1 and
passed the float64 tests on the H100 (max 5.6e-3), but on the worst-conditioned inputs ("aligned") da reached
1.06e-2 against float64 for one seed (8.5e-3 before), over the tests' 1e-2: not kept. The parts that repeat with
other operands (the gradients of k, b, r, a; the forward recompute's three matrices) are loop bodies whose operands
the loop index picks: fully unrolled, the kernel was one straight block of about 11,400 PTX instructions per thread
that stalled on instruction fetch and took twice the time (docs/benchmarks.md, seventh session). At N = 64, 53
tensor-core products of 64 x 64 x 64 per chunk (x3 counted as 3; with dS' S^T for dw's diagonal term since the
twelfth session, two fewer with dw's two products since the fourteenth; 68 with split factors and dA);
rebuilding T, u and Bbar dS' and splitting the float32 states took 124.

The log-decay gradient is assembled as in `chunk_backward`, regrouped so that the last-segment terms cancel exactly:
    dw = M_>= P + M_> dgm + M_< Q + dec * diag(dS' S^T)      (M_op[i, j] = [j op i], 0/1 bf16 matrices)
       = M_>= (P + dgm - Q) - dgm + ones (Q + D)      (M_> = M_>= - I, M_< = ones - M_>=)
with P = q~ dq~ + Q0 dQ0 - k^ dk^ - b^ db^ (dg without the Kbar / Bbar terms), dgm = a~ da~ + A0 dA0,
Q = Kbar dKbar + Bbar dBbar and D = diag(dec) (dS' S^T o I): ones (Q + D) has the column sums of Q + D in every row,
with dS' S^T one product of the state rows kb (no [L, N] pair of dec S o dS' in SMEM: at N = 128 the two warpgroups'
tiles would not fit). Each of the two products is its own, and their 0/1 matrices come from GMEM (see the note in
`body`).
"""

from __future__ import annotations

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.mosaic_gpu_tiles import (
  CHUNK, COL, HEAD_DIMS, ROW, cols, compiler_params, interpret_params, iota, load, Mma, rows, store_split,
  swizzled, transposed, x2, x3,
)

F32 = jnp.float32
BF16 = jnp.bfloat16
L = CHUNK  # tokens per chunk

__all__ = ["chunk_grads", "HEAD_DIMS"]


def chunk_grads(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, t_hi, t_lo, kbar, u, du_state, out_dtypes, *,
                interpret=False):
  """(dr, dw, dk, dv, da, db), each [B, Tp, H, N] in `out_dtypes` (a sequence of six dtypes).

  r, k, v, a, b, d_o: [B, Tp, H, N] bf16 (Tp a multiple of L); g_pad [B, 1 + Tp, H, N] float32 (a zero row, then
  the chunk-local inclusive cumulative log-decay); seg [B, Tp] float32 segment index inside each chunk;
  dec [B, H, C, N] float32 chunk decay (0 for chunks with a segment start); states [B, H, C, N, N] bf16 the state
  entering each chunk; d_states [B, H, C, N, N] bf16 the state gradient after each chunk; t_hi, t_lo [B, H, C, L, L]
  bf16 the split inverse T = (I - A_ab)^{-1} of each chunk (saved by `gpu._prep`); kbar [B, H, Tp, N] bf16 the
  state-side factor Kbar that the forward state pass took (`gpu._prep`'s); u [B, H, Tp, N] bf16 the WY
  values u = T (A0 S + A_ak V) of each chunk (saved by the forward state pass); du_state [B, H, Tp, N] bf16 their
  gradient through the state, Bbar dS' (from the backward state pass)."""
  B, Tp, H, N = r.shape
  if N not in HEAD_DIMS:
    raise ValueError(f"chunk_grads: head dim {N} not in {HEAD_DIMS}")
  C = Tp // L
  LN, LL, KB = (L, N), (L, L), N // L  # KB: 64-wide blocks of the K (state row / key channel) dimension

  W2H, W2L, V_, DO_, U_ = range(5)  # tiles of `wide`
  staged = KB == 1  # N = 64: k and a in SMEM (by TMA), in the SMEM a CTA has left (see `body`)

  def body(r_ref, k_ref, v_ref, a_ref, b_ref, g_ref, s_ref, dec_ref, st_ref, do_ref, dst_ref, thi_ref, tlo_ref,
           kbar_ref, u_ref, dus_ref, tri_ref, dr_ref, dw_ref, dk_ref, dv_ref, da_ref, db_ref, wide, square, st_s,
           bar, u_bar, st_bar, *rest):
    # `wide` [5, L, N]: the (hi, lo) pair W2 and the tiles v, dO, u (one stack, so that a role's operands are picked
    # by index; u's tile holds the right factors k^, b^ of the forward recompute before u arrives); `square`
    # [3 KB, 2, L, L] (hi, lo) pairs: T, A_ak, A_qk and (N > L) A_qb in the first phase (N = L: A_qb takes W2, which
    # du / dR take when it dies), then Q0, Q1, Q3 of each warpgroup's K block in the role loop
    W2 = (wide.at[W2H], wide.at[W2L])
    v_s, do_s, u_s = (wide.at[i] for i in (V_, DO_, U_))
    def pair(i):  # the (hi, lo) pair i of `square`
      return square.at[i, 0], square.at[i, 1]

    T_s, Aak_s, Aqk_s = pair(0), pair(1), pair(2)  # the first phase's pairs
    Aqb_s = pair(3) if KB > 1 else W2
    wg = lax.axis_index("wg")
    if staged:  # the tiles of k and a, and their barrier
      (in_s, in_bar), phase_bar, stage = rest[:2], None, rest[2:]
    else:  # (N > L) the first phase is done
      in_s, phase_bar, stage = None, rest[0], rest[1:]
    lhs_stage = None
    if interpret:  # register lhs operands go through `stage`, per warpgroup
      lhs_stage = {LL: [stage[0].at[wg, i] for i in range(4)]} | ({LN: [stage[1].at[wg, i] for i in range(2)]}
                                                                  if KB > 1 else {})
    mm = Mma(lhs_stage)
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok = pl.ds(c * L, L)
    def put(x, dst):  # x (float32 registers) -> the (hi, lo) pair dst
      store_split(x, *dst)

    def ks(kb):  # the K columns of block kb (None: all)
      return slice(None) if kb is None else pl.ds(kb * L, L)

    def shape(kb):
      return LN if kb is None else LL

    in_smem = (k_ref, a_ref) if staged else ()  # the inputs in SMEM (k is read four times, a three)

    def inp(ref, kb=None):
      for i, x in enumerate(in_smem):
        if ref is x:
          return load(in_s.at[i]).astype(F32)
      return load(ref.at[bi, tok, h, ks(kb)]).astype(F32)

    def out(ref, x, kb):
      ref.at[bi, tok, h, ks(kb)][...] = x.astype(ref.dtype)

    def st_rows(kb):  # rows kb of the state tile: dS', then (fetched into it during block kb) S
      return st_s.at[ks(kb)]

    def g_row(t):  # the row of g_pad that holds G of the chunk's token t
      return c * L + 1 + t

    def G(kb=None):  # chunk-local inclusive cumulative log-decay
      return load(g_ref.at[bi, pl.ds(g_row(0), L), h, ks(kb)])

    def Gm(kb=None):  # the exclusive one: G one row down, its first row 0
      return jnp.where(iota(shape(kb), 0) == 0, 0.0, load(g_ref.at[bi, pl.ds(g_row(-1), L), h, ks(kb)]))

    # masks and broadcast rows are rebuilt where they are used (cheap loads and iotas) rather than kept live
    def mid(kb=None):  # the centring row m
      return cols(load(g_ref.at[bi, g_row((L - 1) // 2), h, ks(kb)], COL), shape(kb))

    def gl(kb=None):  # the chunk's last row
      return cols(load(g_ref.at[bi, g_row(L - 1), h, ks(kb)], COL), shape(kb))

    seg_i, seg_last = load(s_ref.at[bi, tok], ROW), s_ref[bi, c * L + L - 1]  # loaded once (3 registers)

    def seg_rows(shape):
      return rows(seg_i, shape)

    def causal(s, t):  # same segment and s (row - column) >= t: the masks of A (s 1; t 1: >, t 0: >=) and of A^T
      same = seg_rows(LL) == cols(load(s_ref.at[bi, tok], COL), LL)  # (a COL vector: 16 registers, not kept)
      return same & (s * (iota(LL, 0) - iota(LL, 1)) >= t)

    K_, B_, R_, A_ = range(4)
    role_refs = ((k_ref, dk_ref), (b_ref, db_ref), (r_ref, dr_ref), (a_ref, da_ref))

    def pick(j, values):  # values[j] for a traced role index j (int32 scalars)
      out = jnp.int32(values[-1])
      for i in range(len(values) - 2, -1, -1):
        out = jnp.where(j == i, jnp.int32(values[i]), out)
      return out

    def role_input(j, kb=None):  # the role's input block (float32) and its cumulative log-decay X (G, or Gm for a)
      x = lax.switch(j, [lambda ref=ref: inp(ref, kb) for ref, _ in role_refs])
      excl = jnp.where(j == A_, 1, 0)  # Gm is G one row down: one load at a role-picked row (a cond of two: 4% slower)
      X = load(g_ref.at[bi, pl.ds(g_row(0) - excl, L), h, ks(kb)])
      return x, jnp.where(iota(shape(kb), 0) < excl, 0.0, X)

    def sigma(j):
      return jnp.where(j < R_, -1.0, 1.0).astype(F32)

    def factor(j, kb=None):  # the role's chunk factor x e_factor (k^, b^, q~, a~)
      x, X = role_input(j, kb)
      return x * jnp.exp(sigma(j) * (X - mid(kb)))

    # Slot plan: `wide` (W2, v, dO, u: the right factor before), `square` (T, A_ak, A_qk, A_qb; then each
    # warpgroup's Q0, Q1, Q3), the state tile [N, N] (dS', its 64-row blocks replaced by S's as the gradient phase
    # goes) and (N = 64) k and a.
    # Operands used only as non-transposed lhs stay in registers (split) and values are recomputed rather than
    # kept across phases. The parts that repeat with other operands are loop bodies over an index (roles,
    # products) that picks the operands: unrolled, the kernel stalled on fetching its instructions
    # (docs/benchmarks.md, seventh session). The first phase (the forward recompute, du, dR, dv) runs on the first
    # warpgroup; the role loop on every warpgroup, one 64-column K block each (N = 128: two warpgroups, 8 warps
    # per SM as two N = 64 CTAs have).
    @jax.named_scope("first_phase")  # (the regions of the kernel in `mosaic_gpu_tiles.profiled` traces)
    def first_phase():
      for i, ref in enumerate(in_smem):
        plgpu.copy_gmem_to_smem(ref.at[bi, tok, h], in_s.at[i], in_bar)
      for src, dst in ((v_ref.at[bi, tok, h], v_s), (do_ref.at[bi, tok, h], do_s), (thi_ref.at[bi, h, c], T_s[0]),
                       (tlo_ref.at[bi, h, c], T_s[1]), (dst_ref.at[bi, h, c], st_s)):
        plgpu.copy_gmem_to_smem(src, dst, bar)  # v, dO, T (the forward's), dS'

      # forward recompute: A_qk = M_>=(q~ k^T), A_ak = M_>(a~ k^T), A_qb = M_>=(q~ b^T), the right factor (k^, then
      # b^) in u's tile (u arrives after), while T arrives by TMA. Written out, without a loop or a switch around the
      # loads: G and m are loaded once, e^{m-G} serves k^ and b^, q~ two products (a loop body with a factor per role
      # took 26k of the kernel's 106k cycles per chunk at K1 on an H100, `benchmarks/kernel_regions.py`)
      def attention(left, dst, t, right=u_s):  # dst <- M(left right^T), mask [row - col >= t]
        put(jnp.where(causal(1, t), mm(LL, [(left, right.T)]), 0.0), dst)
        plgpu.commit_smem()

      with jax.named_scope("attention"):
        if staged:
          plgpu.barrier_wait(in_bar)
        if KB == 1:  # k^ then b^ through u's tile (A_qb takes W2)
          m, Gt = mid(), G()
          e_out = jnp.exp(m - Gt)
          u_s[...] = (inp(k_ref) * e_out).astype(BF16)  # k^
          plgpu.commit_smem()
          b_hat = (inp(b_ref) * e_out).astype(BF16)
          q_til = (inp(r_ref) * jnp.exp(Gt - m)).astype(BF16)
          attention(q_til, Aqk_s, 0)
          attention((inp(a_ref) * jnp.exp(Gm() - m)).astype(BF16), Aak_s, 1)  # a~
          u_s[...] = b_hat  # (the products that read k^ are done)
          plgpu.commit_smem()
          attention(q_til, Aqb_s, 0)
        else:  # k^, b^ staged together in W2 (A_qb has a pair of its own): no b^ kept live (K5: 7.94 -> 7.07 ms)
          e_out = jnp.exp(mid() - G())
          W2[0][...] = (inp(k_ref) * e_out).astype(BF16)
          W2[1][...] = (inp(b_ref) * e_out).astype(BF16)
          plgpu.commit_smem()
          q_til = (inp(r_ref) * jnp.exp(G() - mid())).astype(BF16)
          attention(q_til, Aqk_s, 0, W2[0])
          attention(q_til, Aqb_s, 0, W2[1])
          attention((inp(a_ref) * jnp.exp(Gm() - mid())).astype(BF16), Aak_s, 1, W2[0])  # a~
      plgpu.copy_gmem_to_smem(u_ref.at[bi, h, tok], u_s, u_bar)  # (the products that read b^ are done)
      plgpu.barrier_wait(bar)  # v, dO, T and dS' are in SMEM
      # du = Bbar dS' (the backward state pass's) + A_qb^T dO, dR = T^T du, dv = Kbar dS' + A_qk^T dO + A_ak^T dR
      with jax.named_scope("du_dR"):
        put(load(dus_ref.at[bi, h, tok]).astype(F32) + mm(LN, x2(transposed(Aqb_s), do_s)), W2)
        plgpu.commit_smem()
        put(mm(LN, x3(transposed(T_s), W2)), W2)  # dR
        plgpu.commit_smem()
      with jax.named_scope("dv"):
        dv = mm(LN, x2(transposed(Aqk_s), do_s) + x3(transposed(Aak_s), W2))
        for kb in range(KB):
          # Kbar as the forward's state pass took it (bf16): one load, not k, G, g_last, a split and two passes
          dv = dv + mm(LN, [(load(kbar_ref.at[bi, h, tok, ks(kb)]), st_rows(kb))])
        out(dv_ref, dv, None)

    if KB == 1:
      first_phase()
    else:
      @pl.when(wg == 0)
      def _():
        first_phase()
        plgpu.barrier_arrive(phase_bar)  # the other warpgroups wait for dR and the free `square`

      @pl.when(wg == 1)  # (`wg != 0`: ptxas spilled 908 bytes at K5, not 356)
      def _():
        plgpu.barrier_wait(phase_bar)
    plgpu.barrier_wait(u_bar)  # u is in SMEM

    # live: dR (W2), v, dO, u, dS'. The rest goes by 64-column blocks kb of dr, dw, dk, da, db (block kb on warpgroup
    # kb), and inside a block by a loop over the four inputs ("roles" k, b, r, a: one body, so the code is fetched
    # once; unrolled, the kernel's instruction fetch stalled it). Role j's gradient: its two matrix gradients dA0, dA1
    # (products into registers, masked, split for use as register lhs), d (its chunk factor) = dA0 Q0 + dA1 Q1 with the
    # other pair's factors in Q0, Q1 (a~, q~ for k, b; b^, k^ for r, a), d (its state-side factor) = side_mask o
    # (Y S^T or Y dS'^T), and dx = d_factor e_factor + d_side e_side:
    #   role  dA0                dA1                Y    X    sigma  tau  side_mask
    #   k     M_<  (v dR^T)      M_<= (v dO^T)      v    G    -1     1    last segment (Kbar)
    #   b     M_<  (u dR^T)      M_<= (u dO^T)      u    G    -1     1    last segment (Bbar)
    #   r     M_>= (dO u^T)      M_>= (dO v^T)      dO   G    +1     0    first segment (entering state)
    #   a     M_>  (dR u^T)      M_>  (dR v^T)      dR   Gm   +1     0    first segment
    # with e_factor = exp(sigma (X - m)), e_side = exp(sigma X + tau g_last), x e_factor the role's own factor
    # (k^, b^, q~, a~). The roles' terms of dw: P = q~ dq~ + Q0 dQ0 - k^ dk^ - b^ db^ + dgm, Q (k, b side terms).
    def wide_at(j, idx):  # the `wide` tile idx[j]
      return wide.at[pick(j, idx)]

    def products(lhs, rhs, second, scale):  # scale (lhs rhs^T + second[0] second[1]^T), SMEM operands. Roles with
      # one product issue it twice, halved (scale 0.5, exact but for float32 rounding): not a branch (a `lax.cond`
      # around loads in a hot loop cost more than the loads, eighth session) and no tile of zeros
      return scale * mm(LL, [(lhs, rhs.T), (second[0], second[1].T)])

    def masked(s, t, product):  # a matrix gradient: the product masked by causal(s, t), rounded once to bf16 (a
      # register lhs; the same rounded dA enters both sums of dw's regrouping, so their terms still cancel)
      return jnp.where(causal(s, t), product, 0.0).astype(BF16)

    Y = (V_, U_, DO_, W2H)  # the roles' lhs in `wide`
    kb = wg  # this warpgroup's K block
    Q0, Q1, Q3 = pair(3 * kb), pair(3 * kb + 1), pair(3 * kb + 2)  # (warpgroup 0: the first phase's T, A_ak, A_qk)

    @jax.named_scope("role")
    def role(j, P):
      @pl.when(j == K_)  # the other pair's factors: a~ (Q0), q~ (Q1) for k, b
      @jax.named_scope("role_factors")
      def _():
        def put_factor(i, _):  # a, r
          x = factor(A_ - i, kb)
          lax.switch(i, [lambda dst=dst: put(x, dst) for dst in (Q0, Q1)])

        lax.fori_loop(0, 2, put_factor, None)
        plgpu.commit_smem()

      @pl.when(j == R_)  # b^ (Q0), k^ (Q1) for r, a: one e^{m-G}, one load of G and m (K1 3.30 -> 3.25 ms, H100)
      @jax.named_scope("role_factors")
      def _():
        e = jnp.exp(mid(kb) - G(kb))
        put(inp(b_ref, kb) * e, Q0)
        put(inp(k_ref, kb) * e, Q1)
        plgpu.commit_smem()

      y = wide_at(j, Y)
      y_lo = wide_at(j, (V_, U_, DO_, W2L))  # dR's lo tile for role a, else y (its single products issued twice)
      half = jnp.where(j == A_, 1.0, 0.5).astype(F32)
      sign = pick(j, (-1, -1, 1, 1))
      with jax.named_scope("dA"):
        rhs0 = wide_at(j, (W2H, W2H, U_, U_))
        dA0 = products(y, rhs0, (y_lo, wide_at(j, (W2L, W2L, U_, U_))), jnp.where(j == R_, 0.5, 1.0).astype(F32))
        dA0 = masked(sign, pick(j, (1, 1, 0, 1)), dA0)
        rhs1 = wide_at(j, (DO_, DO_, V_, V_))
        dA1 = products(y, rhs1, (y_lo, rhs1), half)
        dA1 = masked(sign, pick(j, (0, 0, 0, 1)), dA1)

      with jax.named_scope("d_fac"):
        d_fac = mm(LL, x2(dA0, Q0) + x2(dA1, Q1))

      @pl.when(j == R_)  # S rows kb have arrived in the state tile (fetched after role b)
      def _():
        plgpu.barrier_wait(st_bar.at[kb])

      with jax.named_scope("d_side"):
        d_side = products(y, st_rows(kb), (y_lo, st_rows(kb)), half)
        side = seg_rows(LL) == jnp.where(j < R_, seg_last, 0.0)
        d_side = jnp.where(side, d_side, 0.0)
      with jax.named_scope("dx"):
        x, X = role_input(j, kb)
        e_fac = jnp.exp(sigma(j) * (X - mid(kb)))
        e_side = jnp.exp(sigma(j) * X + jnp.where(j < R_, 1.0, 0.0).astype(F32) * gl(kb))
        # dx's two terms, then dw's as x times them: three float32 values live, not five (x, the e's, the d's; ptxas
        # spills 204 -> 156 bytes at N = 64, chunk_grads 3.47 -> 3.41 ms at K1 on an H100, sixteenth session)
        d_fac, d_side = d_fac * e_fac, d_side * e_side
        lax.switch(j, [lambda dx_ref=dx_ref: out(dx_ref, d_fac + d_side, kb) for _, dx_ref in role_refs])

      @pl.when(j == B_)  # the tensor cores are done with dS' rows kb: S's take their place
      def _():
        plgpu.copy_gmem_to_smem(st_ref.at[bi, h, c, ks(kb)], st_rows(kb), st_bar.at[kb])

      term_fac, term_side = x * d_fac, x * d_side

      @pl.when(j == K_)  # Q = the k and b side terms (Kbar dKbar + Bbar dBbar), kept in Q3 (A_qk is dead)
      def _():
        put(term_side, Q3)

      @pl.when(j == B_)
      def _():
        put(term_side + Q3[0][...].astype(F32) + Q3[1][...].astype(F32), Q3)

      P = P + sigma(j) * term_fac + jnp.where(j < R_, 0.0, 1.0).astype(F32) * term_side

      @pl.when(j == A_)
      @jax.named_scope("dw")
      def _():
        # dw = M_>= P - dgm + M_< Q + dec * diag(dS' S^T) in every row (P including dgm: M_>= P + M_> dgm = M_>= (P +
        # dgm) - dgm), with M_< = ones - M_>=: M_>= (P - Q) in Q0 and ones (Q + D) in Q3, D the diagonal of
        # dS'_kb S_kb^T (dS' rows exact bf16, S rows from the state tile), masked and scaled
        Q = Q3[0][...].astype(F32) + Q3[1][...].astype(F32)
        put(P - Q, Q0)
        # register lhs operands from GMEM: the 0/1 matrices are data (built with iota in registers, they gave NaN or
        # wrong dw on the H100, 2026-11-26, depending on register allocation); taken by TMA into the role loop's
        # idle tiles instead, the kernel took 0.36 ms more at K1 (H200, fourteenth session). Each is loaded just before
        # the products that take it (all three before diag: ptxas spills 156 -> 92 bytes, 3.27 -> 3.16 ms at K1, H100)
        diag = mm(LL, [(load(dst_ref.at[bi, h, c, ks(kb)]), st_rows(kb).T)])
        dec_cols = cols(load(dec_ref.at[bi, h, c, ks(kb)], COL), LL)
        put(Q + jnp.where(iota(LL, 0) == iota(LL, 1), diag * dec_cols, 0.0), Q3)
        plgpu.commit_smem()
        ones_terms = ((load(tri_ref.at[0]), Q0), (load(tri_ref.at[1]), Q3))  # (loaded here, not before diag)
        parts = [mm(LL, x2(m, x)) for m, x in ones_terms]  # one accumulator per term
        out(dw_ref, sum(parts) - (term_fac + term_side), kb)  # (dgm formed here: spills 92 -> 48 bytes)

      return P

    lax.fori_loop(0, 4, role, plgpu.layout_cast(jnp.zeros(LL, F32), plgpu.Layout.WGMMA))

  scratch = [swizzled((5, L, N)), swizzled((3 * KB, 2, L, L)), swizzled((N, N)), plgpu.Barrier(num_arrivals=5),
             plgpu.Barrier(num_arrivals=1), plgpu.Barrier(num_arrivals=1, num_barriers=KB)]
  if staged:  # k, a and their barrier
    scratch += [swizzled((2, L, N)), plgpu.Barrier(num_arrivals=2)]
  else:
    scratch.append(plgpu.Barrier(num_arrivals=1))  # the first phase is done
  if interpret:
    scratch.append(swizzled((KB, 4, L, L)))
    if KB > 1:
      scratch.append(swizzled((KB, 2, L, N)))
  out_type = tuple(jax.ShapeDtypeStruct((B, Tp, H, N), dt) for dt in out_dtypes)
  kern = plgpu.kernel(body, out_type=out_type, grid=(C, H, B), grid_names=("c", "h", "b"), num_threads=KB,
                      thread_name="wg", scratch_types=tuple(scratch), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name="wkv7_chunk_grads")
  ri, ci = jnp.indices((L, L))
  tri = jnp.stack([ci >= ri, jnp.ones((L, L), bool)]).astype(BF16)  # M_>= and ones: dw's products
  return kern(r, k, v, a, b, g_pad, seg, dec, states, d_o, d_states, t_hi, t_lo, kbar, u, du_state, tri)
