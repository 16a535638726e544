"""WKV-5/6 chunk algebra shared by the Pallas kernels and their XLA glue (exact for unbounded decays).

Layout and recurrence are those of `rwkvjax.ops.wkv6` (FLA's): per batch row and head the state S is [K, V]
(K = V = N) and

    o_t = S_{t-1}^T r_t + (r_t . u . k_t) v_t,        S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T.

WKV-5 is the same with a decay constant over time (the backends broadcast it). A chunk of L tokens (L a power of
two) entered with state S is, with Λ(a..b) the sum of w over tokens a..b of the chunk:

    o   = Qo S + A V                    Qo = r e^{Λ(c0..t-1)}               (rows that see S; else 0)
    A_ts = sum_i r_t[i] k_s[i] e^{Λ_i(s+1..t-1)} for s < t (same segment),  A_tt = r_t . u . k_t  (the bonus)
    S'  = diag(dec) S + Kbar^T V        Kbar = k e^{Λ(s+1..end)} (last segment), dec = e^{Λ(chunk)} (0 after a reset)

Decay numerics (spec wkv_kernels.md section 2.4; the same scheme as `rwkvjax.ops.chunked_v56`). RWKV-6's log-decay
is unbounded below, so no single centre makes e^{+Λ} e^{-Λ} factors safe over a chunk. A is built over a binary
hierarchy: at half-size h (h = 1, 2, .., L/2), for t in the right and s in the left half of an aligned 2h block,
the decay between them splits at the block boundary into two factors <= 1,

    e^{Λ(s+1..t-1)} = e^{F_h(s)} e^{E_h(t)},   E_h(t) = Λ(block start..t-1),  F_h(s) = Λ(s+1..block end)

(in-block exclusive prefix and suffix sums over blocks of h tokens), so that part of A is one masked matmul
(r e^{E_h}) (k e^{F_h})^T. E_h and F_h are sums of same-sign terms computed directly (a 0/1 block-triangular
matrix times w, never a difference of long prefix sums), so there is neither overflow nor cancellation; underflow
to 0 is the exact limit. The chunk level uses E_L and F_L. log2(L) pair levels cover every s < t.

Resets: seg = the number of segment starts inside the chunk up to each token (`chunking.segment_index`); pairs of
different seg are masked out of A, rows with seg > 0 do not read S, Kbar keeps the last segment's rows and dec is 0
when the chunk holds a start (exact for resets anywhere, including chunk boundaries). With a reset state R (`reset=`
of the chunk functions) rows of a segment starting at p read it as o += (r e^{Λ(p..t-1)}) R, and a chunk whose last
segment starts inside it leaves S' += diag(e^{Λ(last segment)}) R (both exponents masked same-segment sums, <= 0).

`chunk_terms`, `chunk_forward` and `chunk_backward` are written for ONE chunk on 2-D [L, N] float32 values with
nothing but 2-D matmuls, elementwise ops, iota masks and axis sums, so that the same code runs inside the Pallas TPU
kernel bodies and, under `jax.vmap`, as batched XLA (the oracle of the GPU kernels, whose `gpu_bwd.chunk_grads` is
`chunk_backward` as a Mosaic GPU kernel, and the comparison in `benchmarks/wkv_bench.py --pieces`).
`chunk_backward` is the hand-written VJP of `chunk_forward` with the entering state treated as an input.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels.matops import MatOps, diag_matrix, diag_row, row_of

F32 = jnp.float32

__all__ = ["block_triangles", "pair_mask", "chunk_terms", "chunk_forward", "chunk_backward"]


def _iota(n, dim):
  return lax.broadcasted_iota(jnp.int32, (n, n), dim)


def block_triangles(n: int, shift: int):
  """(lower, upper) [n, n] float32 0/1: lower[t, j] = 1 for j < t in t's block of 2^shift rows; upper = lower^T."""
  r, c = _iota(n, 0), _iota(n, 1)
  same = (r >> shift) == (c >> shift)
  return jnp.where(same & (c < r), 1.0, 0.0).astype(F32), jnp.where(same & (c > r), 1.0, 0.0).astype(F32)


def pair_mask(n: int, shift: int):
  """[n, n] bool: t in the right and s in the left half of one aligned block of 2^(shift+1) rows."""
  r, c = _iota(n, 0), _iota(n, 1)
  return ((r >> (shift + 1)) == (c >> (shift + 1))) & ((r >> shift) != (c >> shift)) & (r > c)


