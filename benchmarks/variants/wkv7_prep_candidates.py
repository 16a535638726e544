"""Candidate rewrites of WKV-7 `_prep` that compute the same values (`--verify` in the interpreter: bit-identical),
for `benchmarks/kernel_variants.py --kernel prep`; not timed yet (fourteenth session: no device time left). The
what-ifs (`wkv7_prep_whatif.py`) found the inverse's chain of dependent products worth ~0.5 ms of `prep`'s 2.16 at K1
and 32 more registers live across it worth +0.07 ms:
- level_store_overlapped: each doubling level issues D A_ab before storing D (the second product's operand) to SMEM,
  so the stores and their fence overlap the tensor cores instead of preceding them;
- Gm_reloaded: wy rebuilds Gm from G and w (a third load of w, from L2) instead of keeping it in 32 registers across
  the inverse.

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_prep_candidates.py --kernel prep [--verify 1,128,1,64]
"""

SRC = "pallas_kernels/wkv7/gpu.py"
A_AB_STORED = "        store_split(A_ab, I0, I1)\n"
LEVEL = """        store_split(D, I2, I3)
        plgpu.commit_smem()
        P = jnp.where(off, mm(LL, x3(split(D), (I0, I1))), 0.0)
"""
LEVEL_OVERLAPPED = """        Ds = split(D)

        def first(issue, read):  # D A_ab, while D goes to SMEM for the second product
          issue(0, x3(Ds, (I0, I1)))
          I2[...], I3[...] = Ds
          plgpu.commit_smem()
          return read(0)

        P = jnp.where(off, mm.scope([LL], first), 0.0)
"""
GM_KEPT = "store_split(jnp.where(first_rows, av * jnp.exp(Gm), 0.0), R0, R1)"
GM_RELOADED = ("store_split(jnp.where(first_rows, av * jnp.exp(jnp.where(rN == 0, 0.0, "
               "G - load(w_ref.at[bi, tok, h, ch]))), 0.0), R0, R1)")
OVERLAP = [(A_AB_STORED, A_AB_STORED + "        plgpu.commit_smem()\n"), (LEVEL, LEVEL_OVERLAPPED)]

VARIANTS = {
  "head": (SRC, []),
  "level_store_overlapped": (SRC, OVERLAP),
  "Gm_reloaded": (SRC, [(GM_KEPT, GM_RELOADED)]),
  "both": (SRC, OVERLAP + [(GM_KEPT, GM_RELOADED)]),
}
