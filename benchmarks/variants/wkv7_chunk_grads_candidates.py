"""Candidate rewrites of WKV-7 `chunk_grads` for `benchmarks/kernel_variants.py` (fourteenth session, not timed yet:
no device time left), checked with `--verify` in the interpreter:
- e_side_from_e_fac: the state-side factor e^{sigma X + tau g_last} as e_factor e^{sigma m + tau g_last} (a row's exp
  instead of a tile's per role; differs from head by float32 rounding only);
- X_one_load: the role's cumulative log-decay (G, or Gm for role a) by one load at a row offset picked by the role, as
  before bb4a38e, instead of a `lax.cond` between two loads (bit-identical);
- dw_masks_in_smem (N = 64): M_>= and ones built with iota and stored into dO's and v's tiles, idle in role a, instead
  of loaded from GMEM as register operands (bit-identical; iota-built register operands were wrong on the H100, from
  SMEM they were right: `mosaic_gpu_tiles.Mma`).

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_chunk_grads_candidates.py [--verify 1,128,1,64]
"""

SRC = "pallas_kernels/wkv7/gpu_bwd.py"
E_SIDE = """e_fac = jnp.exp(sigma(j) * (X - mid(kb)))
        e_side = jnp.exp(sigma(j) * X + jnp.where(j < R_, 1.0, 0.0).astype(F32) * gl(kb))"""
E_SIDE_FROM_FAC = """m_row, last_row = (load(g_ref.at[bi, g_row(t), h, ks(kb)], COL) for t in ((L - 1) // 2, L - 1))
        e_fac = jnp.exp(sigma(j) * (X - cols(m_row, LL)))
        tau = jnp.where(j < R_, 1.0, 0.0).astype(F32)
        e_side = e_fac * cols(jnp.exp(sigma(j) * m_row + tau * last_row), LL)  # (exp of a row, not of a tile)"""
X_COND = "return x, lax.cond(j == A_, lambda: Gm(kb), lambda: G(kb))"
X_ONE_LOAD = ("excl = jnp.where(j == A_, 1, 0)\n"
              "      X = load(g_ref.at[bi, pl.ds(g_row(0) - excl, L), h, ks(kb)])\n"
              "      return x, jnp.where(iota(shape(kb), 0) < excl, 0.0, X)")
DW_LHS = "lhs = (load(tri_ref.at[0]), load(tri_ref.at[1]), load(dst_ref.at[bi, h, c, ks(kb)]))"
DW_LHS_SMEM = """if staged:  # dO's and v's tiles are idle in role a
          do_s[...] = (iota(LL, 1) >= iota(LL, 0)).astype(BF16)
          v_s[...] = plgpu.layout_cast(jnp.ones(LL, BF16), plgpu.Layout.WGMMA)
          lhs = (do_s, v_s, load(dst_ref.at[bi, h, c, ks(kb)]))
        else:
          """ + DW_LHS

VARIANTS = {
  "head": (SRC, []),
  "e_side_from_e_fac": (SRC, [(E_SIDE, E_SIDE_FROM_FAC)]),
  "X_one_load": (SRC, [(X_COND, X_ONE_LOAD)]),
  "dw_masks_in_smem": (SRC, [(DW_LHS, DW_LHS_SMEM)]),
  "all": (SRC, [(E_SIDE, E_SIDE_FROM_FAC), (X_COND, X_ONE_LOAD), (DW_LHS, DW_LHS_SMEM)]),
}
