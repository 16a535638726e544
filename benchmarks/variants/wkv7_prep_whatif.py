"""What-if variants of WKV-7 `_prep` for `benchmarks/kernel_variants.py --kernel prep`: the GMEM loads into registers
(w twice, the segment indices) from SMEM or kept, and bounds on the inverse (its levels skipped; x2 instead of x3
products, wrong precision). Numbers: docs/benchmarks.md.

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_prep_whatif.py --kernel prep
"""

SRC = "pallas_kernels/wkv7/gpu.py"
W_AGAIN = "G - load(w_ref.at[bi, tok, h, ch])"
W_FIRST = "wv = load(w_ref.at[bi, tok, h, ch])"
DOUBLING = "D = lax.fori_loop(1, levels, doubling, D)"
LEVEL_X3 = "P = jnp.where(off, mm(LL, x3(split(D), (I0, I1))), 0.0)\n        return D + mm(LL, x3(split(P), (I2, I3)))"
LEVEL_X2 = "P = jnp.where(off, mm(LL, x2(split(D), I0)), 0.0)\n        return D + mm(LL, x2(split(P), I2))"

VARIANTS = {
  "head": (SRC, []),
  "w_kept": (SRC, [(W_AGAIN, "G - wv")]),  # a real option: w's registers live across the sums' products
  "w_smem": (SRC, [(W_FIRST, "wv = load(v_s).astype(F32)"), (W_AGAIN, "G - load(v_s).astype(F32)")]),
  "no_inverse_levels": (SRC, [(DOUBLING, "D = D")]),
  "inverse_x2": (SRC, [(LEVEL_X3, LEVEL_X2)]),
}
