"""`chunk_grads` at N = 128 (two warpgroups, one 64-column K block each), ready to time (sixteenth session). The
fifteenth session's two-warpgroup experiment was 0.9 ms faster at K5 than the kernel in use and spilled far less; read
side by side in their Mosaic GPU IR (`ptxas_offline.py`'s reports, no GPU needed), the two differed in dx's and dw's
forms (since in the kernel), its first phase, and one predicate: the other warpgroup's wait for the first phase
written `pl.when(wg != 0)` in the kernel, `pl.when(wg == 1)` in the experiment. That predicate alone takes ptxas's
spills at K5 from 908 / 748 bytes (stores / loads) to 356 / 384; with the experiment's first phase (k^, b^ into W2 from
one e^{m-G}, A_qk and A_qb from one q~, then A_ak; 764 / 580 alone, measured 8.12 -> 7.85 ms on the H100) to
236 / 240 (`kernel_variants.py ... --shape K5 --ptxas`). N = 64 has no such branch: the variants are the kernel there.
Same values.

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_chunk_grads_n128.py --shape K5
"""

SRC = "pallas_kernels/wkv7/gpu_bwd.py"
WG1 = [("      @pl.when(wg != 0)\n", "      @pl.when(wg == 1)\n")]
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
  "head": (SRC, []),
  "wg1": (SRC, WG1),
  "exp_phase": (SRC, [(ATT, ATT_128)]),
  "exp_phase_wg1": (SRC, [(ATT, ATT_128)] + WG1),
}