def _levels(n: int) -> int:
  levels = n.bit_length() - 1
  if n != 1 << levels:
    raise ValueError(f"wkv56 chunk length must be a power of two, got {n}")
  return levels


def _masks(seg_col, seg_row):
  """seg_col [L, 1] / seg_row [1, L] float32 segment index inside the chunk (0 = connected to the entering state).

  Returns `same` [L, L] (same segment), `first` [L, 1] (rows that see the entering state), `last` [L, 1] (rows of
  the chunk's last segment) and `carry` [1, 1] (True if no segment starts in the chunk)."""
  seg_last = row_of(seg_col, seg_col.shape[0] - 1)  # [1, 1]
  return seg_col == seg_row, seg_col == 0.0, seg_col == seg_last, seg_last == 0.0


def _level_factors(r, w, k, shift, ops):
  """(P, Q, eE, eF) of pair level h = 2^shift: P = r e^{E_h}, Q = k e^{F_h} and the two exponential factors."""
  if shift == 0:  # blocks of one token: E_1 = F_1 = 0
    one = jnp.ones_like(w)
    return r, k, one, one
  lower, upper = block_triangles(w.shape[0], shift)
  eE, eF = jnp.exp(ops.mm(lower, w)), jnp.exp(ops.mm(upper, w))
  return r * eE, k * eF, eE, eF


def _intra(r, w, k, u, same, ops):
  """A [L, L] (pairs of the same segment and the bonus on the diagonal) and the factors of every pair level."""
  n = r.shape[0]
  bonus = jnp.sum(r * u * k, axis=1, keepdims=True)  # [L, 1]
  A = jnp.where(_iota(n, 0) == _iota(n, 1), bonus, 0.0)
  factors = []
  for shift in range(_levels(n)):
    P, Q, eE, eF = _level_factors(r, w, k, shift, ops)
    A = jnp.where(pair_mask(n, shift) & same, ops.nt(P, Q), A)
    factors.append((P, Q, eE, eF))
  return A, factors


def _chunk_level(r, w, k, first, last, carry, ops):
  """qo [L, K], kbar [L, K], dec [1, K] and the factors e^{Λ(c0..t-1)}, e^{Λ(s+1..end)} [L, N]."""
  lower, upper = block_triangles(r.shape[0], _levels(r.shape[0]))
  e_in, e_out = jnp.exp(ops.mm(lower, w)), jnp.exp(ops.mm(upper, w))
  dec = jnp.where(carry, jnp.exp(jnp.sum(w, axis=0, keepdims=True)), 0.0)
  return jnp.where(first, r * e_in, 0.0), jnp.where(last, k * e_out, 0.0), dec, e_in, e_out


def chunk_terms(r, w, k, v, u, seg_col, seg_row, ops: MatOps = MatOps()):
  """The state-independent terms of one chunk.

  Args:
    r, w, k, v: [L, N] float32 (w the log-decay); u: [1, N] float32 bonus; seg_col [L, 1], seg_row [1, L] float32.
  Returns:
    qo [L, K], ob [L, V] (o = qo S + ob), kbar [L, K] and dec [1, K] (S' = diag(dec) S + kbar^T V).
  """
  same, first, last, carry = _masks(seg_col, seg_row)
  A, _ = _intra(r, w, k, u, same, ops)
  qo, kbar, dec, _, _ = _chunk_level(r, w, k, first, last, carry, ops)
  return qo, ops.mm(A, v), kbar, dec


def _reset_terms(r, w, seg_col, seg_row, ops):
  """The readout of the reset state R by the rows of later segments (seg > 0), q_r = r e^{Λ(p..t-1)} [L, K] from the
  row's segment start p, its factor e^{Λ(p..t-1)} [L, N] (both summed directly over the segment's tokens, <= 0), the
  strict same-segment mask [L, L] float32 that sums them, and the chunk's leaving factor of R, e^{Λ(last segment)}
  [1, K] (0 unless a segment starts in the chunk)."""
  same, first, last, carry = _masks(seg_col, seg_row)
  n = r.shape[0]
  before = jnp.where(same & (_iota(n, 0) > _iota(n, 1)), 1.0, 0.0)
  e_r = jnp.exp(ops.mm(before, w))
  dec_r = jnp.where(carry, 0.0, jnp.exp(jnp.sum(jnp.where(last, w, 0.0), axis=0, keepdims=True)))
  return jnp.where(first, 0.0, r * e_r), e_r, before, dec_r


