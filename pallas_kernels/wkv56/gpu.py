"""`pallas_gpu`: WKV-6 (and WKV-5) on Pallas Mosaic GPU kernels (Hopper, sm_90), forward and backward.

Chunk L = 64 tokens, head dims N = 64 and 128, bf16 inputs, fp32 decays and state. The split between Mosaic GPU
kernels and XLA mirrors `pallas_kernels.wkv7.gpu` (both use `pallas_kernels.mosaic_gpu_tiles`, and
`pallas_kernels.mosaic_gpu_state_pass` for the state passes 2 and 3), with the chunk algebra of `common`:

1. `_prep` (Mosaic GPU, chunk-parallel, one warpgroup per CTA, grid (C, H, B)): per chunk, from r, k, v (bf16, read
   in the caller's [B, T, H, N] layout), w (float32) and u, the intra-chunk matrix A with exact decays over the
   binary hierarchy of `common` (the in-block exponent sums E_h, F_h of every level as tensor-core products of a
   0/1 block-triangular matrix with w split into two bf16 halves, fp32 accumulation: a direct sum, about 16
   significant bits per term; the level products (r e^{E_h}) (k e^{F_h})^T with both factors rounded once to bf16,
   as fla's kernels round theirs: split-bf16 x3 products cost 0.3 ms more at K1 on an H100), the bonus
   on A's diagonal, and writes three bf16 [L, N] tiles per chunk, head-major [B, H, T, N]: Qo = r e^{Λ(c0..t-1)}
   (rows that see the entering state), Ob = A V, Kbar = k e^{Λ(s+1..end)} (the chunk's last segment).
2. `_state_fwd` (Mosaic GPU, sequential over chunks, grid (V / bv, H, B), one warpgroup): the state S [K, bv] in
   fp32 registers; per chunk, with TMA double-buffered tiles, o = Qo S + Ob and S <- diag(d) S + Kbar^T V (S enters
   the tensor cores as split bf16, hi + lo). Writes o (bf16, [B, T, H, N]), the final state and, for the backward,
   the state entering every chunk (fp32).
3. `_state_bwd` (Mosaic GPU, same grid, chunks in reverse): the state gradient dS [K, bv] in registers,
   dS <- diag(d) dS + Qo^T dO (both operands exact bf16); writes dS after every chunk (fp32) and dS0.
4. `gpu_bwd.chunk_grads` (Mosaic GPU, chunk-parallel, one warpgroup per CTA, grid (C, H, B)): the input gradients
   dr, dw, dk, dv and each chunk's share of du (XLA sums it), the math of `common.chunk_backward` per chunk given
   the saved entering states and the state gradients of 3, recomputing the chunk's level factors with the numerics
   of 1 (bf16 level factors, fp32 accumulation; its docstring says what that does to dw); dw regrouped (products
   over the whole chunk instead of two per level). It replaces `common.chunk_backward` vmapped in XLA, which
   dominated the backward: at K1 (8, 4096, 32, 64) on an H100, forward 2.83 ms, forward+backward 25.77 ms with it
   (fla's chunk_rwkv6: 2.25 / 7.45 ms; docs/benchmarks.md, 2026-11-26, third session). The kernel is checked in the
   Mosaic GPU interpreter (the gradients of tests/ops/wkv56_pallas_test.py, and against the XLA version: relative
   differences ~2e-3, dw ~3e-3, the bf16 factors), by lowering to Mosaic GPU (112 KiB SMEM per CTA at N = 64, two
   CTAs per SM) and on an H100 against float64 (below). `benchmarks/wkv_bench.py --pieces` times it against the XLA
   version: at K1 on an H100, 3.5 .. 4.1 ms against 23.8 ms (ninth session). The whole backend's forward+backward
   against fla's chunk_rwkv6 in one process (tenth session, H100): K1 5.00 / 7.58 ms, K2 3.97 / 5.76, K3 9.69 /
   15.14, K4 5.82 / 9.38 (0.66x, 0.69x, 0.64x, 0.62x; docs/benchmarks.md).

The chunk decay dec = e^{Λ(chunk)} (0 for chunks with a segment start) is computed by XLA (a [B, H, C, N] sum).
Resets: `segment_ids` -> the per-token segment index inside each chunk (float32 [B, T]); masks as in `common`.
WKV-5 broadcasts its [H, N] decay over [B, T] and runs the WKV-6 kernels.
`interpret=True` runs the four Mosaic GPU kernels in the Mosaic GPU interpreter (CPU tests).
On an H100 (ninth session, bf16 inputs, bf16 level factors): against a float64 reference
(tests/ops/wkv56_pallas_test.py -k float64: wkv6 N = 64 and 128, 132 heads, wkv5, with and without resets), all
outputs and gradients <= 4.1e-3 but dw, <= 6.1e-3 (one case of ten). The 0/1 block-triangular matrices of
the exponent sums go through SMEM (M0, M1): built in registers and used as the register lhs of the products, they
gave a wrong forward at N = 128 (relative error 0.57). One float64 test run of wkv5 with resets gave NaN outputs
(seed 1883794506, before that change, after the N = 128 failure in the same process); not reproduced since
(that seed in interpret mode: no NaN, error 3.9e-3).
"""

