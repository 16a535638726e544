"""`prep`'s middle row m, last row and chunk sums taken from G through an SMEM tile (fifteenth session, not timed yet: no
device time left), instead of three more tensor-core sums with their own 0/1 matrices (9 of the sums' 12 passes; the
matrices' TMAs drop from three to one). G goes to an untiled float32 SMEM tile (16 KiB at N = 64: 106 of 113 KiB, still
two CTAs per SM; at N = 128 `all_sum`'s exchange tiles, made untiled, which are free at that point), and m, the last
row (COL layout, broadcast over the rows) and the chunk sums (ROW layout) are row loads from it. Same values up to the
sums' float32 rounding order (m is now exactly G's middle row). `--verify` in the interpreter, `--check` lowers it.
w_from_parts: the exclusive sums Gm = G - w with w the sum of its three bf16 parts, still in SMEM (R0-R2) at that
point, instead of w loaded from GMEM a second time (the fourteenth session's what-if: w from SMEM 2.11 against 2.16 ms
at K1).

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_prep_sums_from_G.py --kernel prep [--shape K5]
"""

SRC = "pallas_kernels/wkv7/gpu.py"
PATCHES = [
  ("    exchange = rest[3:5]  # N = 128: the float32 tiles and the barrier of `all_sum`\n",
   "    g_rows = rest[3].at[wg]  # G, for its rows (untiled float32)\n"
   "    exchange = rest[3:5] if KB > 1 else ()  # N = 128: the float32 tiles and the barrier of `all_sum`\n"),
  ("      for i, dst in enumerate((I0, I1, I2)):\n", "      for i, dst in enumerate((I0,)):\n"),
  ("for n in (1, 6, 2)]", "for n in (1, 4, 2)]"),
  ("""      def cumsums(issue, read):  # issued together, read in turn; the last: the chunk sums transposed (ones = I2)
        for i, M in enumerate((I0, I1, I2)):
          issue(i, [(M, R) for R in (R0, R1, R2)])
        issue(3, [(R.T, I2) for R in (R0, R1, R2)])
        return [read(i) for i in range(4)]

      G, mid, last, last_t = mm.scope([LL] * 4, cumsums)
""", """      G = mm(LL, [(I0, R) for R in (R0, R1, R2)])
      g_rows[...] = G
      plgpu.commit_smem()
      mid = cols(load(g_rows.at[(L - 1) // 2], COL), LL)
      last = cols(load(g_rows.at[L - 1], COL), LL)
"""),
  ("      chunk_sum = jnp.max(last_t, axis=1)  # (every column of last_t: the channel's chunk sum; a row reduction)\n",
   "      chunk_sum = load(g_rows.at[L - 1], ROW)\n"),
  ("""  if KB > 1:
    scratch += [swizzled((KB, L, L), F32), plgpu.Barrier(num_arrivals=KB)]
""", """  scratch += [plgpu.SMEM((KB, L, L), F32)]
  if KB > 1:
    scratch += [plgpu.Barrier(num_arrivals=KB)]
"""),
]

W_PARTS = [("G - load(w_ref.at[bi, tok, h, ch]))  # the exclusive prefix sums (w again, from L2)",
            "G - sum(load(R).astype(F32) for R in (R0, R1, R2)))  # the exclusive prefix sums (w's parts)")]

VARIANTS = {
  "head": (SRC, []),
  "sums_from_G": (SRC, PATCHES),
  "w_from_parts": (SRC, W_PARTS),
  "both": (SRC, PATCHES + W_PARTS),
}