def chunk_forward(r, w, k, v, u, seg_col, seg_row, S, ops: MatOps = MatOps(), reset=None):
  """(o [L, V], S' [K, V]) of one chunk entered with state S [K, V] float32; other arguments as in `chunk_terms`.

  reset: None (segments starting in the chunk start from zero) or R [K, V] float32, the state they start from: rows
  of a later segment read it decayed from their segment's start, and a chunk whose last segment starts inside it
  leaves e^{Λ(last segment)} R on top."""
  qo, ob, kbar, dec = chunk_terms(r, w, k, v, u, seg_col, seg_row, ops)
  o, S_next = ops.mm(qo, S) + ob, ops.mm(diag_matrix(dec), S) + ops.tn(kbar, v)
  if reset is not None:
    q_r, _, _, dec_r = _reset_terms(r, w, seg_col, seg_row, ops)
    o, S_next = o + ops.mm(q_r, reset), S_next + ops.mm(diag_matrix(dec_r), reset)
  return o, S_next


def chunk_backward(r, w, k, v, u, seg_col, seg_row, S, dO, dS_next, ops: MatOps = MatOps(), reset=None):
  """Gradients of one chunk given dO [L, V] and dS' [K, V]: the VJP of `chunk_forward`, recomputing its terms.

  Returns dr, dw, dk, dv [L, N], du [1, N] (this chunk's share) and dS [K, V] (the entering state's gradient), and
  with a `reset` R [K, V] (as in `chunk_forward`) then this chunk's share of R's gradient dR [K, V].
  """
  n = r.shape[0]
  same, first, last, carry = _masks(seg_col, seg_row)
  A, factors = _intra(r, w, k, u, same, ops)
  qo, kbar, dec, e_in, e_out = _chunk_level(r, w, k, first, last, carry, ops)

  # S' = diag(dec) S + kbar^T v ;  o = qo S + A v
  d_kbar = jnp.where(last, ops.nt(v, dS_next), 0.0)
  d_dec = diag_row(ops.nt(dS_next, S))
  dS = ops.mm(diag_matrix(dec), dS_next) + ops.tn(qo, dO)
  d_qo = jnp.where(first, ops.nt(dO, S), 0.0)
  dv = ops.mm(kbar, dS_next) + ops.tn(A, dO)
  dA = ops.nt(dO, v)

  # the bonus (diagonal of A)
  d_bonus = jnp.sum(dO * v, axis=1, keepdims=True)  # [L, 1]
  dr = d_bonus * u * k + d_qo * e_in
  dk = d_bonus * u * r + d_kbar * e_out
  du = jnp.sum(d_bonus * r * k, axis=0, keepdims=True)

  # chunk level: qo = r e^{E_L}, kbar = k e^{F_L} (E_L = lower_L w, F_L = upper_L w), dec = e^{sum w}
  lower, upper = block_triangles(n, len(factors))
  dw = ops.mm(upper, d_qo * qo) + ops.mm(lower, d_kbar * kbar) + dec * d_dec

  # pair levels: A_h = (r e^{E_h}) (k e^{F_h})^T on the level's pairs
  for shift, (P, Q, eE, eF) in enumerate(factors):
    dA_h = jnp.where(pair_mask(n, shift) & same, dA, 0.0)
    dP, dQ = ops.mm(dA_h, Q), ops.tn(dA_h, P)
    dr = dr + dP * eE
    dk = dk + dQ * eF
    if shift:
      lower, upper = block_triangles(n, shift)
      dw = dw + ops.mm(upper, dP * P) + ops.mm(lower, dQ * Q)
  if reset is None:
    return dr, dw, dk, dv, du, dS
  # the reset state's terms: o += q_r R, S' += diag(dec_r) R (q_r = r e^{before w}, dec_r = e^{sum of last w})
  q_r, e_r, before, dec_r = _reset_terms(r, w, seg_col, seg_row, ops)
  d_qr = jnp.where(first, 0.0, ops.nt(dO, reset))
  d_dec_r = diag_row(ops.nt(dS_next, reset))
  dr = dr + d_qr * e_r
  dw = dw + ops.tn(before, d_qr * q_r) + jnp.where(last, dec_r * d_dec_r, 0.0)
  return dr, dw, dk, dv, du, dS, ops.tn(q_r, dO) + ops.mm(diag_matrix(dec_r), dS_next)