from __future__ import annotations

import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels.chunking import pad_time, segment_index
from pallas_kernels.mosaic_gpu_state_pass import state_pass
from pallas_kernels.mosaic_gpu_tiles import (
  CHUNK, COL, HEAD_DIMS, ROW, block_v, cols, compiler_params, interpret_params, iota, load, Mma, rows, split,
  store_split, swizzled, unsupported_reason, x2,
)
from pallas_kernels.wkv56 import gpu_bwd
from rwkvjax.ops.wkv5 import broadcast_decay

F32 = jnp.float32
BF16 = jnp.bfloat16
L = CHUNK  # tokens per chunk
LEVELS = gpu_bwd.LEVELS

__all__ = ["wkv5_pallas_gpu", "wkv6_pallas_gpu", "HEAD_DIMS"]


# ------------------------------------------------------------------------------------------------------------------
# 1. per-chunk preparation
# ------------------------------------------------------------------------------------------------------------------


def _prep(r, k, v, w, u, seg, *, interpret=False):
  """Three bf16 tiles [B, H, Tp, N]: (qo, ob, kbar), see the module docstring.

  r, k, v: [B, Tp, H, N] bf16, Tp a multiple of L; w [B, Tp, H, N] float32 (zero-padded); u [H, N] float32;
  seg [B, Tp] float32 segment index inside each chunk.
  """
  B, Tp, H, N = r.shape
  C = Tp // L
  LN, LL = (L, N), (L, L)

  def body(r_ref, k_ref, v_ref, w_ref, u_ref, s_ref, tri_ref, qo_ref, ob_ref, kb_ref, v_s, W0, W1, Q0, Q1, tri,
           *rest):
    M0, M1 = tri.at[0], tri.at[1]
    bar, mask_bar = rest[-2:]
    stage = None
    if interpret:
      st = rest[:-2]
      stage = {LN: list(st[:2])} if N == L else {LN: list(st[:2]), LL: list(st[2:4])}
    mm = Mma(stage)
    c, h, bi = lax.axis_index("c"), lax.axis_index("h"), lax.axis_index("b")
    tok = pl.ds(c * L, L)
    plgpu.copy_gmem_to_smem(v_ref.at[bi, tok, h], v_s, bar)
    plgpu.copy_gmem_to_smem(tri_ref.at[1], tri, mask_bar)  # the first pair level's triangles

    store_split(load(w_ref.at[bi, tok, h]), W0, W1)  # w = hi + lo, the right operand of the exponent sums
    rb = load(r_ref.at[bi, tok, h])
    kb = load(k_ref.at[bi, tok, h])
    Q0[...] = kb  # level 1: A_{t, t-1} = r_t . k_{t-1} (exact bf16 operands)
    plgpu.commit_smem()
    rv, kv = rb.astype(F32), kb.astype(F32)
    seg_i = load(s_ref.at[bi, tok], ROW)
    seg_j = load(s_ref.at[bi, tok], COL)
    seg_last = s_ref[bi, c * L + L - 1]
    ri, ci = iota(LL, 0), iota(LL, 1)
    same = rows(seg_i, LL) == cols(seg_j, LL)

    def pairs(shift):  # t in the right, s in the left half of an aligned block of 2^(shift+1) tokens
      return same & ((ri >> (shift + 1)) == (ci >> (shift + 1))) & ((ri >> shift) != (ci >> shift)) & (ri > ci)

    def exponents(shift, fetch_next=True):  # (E, F) [L, N]: in-block exclusive prefix / suffix sums of w over blocks
      # of 2^shift, with that level's lower / upper 0/1 triangles in M0, M1 (TMA); then fetches the next level's
      plgpu.barrier_wait(mask_bar)
      E, F = mm(LN, [(M0, W0), (M0, W1)]), mm(LN, [(M1, W0), (M1, W1)])
      if fetch_next:  # (the products that read M0, M1 are done)
        plgpu.copy_gmem_to_smem(tri_ref.at[shift + 1], tri, mask_bar)
      return E, F

    bonus = jnp.sum(rv * cols(load(u_ref.at[h], COL), LN) * kv, axis=1)  # r_t . u . k_t (ROW layout)
    A = jnp.where(ri == ci, rows(bonus, LL), 0.0)
    A = jnp.where(pairs(0), mm(LL, [(rb, Q0.T)]), A)

    def level(shift, A):  # pair levels 2 .. L/2 as one loop body (so the code is fetched once)
      E, F = exponents(shift)
      Q0[...] = (kv * jnp.exp(F)).astype(BF16)
      plgpu.commit_smem()
      return jnp.where(pairs(shift), mm(LL, [((rv * jnp.exp(E)).astype(BF16), Q0.T)]), A)

    A = lax.fori_loop(1, LEVELS, level, A)

    # chunk level: the readout of the entering state and the transition's key factors
    E, F = exponents(LEVELS, fetch_next=False)
    first_rows = rows(seg_i, LN) == 0.0
    last_rows = rows(seg_i, LN) == seg_last
    # the outputs go through SMEM by TMA, staged in tiles whose products are done: w's (W0, W1), k's (Q0)
    W0[...] = jnp.where(first_rows, rv * jnp.exp(E), 0.0).astype(BF16)
    W1[...] = jnp.where(last_rows, kv * jnp.exp(F), 0.0).astype(BF16)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(W0, qo_ref.at[bi, h, tok])
    plgpu.copy_smem_to_gmem(W1, kb_ref.at[bi, h, tok])
    plgpu.barrier_wait(bar)  # v is in SMEM
    a_hi, a_lo = split(A)
    Q0[...] = mm(LN, [(a_hi, v_s), (a_lo, v_s)]).astype(BF16)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(Q0, ob_ref.at[bi, h, tok])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # (the CTA may exit while its last stores land)

  scratch = [swizzled(LN) for _ in range(5)] + [swizzled((2, L, L))]
  if interpret:
    scratch += [swizzled(LN) for _ in range(2)] + ([] if N == L else [swizzled(LL) for _ in range(2)])
  scratch += [plgpu.Barrier(num_arrivals=1), plgpu.Barrier(num_arrivals=1)]
  out = jax.ShapeDtypeStruct((B, H, Tp, N), BF16)
  kern = plgpu.kernel(body, out_type=(out,) * 3, grid=(C, H, B), grid_names=("c", "h", "b"),
                      scratch_types=tuple(scratch), compiler_params=compiler_params(),
                      interpret=interpret_params(interpret), kernel_name="wkv6_prep")
  return kern(r, k, v, w, u, seg, gpu_bwd.level_triangles())


