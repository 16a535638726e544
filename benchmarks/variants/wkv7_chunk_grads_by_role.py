"""The fifteenth session's two-warpgroup `chunk_grads` (`wkv7_gpu_bwd_by_role.py`, see its docstring) against the
kernel in use, at N = 128, where its code is faster than the kernel in use's (K5, H100: 7.22 against 8.03 ms, and 7.43 /
7.22 against 8.38 / 8.12 in two more processes, sixteenth session) and ptxas spills far less (356 / 364 bytes of spill
stores / loads against 1184 / 944), while reading both finds them nearly equal:
- all_three: the experiment taken back toward the kernel in use in three pieces (the TMAs issued inside the first
  phase's block, u's TMA after the forward recompute, the state tile [N, N]): still 7.09 against 8.03 (each piece alone
  7.09-7.24), so none of them is the cause;
- head_exp_phase: the kernel in use with the experiment's forward recompute at N = 128 (k^, b^ into W2 from one
  e^{m-G}, A_qk and A_qb from one q~, then A_ak): 7.85 against 8.12, spills 1096 / 824. The rest is not found yet.
All compute the same values up to float32 rounding (`--verify 1,128,2,128`). At N = 64 the experiment needs a g_pad
with G at rows 8 + t, which this tree's `_prep` does not write, so at K1 it fails to build (reported, the others still
run): time K5.

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_chunk_grads_by_role.py --shape K5
"""

EXP = "benchmarks/variants/wkv7_gpu_bwd_by_role.py"
G_ROW = [("c * L + G_ROW0 + t", "c * L + 1 + t")]  # this tree's g_pad (N = 128 reads G from GMEM only)
TMA_IN_PHASE = [("    on(0, fetch)\n", ""),
                ("      on(0, first_phase_0)\n", "      on(0, lambda: (fetch(), first_phase_0()))\n"),
                ("      def first_phase():\n        forward_q_rows()\n",
                 "      def first_phase():\n        fetch()\n        forward_q_rows()\n")]
U_LATE = [("        plgpu.copy_gmem_to_smem(src, dst, bar)  # v, dO, T (the forward's), dS'\n"
           "      plgpu.copy_gmem_to_smem(u_ref.at[bi, h, tok], u_s, u_bar)\n",
           "        plgpu.copy_gmem_to_smem(src, dst, bar)  # v, dO, T (the forward's), dS'\n"
           "      if by_role:\n        plgpu.copy_gmem_to_smem(u_ref.at[bi, h, tok], u_s, u_bar)\n"),
          ("        attention(a_tilde(), Aak_s, 1, W2[0])\n        du_dR()\n",
           "        attention(a_tilde(), Aak_s, 1, W2[0])\n"
           "        plgpu.copy_gmem_to_smem(u_ref.at[bi, h, tok], u_s, u_bar)\n        du_dR()\n")]
ST_2D = [("swizzled((1 + by_role, N, N))", "(swizzled((2, N, N)) if by_role else swizzled((N, N)))"),
         ("return st_s.at[0, ks(kb)]", "return st_s.at[0, ks(kb)] if by_role else st_s.at[ks(kb)]"),
         ("return st_s.at[1 if by_role else 0, ks(kb)]", "return st_s.at[1, ks(kb)] if by_role else st_s.at[ks(kb)]")]

ATT = """      def attention(left, dst, t):  # dst <- M(left right^T), right in u's tile, mask [row - col >= t]
        put(jnp.where(causal(1, t), mm(LL, [(left, u_s.T)]), 0.0), dst)
        plgpu.commit_smem()

      with jax.named_scope("attention"):
        if staged:
          plgpu.barrier_wait(in_bar)
"""
ATT_128 = """      def attention(left, dst, t, right=u_s):  # dst <- M(left right^T), mask [row - col >= t]
        put(jnp.where(causal(1, t), mm(LL, [(left, right.T)]), 0.0), dst)
        plgpu.commit_smem()

      with jax.named_scope("attention"):
        if staged:
          plgpu.barrier_wait(in_bar)
        if KB > 1:  # the experiment's order: k^, b^ into W2 (A_qb has a pair of its own), A_qk, A_qb, then A_ak
          e = jnp.exp(mid() - G())
          W2[0][...] = (inp(k_ref) * e).astype(BF16)
          W2[1][...] = (inp(b_ref) * e).astype(BF16)
          plgpu.commit_smem()
          q_til = (inp(r_ref) * jnp.exp(G() - mid())).astype(BF16)
          attention(q_til, Aqk_s, 0, W2[0])
          attention(q_til, Aqb_s, 0, W2[1])
          attention((inp(a_ref) * jnp.exp(Gm() - mid())).astype(BF16), Aak_s, 1, W2[0])
      if KB == 1:
       with jax.named_scope("attention"):
"""

VARIANTS = {
  "head": ("pallas_kernels/wkv7/gpu_bwd.py", []),
  "by_role": (EXP, G_ROW),
  "all_three": (EXP, G_ROW + TMA_IN_PHASE + U_LATE + ST_2D),
  "head_exp_phase": ("pallas_kernels/wkv7/gpu_bwd.py", [(ATT, ATT_128)]),
}
