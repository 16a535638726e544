"""Distillation losses.

* `alignment_loss`: stage 1's per-layer distance between the teacher attention output and the student time
  mixer output (ARWKV `AttentionWrapper`: mean over tokens of ||A_T - A_S||_2, times C^-1/2).
* `chunked_kl_ce`: stage 2's forward KL(p_T || p_S) at temperature tau over the full vocabulary, plus the
  student's cross-entropy, from the two models' final hidden states and LM heads. Logits are formed one
  [token chunk, vocab chunk] tile at a time with an online (running max) log-sum-exp, and each vocabulary
  tile is rematerialised in the backward pass, so neither the [B, T, V] logits nor their gradient ever exist
  whole (V = 152k x T = 2048 would be 1.2 GB per sequence in float32). `dense_kl_ce` is the reference.

Per token, with a = z / tau (z the logits) and lse the log-sum-exp over the vocabulary:
    KL = sum_v p_T(v) (a_T(v) - a_S(v)) - lse(a_T) + lse(a_S),     p_T = softmax(a_T)
    CE = lse(z_S) - z_S(target)
The online pass keeps, per token, m (a running max), s = sum exp(a - m) and u = sum exp(a_T - m_T)(a_T - a_S);
then sum_v p_T (a_T - a_S) = u / s_T. The running maxima are constants for differentiation (the result does
not depend on them), so they carry no gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ALIGN_LOSSES = ("l2", "mse")
_NEG = -1e30  # logit of padded vocabulary entries (finite: padded - padded must be 0, not nan)


def _safe_norm(x: jax.Array) -> jax.Array:
  """||x||_2 over the last axis with a zero (not nan) gradient at x = 0."""
  sq = jnp.sum(jnp.square(x), axis=-1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def alignment_loss(a_teacher: jax.Array, a_student: jax.Array, valid: jax.Array | None = None, kind: str = "l2"
                   ) -> jax.Array:
  """Stage-1 loss of one layer, float32 scalar.

  kind "l2" (ARWKV): mean over valid tokens of ||a_T - a_S||_2 * C^-1/2; "mse": mean over valid tokens and
  channels of (a_T - a_S)^2. a_*: [B, T, C]; valid: optional [B, T] (1 = counts).
  """
  diff = a_teacher.astype(jnp.float32) - a_student.astype(jnp.float32)
  if kind == "l2":
    per_token = _safe_norm(diff) * (diff.shape[-1] ** -0.5)
  elif kind == "mse":
    per_token = jnp.mean(jnp.square(diff), axis=-1)
  else:
    raise ValueError(f"alignment loss {kind!r}: expected one of {ALIGN_LOSSES}")
  if valid is None:
    return per_token.mean()
  valid = valid.astype(jnp.float32)
  return (per_token * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  return x if x.shape[0] == rows else jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def chunked_kl_ce(h_student: jax.Array, w_student: jax.Array, h_teacher: jax.Array | None,
                  w_teacher: jax.Array | None, targets: jax.Array | None = None, *, temperature: float = 1.0,
                  token_chunk: int = 1024, vocab_chunk: int = 8192) -> tuple[jax.Array | None, jax.Array | None]:
  """Per-token forward KL(teacher || student) at `temperature` and student cross-entropy, chunked.

  Args:
    h_student: [..., C_s] student final hidden states (compute dtype); w_student: [V, C_s] its LM head.
    h_teacher, w_teacher: the teacher's ([..., C_t], [V_t, C_t]) with V_t >= V (the teacher's logits are
      truncated to the student's vocabulary, as ARWKV does); None for cross-entropy only. The teacher's side
      gets no gradient.
    targets: [...] int next tokens, or None for KL only.
    token_chunk, vocab_chunk: tile sizes (capped at the token count and V; V need not divide).
  Returns:
    (kl [...] float32 or None, ce [...] float32 or None): unmasked per-token values; mask and average them.
  """
  lead = h_student.shape[:-1]
  n = math.prod(lead)
  V = w_student.shape[0]
  with_kl, with_ce = h_teacher is not None, targets is not None
  if not (with_kl or with_ce):
    raise ValueError("chunked_kl_ce: nothing to compute (no teacher and no targets)")
  if with_kl and w_teacher.shape[0] < V:
    raise ValueError(f"chunked_kl_ce: the teacher's vocabulary ({w_teacher.shape[0]}) is smaller than the "
                     f"student's ({V})")
  tc, vc = max(1, min(token_chunk, n)), max(1, min(vocab_chunk, V))
  n_t, n_v = -(-n // tc), -(-V // vc)
  inv_tau = 1.0 / float(temperature)
  cdt = h_student.dtype

  def tiles(w):  # [V(+), C] -> [n_v, vc, C], zero rows past V
    return _pad_rows(w[:V].astype(cdt), n_v * vc).reshape(n_v, vc, w.shape[-1])

  def tokens(h):  # [..., C] -> [n_t, tc, C]
    return _pad_rows(h.reshape(n, h.shape[-1]), n_t * tc).reshape(n_t, tc, h.shape[-1])

  ws = tiles(w_student)
  hs = tokens(h_student)
  if with_kl:
    wt = jax.lax.stop_gradient(tiles(w_teacher))
    ht = jax.lax.stop_gradient(tokens(h_teacher.astype(cdt)))
  else:
    wt, ht = jnp.zeros((n_v, 0, 0), cdt), jnp.zeros((n_t, 0, 0), cdt)
  tg = _pad_rows(targets.reshape(n).astype(jnp.int32), n_t * tc).reshape(n_t, tc) if with_ce else \
      jnp.zeros((n_t, tc), jnp.int32)
  offsets = jnp.arange(n_v, dtype=jnp.int32) * vc

  def online(m, s, a):
    m_new = jax.lax.stop_gradient(jnp.maximum(m, a.max(-1)))
    return m_new, s * jnp.exp(m - m_new) + jnp.exp(a - m_new[:, None]).sum(-1), jnp.exp(m - m_new)

  @jax.checkpoint
  def vocab_tile(carry, inputs):
    h_s, h_t, target = carry[0]
    acc = carry[1]
    w_s, w_t, off = inputs
    ids = off + jnp.arange(vc, dtype=jnp.int32)
    valid = (ids < V)[None, :]
    z_s = jnp.einsum("tc,vc->tv", h_s, w_s, preferred_element_type=jnp.float32)
    new = dict(acc)
    if with_kl:
      z_t = jnp.einsum("tc,vc->tv", h_t, w_t, preferred_element_type=jnp.float32)
      a_s = jnp.where(valid, z_s * inv_tau, _NEG)
      a_t = jnp.where(valid, z_t * inv_tau, _NEG)
      new["m_t"], new["s_t"], scale = online(acc["m_t"], acc["s_t"], a_t)
      new["u"] = acc["u"] * scale + (jnp.exp(a_t - new["m_t"][:, None]) * (a_t - a_s)).sum(-1)
      new["m_s"], new["s_s"], _ = online(acc["m_s"], acc["s_s"], a_s)
    if with_ce:
      z = jnp.where(valid, z_s, _NEG)
      new["m_1"], new["s_1"], _ = online(acc["m_1"], acc["s_1"], z)
      new["z_y"] = acc["z_y"] + jnp.where(ids[None, :] == target[:, None], z, 0.0).sum(-1)
    return (carry[0], new), None

  def token_tile(_, inputs):
    h_s, h_t, target = inputs
    zeros, neg = jnp.zeros((tc,), jnp.float32), jnp.full((tc,), _NEG, jnp.float32)
    acc = {}
    if with_kl:
      acc.update(m_t=neg, s_t=zeros, u=zeros, m_s=neg, s_s=zeros)
    if with_ce:
      acc.update(m_1=neg, s_1=zeros, z_y=zeros)
    (_, acc), _ = jax.lax.scan(vocab_tile, ((h_s, h_t, target), acc), (ws, wt, offsets))
    kl = ce = zeros
    if with_kl:
      kl = acc["u"] / acc["s_t"] - (acc["m_t"] + jnp.log(acc["s_t"])) + (acc["m_s"] + jnp.log(acc["s_s"]))
    if with_ce:
      ce = acc["m_1"] + jnp.log(acc["s_1"]) - acc["z_y"]
    return None, (kl, ce)

  _, (kl, ce) = jax.lax.scan(token_tile, None, (hs, ht, tg))
  kl = kl.reshape(-1)[:n].reshape(lead) if with_kl else None
  ce = ce.reshape(-1)[:n].reshape(lead) if with_ce else None
  return kl, ce


def dense_kl_ce(h_student, w_student, h_teacher, w_teacher, targets=None, *, temperature: float = 1.0):
  """The unchunked reference of `chunked_kl_ce` (materialises the logits; for tests and small models)."""
  V = w_student.shape[0]
  z_s = jnp.einsum("...c,vc->...v", h_student, w_student.astype(h_student.dtype), preferred_element_type=jnp.float32)
  kl = ce = None
  if h_teacher is not None:
    z_t = jnp.einsum("...c,vc->...v", jax.lax.stop_gradient(h_teacher.astype(h_student.dtype)),
                     jax.lax.stop_gradient(w_teacher[:V].astype(h_student.dtype)), preferred_element_type=jnp.float32)
    logp_t = jax.nn.log_softmax(z_t / temperature, axis=-1)
    logp_s = jax.nn.log_softmax(z_s / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
  if targets is not None:
    logp = jax.nn.log_softmax(z_s, axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return kl, ce


def masked_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum(values * mask) / max(sum(mask), 1), sum(mask)), float32."""
  mask = mask.astype(jnp.float32)
  count = mask.sum()
  return (values.astype(jnp.float32) * mask).sum() / jnp.maximum(count, 1.0), count