# ------------------------------------------------------------------------------------------------------------------
# 2. forward state pass
# ------------------------------------------------------------------------------------------------------------------


def _state_fwd(qo, ob, kb, v, dec, h0, *, bv: int, save: bool, interpret=False):
  """o [B, Tp, H, N] bf16, final [B, H, N, N] f32 and (save) entering states [B, H, C, N, N] bf16.

  qo, ob, kb: [B, H, Tp, N] bf16 (from `_prep`); v [B, Tp, H, N] bf16; dec [B, H, C, N] f32; h0 [B, H, N, N] f32."""
  mm = Mma(None)  # every left operand is an SMEM tile

  def transition(S, k, v, extra, emit):  # o = Qo S + Ob; S <- diag(d) S + Kbar^T V
    (qo_s, kb_s), (ob_s, v_s) = k, v
    emit(load(ob_s).astype(F32) + mm((L, bv), x2(qo_s, S)))
    return [(kb_s.T, v_s)]

  return state_pass(transition, (qo, kb), (ob,), (v,), dec, h0, L=L, bv=bv, reverse=False, save=save,
                    with_output=True, name="wkv6_state_fwd", interpret=interpret)


# ------------------------------------------------------------------------------------------------------------------
# 3. backward state pass
# ------------------------------------------------------------------------------------------------------------------


def _state_bwd(qo, d_o, dec, d_final, *, bv: int, interpret=False):
  """(dS after each chunk [B, H, C, N, N] f32, dS0 [B, H, N, N] f32).

  qo: [B, H, Tp, N] bf16; d_o [B, Tp, H, N] bf16; dec [B, H, C, N]; d_final [B, H, N, N] f32."""

  def transition(dS, k, v, extra, emit):  # dS <- diag(d) dS + Qo^T dO
    (qo_s,), (do_s,) = k, v
    return [(qo_s.T, do_s)]

  ds0, d_states = state_pass(transition, (qo,), (), (d_o,), dec, d_final, L=L, bv=bv, reverse=True, save=True,
                             with_output=False, name="wkv6_state_bwd", interpret=interpret)
  return d_states, ds0


