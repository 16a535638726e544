"""Chunked WKV-5 / WKV-6 backends: chunk-parallel pure JAX, float32 inside, exact for unbounded decays.

Recurrence (see `rwkvjax.ops.wkv6`), per batch row and head, state S in the [K, V] layout:

    o_t = S_{t-1}^T r_t + (r_t . u . k_t) v_t,        S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T.

The sequence is cut into chunks of L tokens (the tail padded with w = r = k = v = 0, an identity transition).
Within a chunk entered with state S_c (§7 of specs/rwkv_architecture.md; Λ(a..b) = sum of w over tokens a..b):

    o_t     = (r_t e^{Λ(c0..t-1)})^T S_c + sum_{s<t in chunk} A_ts v_s + bonus_t
    A_ts    = sum_i r_t[i] k_s[i] e^{Λ_i(s+1..t-1)}          (the exact decay strictly between s and t)
    S_{c+1} = diag(e^{Λ(chunk)}) S_c + sum_s diag(e^{Λ(s+1..end)}) k_s v_s^T

The chunk transition is diagonal plus a [K, V] offset, so a `lax.scan` over the T/L chunks carries the state
(an elementwise update) and reads it out with one [L, K] x [K, V] matmul per chunk.

Decay numerics. RWKV-6's per-token log-decay w = -exp(d) is unbounded below (-e^3 ≈ -20 per token is
realistic), so e^{-Λ} alone overflows float32 within a few tokens, and fla-style factoring
e^{Λ_t - m} e^{m - Λ_s} around one centre m is unsafe for a whole chunk. Here every exponent is a sum of w over
a contiguous run of tokens, hence <= 0, and is summed directly (never as a difference of two long prefix
sums, so there is no cancellation either):
  * A is built over a binary hierarchy of blocks. At half-size h, each left block of h tokens feeds the
    right block next to it; for s left and t right, the exact pairwise decay splits at the boundary b:
        e^{Λ(s+1..t-1)} = e^{Λ(s+1..b)} · e^{Λ(b+1..t-1)}        (two factors <= 1)
    so that block of A is a matmul (r ⊙ e^{Λ(b+1..t-1)}) (k ⊙ e^{Λ(s+1..b)})^T with nothing to overflow
    (underflow to 0 is the exact limit). log2(L) levels cover every pair s < t.
  * Optionally (sub_chunk > 1) the hierarchy stops at base blocks of `sub_chunk` tokens, inside which
    e^{Λ(s+1..t-1)} is formed per (t, s, channel) ([.., S, S, N] exps, fla's "sub-chunk" intra block). On
    CPU the pure hierarchy (sub_chunk = 1) is fastest; base blocks may suit accelerators better.
  * The state readout and the chunk transition use e^{Λ(c0..t-1)} and e^{Λ(s+1..end)}, also <= 0.
Masked (non-causal or cross-segment) exponents are replaced by 0 before `exp`, so neither values nor
gradients see an overflow.

Segment resets: seg = number of segment starts up to each token inside the chunk; pairs of different seg are
masked out of A, rows with seg > 0 do not read S_c, and the transition keeps only the last segment's tokens
and drops S_c when the chunk holds a start (exact for resets anywhere, including chunk boundaries).
Restarting from a `reset_state` R instead of zero adds, before the scan, (r_t e^{Λ(p..t-1)})^T R to the outputs
of a later segment starting at p, and e^{Λ(p..end)} R to the transition of a chunk whose last segment starts
inside it (both exponents summed directly over the segment's tokens, <= 0).

Backward: JAX autodiff; `_chunk_terms` is under `jax.checkpoint`, so the intra-chunk matrices are recomputed
in the backward pass; the saved residuals are the inputs, the per-chunk states entering the scan and the
readout factors. All matmuls use Precision.HIGHEST (float32 on TPU too).

WKV-5 (time-constant decay [H, N]) runs through the same code with the decay broadcast over [B, T].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rwkvjax.ops.reference import segment_starts
from rwkvjax.ops.wkv5 import broadcast_decay

_HIGHEST = jax.lax.Precision.HIGHEST
_einsum = functools.partial(jnp.einsum, precision=_HIGHEST)


def _partial_sums(w):
  """(Λ(first..t-1), Λ(t+1..last)) along axis -2 of [..., n, N]: exclusive prefix and suffix sums, each a sum
  of same-sign terms (no cancellation). Long axes use triangular matmuls (XLA:CPU lowers cumsum to an O(n^2)
  reduce-window), short ones a cumsum."""
  n = w.shape[-2]
  if n == 1:
    return jnp.zeros_like(w), jnp.zeros_like(w)
  if n <= 8:
    zero = jnp.zeros_like(w[..., :1, :])
    exc = jnp.concatenate([zero, jnp.cumsum(w[..., :-1, :], axis=-2)], axis=-2)
    rev = jnp.concatenate([jnp.flip(jnp.cumsum(jnp.flip(w[..., 1:, :], -2), -2), -2), zero], axis=-2)
    return exc, rev
  pos = jnp.arange(n)
  before = (pos[:, None] > pos[None, :]).astype(w.dtype)  # [t, j]: j < t
  return _einsum("tj,...jn->...tn", before, w), _einsum("tj,...jn->...tn", before.T, w)


@functools.partial(jax.checkpoint, static_argnums=(5,))
def _chunk_terms(r, w, k, v, seg, base, reset_state=None):
  """The state-independent terms of every chunk.

  Args:
    r, w, k, v: [..., L, N] float32 (any leading dims: chunks, batch, heads); L = base * 2**levels.
    seg: [..., L] int32 broadcastable to r's leading dims: each token's segment index in its chunk.
    base: size of the blocks with exact pairwise decays (1 = none; the hierarchy goes down to single tokens).
    reset_state: None (later segments start from zero) or [..., K, V] float32 broadcastable to r's leading dims:
      the state every segment starting inside the chunk starts from.

  Returns:
    q0 [..., L, K] and o_in [..., L, V] (chunk outputs O = q0 S_c + o_in),
    decay [..., K] and q [..., K, V] (S_{c+1} = decay[:, None] * S_c + q).
  """
  L, N = r.shape[-2:]
  lead = r.shape[:-2]
  seg = jnp.broadcast_to(seg, lead + (L,))
  a_full = jnp.zeros(lead + (L, L), r.dtype)  # intra-chunk scores A[t, s], s < t

  # Base blocks: exact pairwise decay e^{Λ(s+1..t-1)} for s < t, per channel ([.., base, base, N] exps). The
  # exponent is summed directly over the tokens strictly between s and t (same sign, no cancellation).
  if base > 1:
    blk = lambda x: x.reshape(*lead, L // base, base, *x.shape[len(lead) + 1:])
    rb, wb, kb, sb = (blk(x) for x in (r, w, k, seg))
    pos = jnp.arange(base)
    between = ((pos[None, :, None] < pos[None, None, :]) & (pos[None, None, :] < pos[:, None, None])).astype(w.dtype)
    expo = _einsum("tsj,...jn->...tsn", between, wb)            # Λ(s+1..t-1) <= 0
    mask = (pos[:, None] > pos[None, :]) & (sb[..., :, None] == sb[..., None, :])  # [.., L/base, t, s]
    decay_ts = jnp.exp(jnp.where(mask[..., None], expo, 0.0))
    a = jnp.where(mask, (rb[..., :, None, :] * decay_ts * kb[..., None, :, :]).sum(-1), 0.0)
    a_full = a_full + _block_diag(a)

  # Binary hierarchy above the base blocks: at half-size h, every left block of h tokens feeds the right
  # block next to it. For s in the left and t in the right block the decay between them splits at the
  # boundary into two factors <= 1, e^{Λ(s+1..end_left)} e^{Λ(start_right..t-1)}, so A = r~ k~^T is a matmul.
  h = base
  while h < L:
    pair = lambda x: x.reshape(*lead, L // (2 * h), 2, h, *x.shape[len(lead) + 1:])
    rp, wp, kp, sp = (pair(x) for x in (r, w, k, seg))
    exc_right, _ = _partial_sums(wp[..., 1, :, :])
    _, rev_left = _partial_sums(wp[..., 0, :, :])
    a = _einsum("...tn,...sn->...ts", rp[..., 1, :, :] * jnp.exp(exc_right), kp[..., 0, :, :] * jnp.exp(rev_left))
    a = jnp.where(sp[..., 1, :, None] == sp[..., 0, None, :], a, 0.0)  # [.., L/2h, h, h]
    zeros = jnp.zeros_like(a)
    blocks = jnp.stack([jnp.stack([zeros, zeros], -3), jnp.stack([a, zeros], -3)], -4)  # [.., L/2h, 2, 2, h, h]
    a_full = a_full + _block_diag(blocks.swapaxes(-3, -2).reshape(*a.shape[:-2], 2 * h, 2 * h))
    h *= 2
  o_in = _einsum("...ts,...sv->...tv", a_full, v)

  # Chunk level: reading the entering state, and the transition to the next chunk.
  exc, rev = _partial_sums(w)                                    # Λ(c0..t-1), Λ(s+1..end)
  q0 = jnp.where((seg == 0)[..., None], r * jnp.exp(exc), 0.0)
  seg_last = seg[..., -1:]
  kbar = jnp.where((seg == seg_last)[..., None], k * jnp.exp(rev), 0.0)
  q = _einsum("...sk,...sv->...kv", kbar, v)
  decay = jnp.where(seg_last == 0, jnp.exp(w.sum(-2)), 0.0)
  if reset_state is not None:
    # Rows of later segments read reset_state decayed by Λ(p..t-1) from their segment's start p (summed
    # directly over the segment's tokens before t); the chunk leaves it decayed over its last segment.
    pos = jnp.arange(L)
    before = (seg[..., :, None] == seg[..., None, :]) & (pos[:, None] > pos[None, :])  # [.., t, j]
    exc_seg = _einsum("...tj,...jn->...tn", before.astype(w.dtype), w)
    q_reset = jnp.where((seg > 0)[..., None], r * jnp.exp(exc_seg), 0.0)
    o_in = o_in + _einsum("...tk,...kv->...tv", q_reset, reset_state)
    last_seg = jnp.where((seg == seg_last)[..., None], w, 0.0).sum(-2)
    q = q + jnp.where(seg_last == 0, 0.0, jnp.exp(last_seg))[..., :, None] * reset_state
  return q0, o_in, decay, q


def _block_diag(blocks):
  """[..., m, b, b] -> [..., m*b, m*b] with the m blocks on the diagonal."""
  m, b = blocks.shape[-3], blocks.shape[-1]
  full = blocks[..., :, :, None, :] * jnp.eye(m, dtype=blocks.dtype)[:, None, :, None]  # [.., m, b, m, b]
  return full.reshape(*blocks.shape[:-3], m * b, m * b)


def wkv6_chunked(r, w, k, v, u, initial_state, segment_ids, reset_state=None, *, chunk_size: int = 16,
                 sub_chunk: int = 1):
  """The `chunked` backend of wkv6; see `rwkvjax.ops.wkv6` for the contract.

  Args:
    r, w, k, v: [B, T, H, N], any float dtype (computed in float32). u: [H, N].
    initial_state: [B, H, K, V] or None (zeros). segment_ids: [B, T] ints or None.
    reset_state: [B or 1, H, K, V] or None (zeros): the state segments restart from.
    chunk_size: tokens per chunk L = sub_chunk * 2**j; the state scan has ceil(T / L) steps. Shorter
      sequences use the smallest such L >= T. 16 and 32 were fastest on CPU (16 compiles faster).
    sub_chunk: size of the base blocks with per-pair exponentials (sub_chunk * N exps per token);
      1 = pure hierarchy (the CPU default).

  Returns:
    o: [B, T, H, V] in the dtype of r; final_state: [B, H, K, V] float32.
  """
  levels = (chunk_size // sub_chunk).bit_length() - 1
  if sub_chunk < 1 or chunk_size != sub_chunk << levels:
    raise ValueError(f"wkv6 chunked: chunk_size={chunk_size} is not sub_chunk={sub_chunk} times a power of 2")
  B, T, H, N = r.shape
  f32 = jnp.float32
  base = min(sub_chunk, 1 << max(0, (T - 1).bit_length()))
  L = base
  while L < chunk_size and L < T:
    L *= 2
  C = -(-T // L)
  pad = C * L - T

  def to_chunks(x):  # [B, T, H, N] -> [C, B, H, L, N] float32, zero-padded in time
    x = jnp.pad(x.astype(f32), ((0, 0), (0, pad), (0, 0), (0, 0)))
    return x.reshape(B, C, L, H, N).transpose(1, 0, 3, 2, 4)

  starts = jnp.pad(segment_starts(segment_ids, B, T), ((0, 0), (0, pad)))
  seg = jnp.cumsum(starts.reshape(B, C, L).astype(jnp.int32), axis=-1)
  seg = seg.transpose(1, 0, 2)[:, :, None]  # [C, B, 1, L]

  restart = None if reset_state is None else reset_state.astype(f32)[None]  # [1, B or 1, H, K, V]
  q0, o_in, decay, q = _chunk_terms(*(to_chunks(x) for x in (r, w, k, v)), seg, base, restart)

  def step(state, xs):  # one chunk: read the entering state, then move it to the next chunk
    q0_c, d_c, q_c = xs
    return d_c[..., None] * state + q_c, _einsum("bhlk,bhkv->bhlv", q0_c, state)

  state = jnp.zeros((B, H, N, N), f32) if initial_state is None else initial_state.astype(f32)
  final_state, o_state = jax.lax.scan(step, state, (q0, decay, q))
  o = o_state + o_in
  o = o.transpose(1, 0, 3, 2, 4).reshape(B, C * L, H, N)[:, :T]
  rf, kf, vf = (x.astype(f32) for x in (r, k, v))
  o = o + (rf * u.astype(f32) * kf).sum(-1, keepdims=True) * vf
  return o.astype(r.dtype), final_state


def wkv5_chunked(r, w, k, v, u, initial_state, segment_ids, reset_state=None, *, chunk_size: int = 16,
                 sub_chunk: int = 1):
  """The `chunked` backend of wkv5 (w: [H, N]): the WKV-6 chunked form with the decay broadcast."""
  return wkv6_chunked(r, broadcast_decay(w, r), k, v, u, initial_state, segment_ids, reset_state,
                      chunk_size=chunk_size, sub_chunk=sub_chunk)
