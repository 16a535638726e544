"""Chunked WKV-7 backend: chunk-parallel pure JAX (the DPLR / WY form), float32 inside.

Recurrence (see `rwkvjax.ops.api`), per batch row and head, state S in FLA's [K, V] layout (K = V = N):

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,    o_t = S_t^T r_t.

The sequence is cut into chunks of L tokens; the tail is padded with w = r = k = v = a = b = 0, an identity
transition, so padding changes neither the outputs kept nor the final state. Everything inside a chunk is linear
in the state S_c that enters it. `_chunk_terms` computes, for all chunks in parallel and independent of S_c:

    U_c     = W_c S_c + U_wy_c                              low-rank reads u_t = S_{t-1}^T a_t   [L, V]
    S_{c+1} = diag(d_c) S_c + Bbar_c^T U_c + KV_c           the chunk transition                 [K, V]
    O_c     = Qo_c S_c + Ob_c                               the chunk's outputs                  [L, V]

and a `lax.scan` over the T/L chunks (never over tokens) carries S_c with the middle line, after which the
outputs of all chunks are one batched matmul.

Intra-chunk terms. With g = cumsum(w) (inclusive), g^- = g - w (exclusive), g_L = g at the last token and a
reference row m = g[(L-1)//2] per channel:
    q~ = r e^{g-m},  a~ = a e^{g^- - m},  k^ = k e^{m-g},  b^ = b e^{m-g}                 (left / right factors)
    A_ab = M_< (a~ b^T),  A_ak = M_< (a~ k^T),  A_qb = M_<= (q~ b^T),  A_qk = M_<= (q~ k^T)          [L, L]
so (A_ab)_ij = sum_n a_in b_jn e^{g^-_in - g_jn} uses only the pairwise decays e^{Γ_i - Γ_j} <= 1 of pairs j < i
(<= for the q rows); M_< / M_<= also mask pairs of different segments. The reads satisfy
(I - A_ab) U = A0 S_c + A_ak V with A0 = a e^{g^-}: one unit-lower-triangular solve (`_unit_lower_solve`:
(I - A_ab)^{-1} by block doubling, then a matmul) gives the WY form
    [W | U_wy] = (I - A_ab)^{-1} [A0 | A_ak V].
Then, with Q0 = r e^{g}, Bbar = b e^{g_L - g} and Kbar = k e^{g_L - g}:
    Qo = Q0 + A_qb W,  Ob = A_qb U_wy + A_qk V,  d = e^{g_L},  KV = Kbar^T V.

Decay numerics: the factors are e^{±(g - m)}, centred on the middle row, so the largest exponent is about
(L/2) max|w|. RWKV-7's log-decay lies in (-e^{-0.5}, 0) ≈ (-0.6065, 0): at most ≈ 19.4 at L = 64 (e^19.4 ≈ 3e8,
far inside float32 range), and every kept product e^{g_i - m} e^{m - g_j} = e^{g_i - g_j} <= 1, so factoring
costs rounding only, not range. All other exponents (g, g^-, g_L - g) are <= 0. The factors stay finite while
(L/2) max|w| < ~80, i.e. max|w| < ~2.5 at L = 64 and ~10 at L = 16; a decay stronger than that (not RWKV-7)
needs a smaller chunk.

Segment resets (`segment_ids`): seg = the number of segment starts in the chunk up to and including each token.
Pairs (i, j) of different seg are masked out of the four A matrices; rows with seg > 0 do not see S_c (their
A0 and Q0 rows are zero); Bbar and Kbar keep only the chunk's last segment, and d = 0 if the chunk contains a
start. This is exact for resets anywhere: inside a chunk, on its first token, or on adjacent tokens.

Restarting from a `reset_state` R instead of zero: everything stays linear in (S_c, R). Rows of a later segment
read R with the decays counted from their segment's start p (A0 = a e^{g^- - g^-_p}, Q0 = r e^{g - g^-_p}, where
they are zero above; exponents <= 0). The masked solve never mixes segments, so the same WY solve gives their
reads and outputs as W R + ..., Qo R + ...; R is known before the scan, so these fold into U_wy and Ob, and a
chunk whose last segment starts inside it leaves e^{g_L - g^-_p} R + Bbar^T U + KV. The scan is unchanged.

Backward: JAX autodiff, with `_chunk_terms` (and the chunking of the inputs) under `jax.checkpoint`: the
backward saves the caller's inputs, the entering states S_c and three [T, N] terms (W, U_wy, Bbar), i.e.
O(T/L N^2 + T N) per head, and recomputes the O(T L) intra-chunk matrices. `_unit_lower_solve` has its own VJP
through the explicit inverse, and `_state_pass` its own: a reverse scan that carries only the state gradient.

Precision: float32 inputs get `Precision.HIGHEST` matmuls (float32 on every platform); 16-bit inputs get
split-bf16 x3 tensor-core products on a GPU (about 16 significant bits, 1.16x faster at K1 on an H100), see
`_matmul_precision`. The exponents (cumulative log-decays) are always summed in float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.matops import MatOps, unit_lower_inverse, x3_on_gpu
from rwkvjax.ops.reference import segment_starts


def _matmul_precision(*xs):
  """The precision of the backend's matmuls: split-bf16 x3 products (tensor cores, about 16 significant bits;
  `matops.x3_on_gpu`) on a GPU when every input is a 16-bit float (their own rounding is 2^-9), else
  Precision.HIGHEST (float32; the 1e-4 contract for float32 inputs, and CPUs and TPUs)."""
  if all(jnp.dtype(x.dtype).itemsize <= 2 for x in xs):
    return x3_on_gpu().precision
  return jax.lax.Precision.HIGHEST


def _einsum(precision):
  return functools.partial(jnp.einsum, precision=precision)


def _unit_lower_inverse(A, precision=jax.lax.Precision.HIGHEST):
  """(I - A)^{-1} of strictly lower-triangular A [..., L, L] by block doubling (log2 L levels of two matmuls)."""
  inverse = functools.partial(unit_lower_inverse, ops=MatOps(precision=precision))
  return jnp.vectorize(inverse, signature="(l,l)->(l,l)")(A)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _unit_lower_solve(precision, A, rhs):
  """X = (I - A)^{-1} rhs for strictly lower-triangular A [..., L, L] and rhs [..., L, M].

  Pure XLA (LAPACK trsm on CPU is slow for many small batched systems). The VJP uses the explicit inverse T:
  d rhs = T^T dX, dA = tril_{-1}(d rhs X^T)."""
  return _unit_lower_solve_fwd(precision, A, rhs)[0]


def _unit_lower_solve_fwd(precision, A, rhs):
  T = _unit_lower_inverse(A, precision)
  X = _einsum(precision)("...ij,...jm->...im", T, rhs)
  return X, (T, X)


def _unit_lower_solve_bwd(precision, res, dX):
  T, X = res
  ein = _einsum(precision)
  d_rhs = ein("...ji,...jm->...im", T, dX)
  strict = jnp.tri(T.shape[-1], k=-1, dtype=bool)
  return jnp.where(strict, ein("...im,...jm->...ij", d_rhs, X), 0.0), d_rhs


_unit_lower_solve.defvjp(_unit_lower_solve_fwd, _unit_lower_solve_bwd)


def _chunk_terms(precision, r, w, k, v, a, b, seg, reset_state=None):
  """The state-independent terms of every chunk (matmuls at `precision`).

  Args:
    r, w, k, v, a, b: [..., L, N] float32 (any leading batch dims: chunks, batch, heads).
    seg: [..., L] int32, broadcastable to the leading dims of r; the segment index of each token within its
      chunk (0 = still connected to the state entering the chunk).
    reset_state: None (later segments start from zero) or [..., K, V] float32 broadcastable to the leading
      dims of r: the state every segment starting inside the chunk starts from.

  Returns (with S the state entering the chunk):
    qo [..., L, K], ob [..., L, V]: the outputs are qo S + ob;
    wy_w [..., L, K], wy_u [..., L, V]: the low-rank reads are U = wy_w S + wy_u;
    bbar [..., L, K], decay [..., K], kv [..., K, V]: the leaving state is decay * S + bbar^T U + kv.
  """
  L, N = r.shape[-2:]
  ein = _einsum(precision)
  g = jnp.cumsum(w, axis=-2)
  g_ex = g - w
  mid = g[..., (L - 1) // 2, None, :]
  g_last = g[..., L - 1, None, :]

  # Masks [..., L, L]: causal pairs of the same segment.
  same = seg[..., :, None] == seg[..., None, :]
  pos = jnp.arange(L)
  incl = same & (pos[:, None] >= pos[None, :])
  strict = same & (pos[:, None] > pos[None, :])

  # The state each row reads enters at its segment's start (the chunk start for seg 0): `start` is g^- there,
  # so decays count from it. Without a reset_state only seg-0 rows read a state (later segments start at 0).
  if reset_state is None:
    reads, start = (seg == 0)[..., :, None], 0.0
  else:
    seg_first = jnp.concatenate([jnp.ones_like(seg[..., :1], bool), seg[..., 1:] != seg[..., :-1]], axis=-1)
    to_start = (same & seg_first[..., None, :]).astype(w.dtype)
    start = _einsum(jax.lax.Precision.HIGHEST)("...ij,...jn->...in", to_start, g_ex)  # exponents: float32
    reads = True

  # One [2L, N] x [N, 2L] product gives the four intra-chunk matrices.
  left = jnp.concatenate([a * jnp.exp(g_ex - mid), r * jnp.exp(g - mid)], axis=-2)  # [a~; q~]
  e_out = jnp.exp(mid - g)
  right = jnp.concatenate([b * e_out, k * e_out], axis=-2)  # [b^; k^]
  A = ein("...in,...jn->...ij", left, right)
  A_ab = jnp.where(strict, A[..., :L, :L], 0.0)
  A_ak = jnp.where(strict, A[..., :L, L:], 0.0)
  A_qb = jnp.where(incl, A[..., L:, :L], 0.0)
  A_qk = jnp.where(incl, A[..., L:, L:], 0.0)

  a0 = jnp.where(reads, a * jnp.exp(g_ex - start), 0.0)
  q0 = jnp.where(reads, r * jnp.exp(g - start), 0.0)

  # WY form: [W | U_wy] = (I - A_ab)^{-1} [A0 | A_ak V].
  wy = _unit_lower_solve(precision, A_ab, jnp.concatenate([a0, ein("...ij,...jv->...iv", A_ak, v)], axis=-1))
  wy_w, wy_u = wy[..., :N], wy[..., N:]

  out = ein("...ij,...jx->...ix", A_qb, wy)  # [A_qb W | A_qb U_wy]
  qo = q0 + out[..., :N]
  ob = out[..., N:] + ein("...ij,...jv->...iv", A_qk, v)

  in_last = (seg == seg[..., L - 1, None])[..., :, None]  # tokens of the chunk's last segment
  to_end = jnp.exp(g_last - g)
  bbar = jnp.where(in_last, b * to_end, 0.0)
  kv = ein("...lk,...lv->...kv", jnp.where(in_last, k * to_end, 0.0), v)
  no_restart = (seg[..., L - 1] == 0)[..., None]  # the chunk holds no segment start
  decay = jnp.where(no_restart, jnp.exp(g_last[..., 0, :]), 0.0)
  if reset_state is not None:
    # Rows of later segments read reset_state, which is known now: fold their reads and outputs into the
    # state-independent terms, and the decayed reset_state into the chunk's leaving state.
    later = (seg > 0)[..., :, None]
    wy_u = wy_u + ein("...lk,...kv->...lv", jnp.where(later, wy_w, 0.0), reset_state)
    ob = ob + ein("...lk,...kv->...lv", jnp.where(later, qo, 0.0), reset_state)
    wy_w, qo = jnp.where(later, 0.0, wy_w), jnp.where(later, 0.0, qo)
    decay_reset = jnp.where(no_restart, 0.0, jnp.exp(g_last[..., 0, :] - start[..., L - 1, :]))
    kv = kv + decay_reset[..., :, None] * reset_state
  return qo, ob, wy_w, wy_u, bbar, decay, kv


_SCAN_UNROLL = 2  # steps per iteration of the state scans (H100, K1: 34.96 -> 33.22 ms fwd+bwd at L = 32)
_GROUPED_FROM = 32  # the fewest chunks for which the state pass may run in groups (`_grouped`)


def _grouped(C, x0):
  """Whether a state pass over C chunks from x0 [B, H, K, V] runs in groups (`_grouped_recurrence`): at least
  _GROUPED_FROM chunks, and more chunks than (batch, head) rows."""
  return C >= _GROUPED_FROM and C > math.prod(x0.shape[:-2])


def _grouped_recurrence(precision, x0, d, lhs, rhs, src, reverse=False):
  """x_{c+1} = diag(d_c) x_c + lhs_c^T (rhs_c x_c) + src_c over the chunks c = 0 .. C-1 (C-1 .. 0 if `reverse`),
  as G ~ sqrt(C) groups of S = C / G steps side by side: S + G sequential steps instead of C.

  Args:
    x0: [B, H, K, V] float32; d: [C, B, H, K]; lhs, rhs: [C, B, H, L, K]; src: [C, B, H, K, V].

  Returns (the last x [B, H, K, V], x before each step c [C, B, H, K, V]).

  That pays where each step has little work (H100, K4 = (1, 32768, 32, 64), 1024 chunks of 32 for 32 rows:
  fwd+bwd 44.8 -> 39.8 ms), not where the rows fill the GPU (K1 = (8, 4096, 32, 64), 128 chunks for 256 rows:
  30.9 -> 40.1 ms; it does about twice the work and moves the per-chunk terms into group order): see `_grouped`.
  Each group starts from [0 | I]: its columns V carry the group-local x from zero, the K extra columns the product
  P of the group's transitions so far (the same update without src, on an identity). A scan over the G groups
  then gives the x entering each group, x_g+1 = P_g x_g + local_g, and x before step c of group g is
  local_c + P_c x_g."""
  ein = _einsum(precision)
  seq = tuple(jnp.flip(x, 0) for x in (d, lhs, rhs, src)) if reverse else (d, lhs, rhs, src)

  def step(x, chunk):
    d_c, l_c, r_c, s_c = chunk
    return d_c[..., None] * x + ein("...lk,...lv->...kv", l_c, ein("...lk,...kv->...lv", r_c, x)) + s_c, x

  C = d.shape[0]
  G = 1 << (C.bit_length() // 2)
  S = -(-C // G)
  K, V = x0.shape[-2:]
  d, lhs, rhs, src = (jnp.pad(x, [(0, G * S - C)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
                      for x, fill in zip(seq, (1.0, 0.0, 0.0, 0.0)))  # identity steps at the end
  src = jnp.concatenate([src, jnp.zeros((*src.shape[:-1], K), src.dtype)], axis=-1)
  eye = jnp.broadcast_to(jnp.eye(K, dtype=x0.dtype), (G, *x0.shape[:-1], K))
  start = jnp.concatenate([jnp.zeros((G, *x0.shape), x0.dtype), eye], axis=-1)  # [G, B, H, K, V + K]
  by_group = lambda x: x.reshape(G, S, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731  [S, G, ...]
  ends, before = jax.lax.scan(step, start, tuple(map(by_group, (d, lhs, rhs, src))), unroll=_SCAN_UNROLL)

  def group_step(x, group):
    local, P = group
    return ein("bhkj,bhjv->bhkv", P, x) + local, x

  last, entering = jax.lax.scan(group_step, x0, (ends[..., :V], ends[..., V:]))  # entering: [G, B, H, K, V]
  xs = before[..., :V] + ein("sgbhkj,gbhjv->sgbhkv", before[..., V:], entering)
  xs = xs.swapaxes(0, 1).reshape(G * S, *x0.shape)[:C]
  return last, (jnp.flip(xs, 0) if reverse else xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _state_pass(precision, state, wy_w, wy_u, bbar, decay, kv):
  """The sequential pass over chunks: S_{c+1} = diag(d_c) S_c + Bbar_c^T (W_c S_c + U_wy_c) + KV_c.

  Args:
    state: [B, H, K, V] float32, the state entering the first chunk.
    wy_w, bbar: [C, B, H, L, K]; wy_u: [C, B, H, L, V]; decay: [C, B, H, K]; kv: [C, B, H, K, V] (float32).

  Returns (final state [B, H, K, V], the state entering each chunk [C, B, H, K, V]): a `lax.scan` over the chunks,
  or `_grouped_recurrence` where `_grouped`. The VJP runs the transposed recurrence, carrying only the state
  gradient; the per-chunk input gradients are batched matmuls over all chunks after it."""
  return _state_pass_fwd(precision, state, wy_w, wy_u, bbar, decay, kv)[0]


def _state_pass_fwd(precision, state, wy_w, wy_u, bbar, decay, kv):
  ein = _einsum(precision)
  if _grouped(decay.shape[0], state):
    src = ein("cbhlk,cbhlv->cbhkv", bbar, wy_u) + kv
    final, entering = _grouped_recurrence(precision, state, decay, bbar, wy_w, src)
  else:
    def step(S, chunk):
      w_c, u_c, bbar_c, d_c, kv_c = chunk
      u = ein("bhlk,bhkv->bhlv", w_c, S) + u_c
      return d_c[..., None] * S + ein("bhlk,bhlv->bhkv", bbar_c, u) + kv_c, S

    final, entering = jax.lax.scan(step, state, (wy_w, wy_u, bbar, decay, kv), unroll=_SCAN_UNROLL)
  return (final, entering), (entering, wy_w, wy_u, bbar, decay)


def _state_pass_bwd(precision, res, grads):
  entering, wy_w, wy_u, bbar, decay = res
  d_final, d_entering = grads
  ein = _einsum(precision)
  # g_c: the gradient of the state leaving chunk c; the one entering it is diag(d_c) g_c + W_c^T Bbar_c g_c + dS_c
  if _grouped(decay.shape[0], d_final):
    d_state, g = _grouped_recurrence(precision, d_final, decay, wy_w, bbar, d_entering, reverse=True)
    du = ein("cbhlk,cbhkv->cbhlv", bbar, g)
  else:
    def step(g, chunk):
      w_c, bbar_c, d_c, d_in = chunk
      du = ein("bhlk,bhkv->bhlv", bbar_c, g)
      return d_c[..., None] * g + ein("bhlk,bhlv->bhkv", w_c, du) + d_in, (g, du)

    d_state, (g, du) = jax.lax.scan(step, d_final, (wy_w, bbar, decay, d_entering), reverse=True,
                                    unroll=_SCAN_UNROLL)
  u = ein("cbhlk,cbhkv->cbhlv", wy_w, entering) + wy_u
  return (d_state, ein("cbhlv,cbhkv->cbhlk", du, entering), du, ein("cbhlv,cbhkv->cbhlk", u, g),
          jnp.sum(entering * g, axis=-1), g)


_state_pass.defvjp(_state_pass_fwd, _state_pass_bwd)


def wkv7_chunked(r, w, k, v, a, b, initial_state, segment_ids, reset_state=None, *, chunk_size: int | None = None):
  """The `chunked` backend; see `rwkvjax.ops.wkv7` for the contract.

  Args:
    r, w, k, v, a, b: [B, T, H, N], any float dtype (computed in float32; matmul precision: `_matmul_precision`
      of r, k, v, a, b).
    initial_state: [B, H, K, V] or None (zeros).
    segment_ids: [B, T] ints or None.
    reset_state: [B or 1, H, K, V] or None (zeros): the state segments restart from.
    chunk_size: tokens per chunk L (16, 32 or 64); T < L uses one chunk of T tokens. None: 16 on CPU (the
      fastest there, see benchmarks/wkv_cpu_bench.py), 32 on GPU (H100, K1 fwd+bwd: 33.2 ms vs 39.2 at 64 and
      36.3 at 16 with the scan unrolled by 4), else 64 (fewer, larger matmuls; fla's RWKV-7 choice).

  Returns:
    o: [B, T, H, V] in the dtype of r; final_state: [B, H, K, V] float32.
  """
  B, T, H, N = r.shape
  if chunk_size is None:
    chunk_size = {"cpu": 16, "gpu": 32}.get(jax.default_backend(), 64)
  precision = _matmul_precision(r, k, v, a, b)
  L = min(chunk_size, T)
  C = -(-T // L)  # number of chunks
  pad = C * L - T

  def to_chunks(x):  # [B, T, H, N] -> [C, B, H, L, N] float32, zero-padded in time
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0)))
    return x.reshape(B, C, L, H, N).transpose(1, 0, 3, 2, 4)

  starts = jnp.pad(segment_starts(segment_ids, B, T), ((0, 0), (0, pad)))
  seg = jnp.cumsum(starts.reshape(B, C, L).astype(jnp.int32), axis=-1)
  seg = seg.transpose(1, 0, 2)[:, :, None, :]  # [C, B, 1, L]

  # Checkpointed: the backward keeps only the caller's inputs and recomputes the intra-chunk terms.
  restart = None if reset_state is None else reset_state.astype(jnp.float32)[None]  # [1, B or 1, H, K, V]
  terms = jax.checkpoint(lambda seg, restart, *xs: _chunk_terms(precision, *(to_chunks(x) for x in xs), seg, restart))
  qo, ob, *transition = terms(seg, restart, r, w, k, v, a, b)

  state = jnp.zeros((B, H, N, N), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
  final_state, entering = _state_pass(precision, state, *transition)  # entering: [C, B, H, K, V]
  o = _einsum(precision)("cbhlk,cbhkv->cbhlv", qo, entering) + ob
  o = o.transpose(1, 0, 3, 2, 4).reshape(B, C * L, H, N)[:, :T]
  return o.astype(r.dtype), final_state
