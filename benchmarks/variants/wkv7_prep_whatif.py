"""What-if variants of WKV-7 `_prep` for `benchmarks/kernel_variants.py --kernel prep`: bounds on the inverse (its
levels skipped; x2 instead of x3 products, wrong precision). Numbers: docs/benchmarks.md (w's second load from SMEM,
the fourteenth session's what-if, is in the kernel since the sixteenth session: Gm from w's parts in SMEM).

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_prep_whatif.py --kernel prep
"""

SRC = "pallas_kernels/wkv7/gpu.py"
DOUBLING = "D = lax.fori_loop(1, levels, doubling, D)"
LEVEL_X3 = "P = jnp.where(off, mm(LL, x3(split(D), (I0, I1))), 0.0)\n        return D + mm(LL, x3(split(P), (I2, I3)))"
LEVEL_X2 = "P = jnp.where(off, mm(LL, x2(split(D), I0)), 0.0)\n        return D + mm(LL, x2(split(P), I2))"

VARIANTS = {
  "head": (SRC, []),
  "no_inverse_levels": (SRC, [(DOUBLING, "D = D")]),
  "inverse_x2": (SRC, [(LEVEL_X3, LEVEL_X2)]),
}