# ------------------------------------------------------------------------------------------------------------------
# glue: prologue, custom_vjp, backends
# ------------------------------------------------------------------------------------------------------------------


def _chunk_decay(w, seg):
  """dec [B, H, C, N] float32: e^{Λ(chunk)} of chunks without a segment start, else 0. w [B, Tp, H, N] float32."""
  B, Tp, H, N = w.shape
  C = seg.shape[1]
  carry = seg[:, :, L - 1] == 0.0
  dec = jnp.where(carry[:, :, None, None], jnp.exp(w.reshape(B, C, L, H, N).sum(axis=2)), 0.0)
  return dec.transpose(0, 2, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _wkv6(r, w, k, v, u, s0, seg, interpret):
  return _wkv6_fwd(r, w, k, v, u, s0, seg, interpret, save=False)[0]


def _wkv6_fwd(r, w, k, v, u, s0, seg, interpret, save=True):
  B, T, H, N = r.shape
  C = seg.shape[1]
  Tp = C * L
  rb, kb, vb = (pad_time(x.astype(BF16), Tp) for x in (r, k, v))
  wf = pad_time(w.astype(F32), Tp)
  dec = _chunk_decay(wf, seg)
  qo, ob, kbar = _prep(rb, kb, vb, wf, u, seg.reshape(B, Tp), interpret=interpret)
  outs = _state_fwd(qo, ob, kbar, vb, dec, s0, bv=block_v(B, H, N), save=save, interpret=interpret)
  o, final = outs[0][:, :T].astype(r.dtype), outs[1]
  if not save:
    return (o, final), None
  return (o, final), (r, w, k, v, u, seg, outs[2], qo, dec)


def _wkv6_bwd(interpret, res, cts):
  r, w, k, v, u, seg, states, qo, dec = res
  d_o, d_final = cts
  B, T, H, N = r.shape
  Tp = seg.shape[1] * L
  d_o_p = pad_time(d_o.astype(BF16), Tp)
  d_states, ds0 = _state_bwd(qo, d_o_p, dec, d_final.astype(F32), bv=block_v(B, H, N), interpret=interpret)
  rb, kb, vb = (pad_time(x.astype(BF16), Tp) for x in (r, k, v))
  dtypes = [x.dtype for x in (r, w, k, v)]
  *grads, du = gpu_bwd.chunk_grads(rb, kb, vb, pad_time(w.astype(F32), Tp), u, seg.reshape(B, Tp), dec, states,
                                   d_o_p, d_states, dtypes, interpret=interpret)
  return tuple(g[:, :T] for g in grads) + (du.sum(axis=(0, 2)), ds0, None)


_wkv6.defvjp(_wkv6_fwd, _wkv6_bwd)


def _no_reset_state(reset_state):
  if reset_state is not None:
    raise NotImplementedError("pallas_gpu does not support reset_state; use impl='chunked' (or 'auto')")


def wkv6_pallas_gpu(r, w, k, v, u, initial_state, segment_ids, reset_state=None, *, interpret: bool = False):
  """The `pallas_gpu` backend of wkv6; see `rwkvjax.ops.wkv6` for the contract.

  r, k, v are used as bf16 (cast if not), w and u as float32; state float32; o in the dtype of r. Calls the kernels
  cannot run (no Hopper GPU, head dim not in HEAD_DIMS) run the `chunked` backend instead.
  interpret: run the Mosaic GPU kernels in the Mosaic GPU interpreter (CPU tests).
  reset_state: not supported (segments restart from zero); a non-None one raises NotImplementedError.
  """
  _no_reset_state(reset_state)
  if unsupported_reason(r, HEAD_DIMS, interpret) is not None:
    from rwkvjax.ops.chunked_v56 import wkv6_chunked  # noqa: PLC0415

    return wkv6_chunked(r, w, k, v, u, initial_state, segment_ids)
  B, T, H, N = r.shape
  s0 = jnp.zeros((B, H, N, N), F32) if initial_state is None else initial_state.astype(F32)
  seg = segment_index(segment_ids, B, T, L)
  return _wkv6(r, w, k, v, u.astype(F32), s0, seg, interpret)


def wkv5_pallas_gpu(r, w, k, v, u, initial_state, segment_ids, reset_state=None, *, interpret: bool = False):
  """The `pallas_gpu` backend of wkv5 (w: [H, N]): the WKV-6 kernels with the decay broadcast over [B, T]."""
  _no_reset_state(reset_state)
  return wkv6_pallas_gpu(r, broadcast_decay(w, r), k, v, u, initial_state, segment_ids, interpret=interpret)
