"""The fifteenth session's two-warpgroup `chunk_grads` (`wkv7_gpu_bwd_by_role.py`, see its docstring) against the
kernel in use, and (for a bisection at N = 128, where its code was 0.9-1.3 ms faster at K5 than the kernel in use's
while reading both finds them nearly equal) the experiment taken back toward the kernel in use one piece at a time:
- tma_in_phase: the TMAs issued inside the first phase's block (not a block of their own before it);
- u_late: u's TMA issued after the forward recompute (as the kernel in use does), not with the others;
- st_2d: the state tile as [N, N] (not [1, N, N]), as the kernel in use has it.
All compute the same values (`--verify 1,128,2,128`). At N = 64 the experiment needs a g_pad with G at rows 8 + t,
which this tree's `_prep` does not write, so at K1 it fails to build (reported, the others still run): time K5.

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

VARIANTS = {
  "head": ("pallas_kernels/wkv7/gpu_bwd.py", []),
  "by_role": (EXP, G_ROW),
  "tma_in_phase": (EXP, G_ROW + TMA_IN_PHASE),
  "u_late": (EXP, G_ROW + U_LATE),
  "st_2d": (EXP, G_ROW + ST_2D),
  "all_three": (EXP, G_ROW + TMA_IN_PHASE + U_LATE + ST_2D),
}
