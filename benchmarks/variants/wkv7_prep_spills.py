"""`prep` at N = 64 with fewer values live across the WY products, ready to time (sixteenth session; chosen by ptxas's
spills at K1 from `kernel_variants.py ... --kernel prep --ptxas`, stores / loads per thread; the kernel: 296 / 296):
- q0_late: q0 = [first segment] r e^G, the first rows' share of Qo, made in the outputs' products (r loaded again from
  GMEM, G from its SMEM tile) instead of kept from the q rows across WY: 120 / 120;
- q0_av_late: and a loaded from its staging tile in WY, where it is used, not in the q rows: 120 / 120;
- av_late alone: 208 / 208;
- A_smem_av_late: A_qk and A_qb split into the inverse's tiles I0-I3 (free after it; T's store from I0, I1 waited for)
  and taken from SMEM by the outputs' products, with av_late: 200 / 200.
Same values (`--verify 1,128,1,64`).

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_prep_spills.py --kernel prep
"""

SRC = "pallas_kernels/wkv7/gpu.py"
Q0_LATE = [
  ("      q0 = jnp.where(first_rows(), rv * jnp.exp(G), 0.0)\n", ""),
  ("        return q0 + read(0), read(1)\n",
   "        G_now = load(g_tile.at[pl.ds(1, L)]) if KB == 1 else G\n"
   "        q0 = jnp.where(first_rows(), load(r_ref.at[bi, tok, h, ch]).astype(F32) * jnp.exp(G_now), 0.0)\n"
   "        return q0 + read(0), read(1)\n"),
]
AV_LATE = [
  ("      av = load(O1).astype(F32)\n", ""),
  ("      store_split(jnp.where(first_rows(), av * jnp.exp(Gm), 0.0), R0, R1)\n",
   "      store_split(jnp.where(first_rows(), load(O1).astype(F32) * jnp.exp(Gm), 0.0), R0, R1)\n"),
]
A_SMEM = [
  ("      A_qk, A_qb = mm.scope([LL, LL], q_rows)\n",
   "      A_qk, A_qb = mm.scope([LL, LL], q_rows)\n"
   "      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # (T's store from I0, I1 has read them)\n"
   "      store_split(A_qk, I0, I1)\n"
   "      store_split(A_qb, I2, I3)\n"
   "      plgpu.commit_smem()\n"),
  ("      qb, qk = split(A_qb), split(A_qk)\n", "      qb, qk = (I2, I3), (I0, I1)\n"),
]

VARIANTS = {
  "head": (SRC, []),
  "q0_late": (SRC, Q0_LATE),
  "q0_av_late": (SRC, Q0_LATE + AV_LATE),
  "av_late": (SRC, AV_LATE),
  "A_smem_av_late": (SRC, A_SMEM + AV_LATE),
}
