"""WKV-7 chunk algebra shared by the Pallas kernels and their XLA glue.

Layout and recurrence are those of `rwkvjax.ops.wkv7` (FLA's): per batch row and head the state S is [K, V]
(K = V = N) and

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,      o_t = S_t^T r_t.

A chunk of L tokens (L a power of two, 16..64) with entering state S is, with g = cumsum(w) inside the chunk
(g^- = g - w), m = g at the middle row and gL = g at the last row (spec wkv_kernels.md sections 2.2-2.4):

    q~ = r e^{g-m}, a~ = a e^{g^- - m}, k^ = k e^{m-g}, b^ = b e^{m-g}                     (factors, |exponent| <= L/2 |w|)
    A_ab = M_<(a~ b^T), A_ak = M_<(a~ k^T), A_qb = M_<=(q~ b^T), A_qk = M_<=(q~ k^T)     (causal, same segment)
    A0 = a e^{g^-}, Q0 = r e^{g}                                   (rows of the segment that sees S; else 0)
    T = (I - A_ab)^{-1}                                            (`matops.unit_lower_inverse`: block doubling)
    u = T (A0 S + A_ak V)            the reads u_t = S_{t-1}^T a_t
    o = Q0 S + A_qb u + A_qk V
    S' = diag(d) S + Bbar^T u + Kbar^T V,   Bbar = b e^{gL-g}, Kbar = k e^{gL-g} (last segment), d = e^{gL}
                                                                   (0 if the chunk contains a segment start)

With a reset state R (segments restart from it, not from zero), the rows of a segment starting at p inside the chunk
read R exactly as the first segment's rows read S, with decays counted from p: A0_R = a e^{Λ(p..t-1)},
Q0_R = r e^{Λ(p..t)} (masked same-segment row sums of w, <= 0), u = T (A0 S + A0_R R + A_ak V), o += Q0_R R, and
S' += diag(e^{Λ(last segment)}) R when the chunk's last segment starts inside it (`reset=` of the chunk functions).

`chunk_forward` and `chunk_backward` write this for ONE chunk on 2-D [L, N] float32 values, with nothing but 2-D
matmuls, elementwise ops, iota masks and sublane sums, so that the same Python code runs inside the Pallas TPU
kernel body and, under `jax.vmap`, as batched XLA (the oracle of the GPU kernels, whose `gpu_bwd.chunk_grads` is
`chunk_backward` as a Mosaic GPU kernel, and the comparison in `benchmarks/wkv_bench.py --pieces`). `chunk_backward`
is the hand-written VJP of `chunk_forward` with the entering state treated as an input (its gradient is returned
too): given dO and dS' of a chunk it returns the gradients of the chunk's six inputs and of S. The 2-D building
blocks (MatOps, row and diagonal helpers) are in `pallas_kernels.matops`; chunk layout and segment indices of the
XLA glue in `pallas_kernels.chunking`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels.matops import MatOps, diag_matrix, diag_row, row_of, unit_lower_inverse

F32 = jnp.float32

def _iota(shape, dim):
  return lax.broadcasted_iota(jnp.int32, shape, dim)


def cumsum_rows(x, ops: MatOps, reverse: bool = False):
  """Inclusive cumulative sum over rows (tokens) as a triangular matmul."""
  n = x.shape[0]
  r, c = _iota((n, n), 0), _iota((n, n), 1)
  tri = jnp.where(r <= c if reverse else r >= c, 1.0, 0.0).astype(F32)
  return ops.mm(tri, x)


def _masks(seg_col, seg_row):
  """seg_col [L, 1] / seg_row [1, L] float32 segment index inside the chunk (0 = connected to the entering state).

  Returns strict / inclusive causal same-segment masks [L, L], `first` [L, 1] (rows that see the entering state),
  `last` [L, 1] (rows of the chunk's last segment) and `carry` [1, 1] (True if no segment starts in the chunk)."""
  n = seg_col.shape[0]
  r, c = _iota((n, n), 0), _iota((n, n), 1)
  same = seg_col == seg_row
  seg_last = row_of(seg_col, n - 1)  # [1, 1]
  return same & (r > c), same & (r >= c), seg_col == 0.0, seg_col == seg_last, seg_last == 0.0


def _factors(r, w, k, a, b, ops: MatOps):
  n = r.shape[0]
  g = cumsum_rows(w, ops)
  gm = g - w
  mid = row_of(g, (n - 1) // 2)
  gl = row_of(g, n - 1)
  e_q = jnp.exp(g - mid)
  e_a = jnp.exp(gm - mid)
  e_out = jnp.exp(mid - g)
  to_end = jnp.exp(gl - g)
  return g, gm, gl, e_q, e_a, e_out, to_end


def _reset_factors(w, strict, incl, first, last, carry, ops: MatOps):
  """The exponentials through which the rows of later segments (seg > 0) read the reset state R: e^{Λ(p..t-1)}
  (for a) and e^{Λ(p..t)} (for r) [L, N] from the row's segment start p, summed directly over the segment's tokens
  (<= 0), and the chunk's leaving factor of R, e^{Λ(last segment)} [1, N] (0 unless a segment starts in the chunk)."""
  e_ra = jnp.exp(ops.mm(jnp.where(strict, 1.0, 0.0), w))
  e_rq = jnp.exp(ops.mm(jnp.where(incl, 1.0, 0.0), w))
  dec_r = jnp.where(carry, 0.0, jnp.exp(jnp.sum(jnp.where(last, w, 0.0), axis=0, keepdims=True)))
  return ~first, e_ra, e_rq, dec_r


def chunk_forward(r, w, k, v, a, b, seg_col, seg_row, S, ops: MatOps = MatOps(), reset=None):
  """(o [L, V], S' [K, V]) of one chunk; inputs [L, N] float32, S [K, V] float32, seg_* as in `_masks`.

  reset: None (segments starting in the chunk start from zero) or R [K, V] float32, the state they start from: the
  rows of a later segment read R as the first segment's read S (A0, Q0 with decays from the segment's start), and a
  chunk whose last segment starts inside it leaves e^{Λ(last segment)} R on top."""
  strict, incl, first, last, carry = _masks(seg_col, seg_row)
  g, gm, gl, e_q, e_a, e_out, to_end = _factors(r, w, k, a, b, ops)
  qt, at, kh, bh = r * e_q, a * e_a, k * e_out, b * e_out
  A_ab = jnp.where(strict, ops.nt(at, bh), 0.0)
  A_ak = jnp.where(strict, ops.nt(at, kh), 0.0)
  A_qb = jnp.where(incl, ops.nt(qt, bh), 0.0)
  A_qk = jnp.where(incl, ops.nt(qt, kh), 0.0)
  a0 = jnp.where(first, a * jnp.exp(gm), 0.0)
  q0 = jnp.where(first, r * jnp.exp(g), 0.0)
  T = unit_lower_inverse(A_ab, ops)
  rhs = ops.mm(a0, S) + ops.mm(A_ak, v)
  if reset is not None:
    later, e_ra, e_rq, dec_r = _reset_factors(w, strict, incl, first, last, carry, ops)
    rhs = rhs + ops.mm(jnp.where(later, a * e_ra, 0.0), reset)
  u = ops.mm(T, rhs)
  o = ops.mm(q0, S) + ops.mm(A_qb, u) + ops.mm(A_qk, v)
  if reset is not None:
    o = o + ops.mm(jnp.where(later, r * e_rq, 0.0), reset)
  bbar = jnp.where(last, b * to_end, 0.0)
  kbar = jnp.where(last, k * to_end, 0.0)
  dec = jnp.where(carry, jnp.exp(gl), 0.0)
  S_next = ops.mm(diag_matrix(dec), S) + ops.tn(bbar, u) + ops.tn(kbar, v)
  if reset is not None:
    S_next = S_next + ops.mm(diag_matrix(dec_r), reset)
  return o, S_next


def chunk_prep(r, w, k, v, a, b, seg_col, seg_row, ops: MatOps = MatOps()):
  """The state-independent tiles of one chunk, as the GPU state kernels consume them:

    wy_w [L, K], wy_u [L, V]:  u = wy_w S + wy_u           (W = T A0, U_wy = T A_ak V)
    qo [L, K], ob [L, V]:      o = qo S + ob               (qo = Q0 + A_qb W, ob = A_qb U_wy + A_qk V)
    bbar, kbar [L, K], dec [1, K]: S' = diag(dec) S + bbar^T u + kbar^T V
  """
  strict, incl, first, last, carry = _masks(seg_col, seg_row)
  g, gm, gl, e_q, e_a, e_out, to_end = _factors(r, w, k, a, b, ops)
  qt, at, kh, bh = r * e_q, a * e_a, k * e_out, b * e_out
  A_ab = jnp.where(strict, ops.nt(at, bh), 0.0)
  A_ak = jnp.where(strict, ops.nt(at, kh), 0.0)
  A_qb = jnp.where(incl, ops.nt(qt, bh), 0.0)
  A_qk = jnp.where(incl, ops.nt(qt, kh), 0.0)
  a0 = jnp.where(first, a * jnp.exp(gm), 0.0)
  q0 = jnp.where(first, r * jnp.exp(g), 0.0)
  T = unit_lower_inverse(A_ab, ops)
  wy_w = ops.mm(T, a0)
  wy_u = ops.mm(T, ops.mm(A_ak, v))
  qo = q0 + ops.mm(A_qb, wy_w)
  ob = ops.mm(A_qb, wy_u) + ops.mm(A_qk, v)
  bbar = jnp.where(last, b * to_end, 0.0)
  kbar = jnp.where(last, k * to_end, 0.0)
  dec = jnp.where(carry, jnp.exp(gl), 0.0)
  return wy_w, wy_u, qo, ob, bbar, kbar, dec


def chunk_backward(r, w, k, v, a, b, seg_col, seg_row, S, dO, dS_next, ops: MatOps = MatOps(), reset=None):
  """Gradients (dr, dw, dk, dv, da, db [L, N], dS [K, V]) of one chunk given dO [L, V] and dS' [K, V]: the VJP of
  `chunk_forward` (spec section 2.3), recomputing the forward terms. With a `reset` R [K, V] (as in
  `chunk_forward`) the gradient of R from this chunk, dR [K, V], follows dS."""
  strict, incl, first, last, carry = _masks(seg_col, seg_row)
  g, gm, gl, e_q, e_a, e_out, to_end = _factors(r, w, k, a, b, ops)
  qt, at, kh, bh = r * e_q, a * e_a, k * e_out, b * e_out
  A_ab = jnp.where(strict, ops.nt(at, bh), 0.0)
  A_ak = jnp.where(strict, ops.nt(at, kh), 0.0)
  A_qb = jnp.where(incl, ops.nt(qt, bh), 0.0)
  A_qk = jnp.where(incl, ops.nt(qt, kh), 0.0)
  ea0, eq0 = jnp.exp(gm), jnp.exp(g)
  a0 = jnp.where(first, a * ea0, 0.0)
  q0 = jnp.where(first, r * eq0, 0.0)
  T = unit_lower_inverse(A_ab, ops)
  rhs = ops.mm(a0, S) + ops.mm(A_ak, v)
  if reset is not None:
    later, e_ra, e_rq, dec_r = _reset_factors(w, strict, incl, first, last, carry, ops)
    a0r, q0r = jnp.where(later, a * e_ra, 0.0), jnp.where(later, r * e_rq, 0.0)
    rhs = rhs + ops.mm(a0r, reset)
  u = ops.mm(T, rhs)
  bbar = jnp.where(last, b * to_end, 0.0)
  kbar = jnp.where(last, k * to_end, 0.0)
  dec = jnp.where(carry, jnp.exp(gl), 0.0)

  # S' = diag(dec) S + bbar^T u + kbar^T v
  d_bbar = jnp.where(last, ops.nt(u, dS_next), 0.0)
  d_kbar = jnp.where(last, ops.nt(v, dS_next), 0.0)
  du = ops.mm(bbar, dS_next)
  dv = ops.mm(kbar, dS_next)
  d_dec = diag_row(ops.nt(dS_next, S))
  dS = ops.mm(diag_matrix(dec), dS_next)
  # o = q0 S + A_qb u + A_qk v
  dq0 = jnp.where(first, ops.nt(dO, S), 0.0)
  dS = dS + ops.tn(q0, dO)
  dA_qb = jnp.where(incl, ops.nt(dO, u), 0.0)
  dA_qk = jnp.where(incl, ops.nt(dO, v), 0.0)
  du = du + ops.tn(A_qb, dO)
  dv = dv + ops.tn(A_qk, dO)
  # u = T R, R = a0 S + A_ak v  (T = (I - A_ab)^{-1}: dA_ab = T^T du u^T)
  dR = ops.tn(T, du)
  dA_ab = jnp.where(strict, ops.nt(dR, u), 0.0)
  da0 = jnp.where(first, ops.nt(dR, S), 0.0)
  dS = dS + ops.tn(a0, dR)
  dA_ak = jnp.where(strict, ops.nt(dR, v), 0.0)
  dv = dv + ops.tn(A_ak, dR)
  # the factor products
  d_at = ops.mm(dA_ab, bh) + ops.mm(dA_ak, kh)
  d_qt = ops.mm(dA_qb, bh) + ops.mm(dA_qk, kh)
  d_bh = ops.tn(dA_ab, at) + ops.tn(dA_qb, qt)
  d_kh = ops.tn(dA_ak, at) + ops.tn(dA_qk, qt)
  dr = d_qt * e_q + dq0 * eq0
  da = d_at * e_a + da0 * ea0
  dk = d_kh * e_out + d_kbar * to_end
  db = d_bh * e_out + d_bbar * to_end
  # the log-decay: direct gradients of g, g^- and gL (the pivot m cancels from every kept product)
  dg = qt * d_qt + q0 * dq0 - kh * d_kh - bh * d_bh - kbar * d_kbar - bbar * d_bbar
  dgm = at * d_at + a0 * da0
  dgl = jnp.sum(kbar * d_kbar + bbar * d_bbar, axis=0, keepdims=True) + dec * d_dec
  dw = cumsum_rows(dg + dgm, ops, reverse=True) - dgm + dgl
  if reset is None:
    return dr, dw, dk, dv, da, db, dS
  # the reset state's terms: S' += diag(dec_r) R, o += q0r R, rhs += a0r R (exponents: masked row sums of w)
  d_dec_r = diag_row(ops.nt(dS_next, reset))
  dq0r = jnp.where(later, ops.nt(dO, reset), 0.0)
  da0r = jnp.where(later, ops.nt(dR, reset), 0.0)
  d_reset = ops.mm(diag_matrix(dec_r), dS_next) + ops.tn(q0r, dO) + ops.tn(a0r, dR)
  dr = dr + dq0r * e_rq
  da = da + da0r * e_ra
  dw = dw + ops.tn(jnp.where(incl, 1.0, 0.0), q0r * dq0r) + ops.tn(jnp.where(strict, 1.0, 0.0), a0r * da0r)
  dw = dw + jnp.where(last, dec_r * d_dec_r, 0.0)
  return dr, dw, dk, dv, da, db, dS, d_reset
