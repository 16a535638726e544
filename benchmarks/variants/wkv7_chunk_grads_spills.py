"""`chunk_grads` at N = 64 with fewer values live, ready to time (sixteenth session; chosen by ptxas's spills at K1 from
`kernel_variants.py ... --ptxas`, stores / loads per thread; the kernel: 92 / 100):
- dgm_late: dw's diagonal term dgm = term_fac + term_side formed where dw is written, not before its products:
  48 / 52;
- Q_reload: Q (the k, b side terms) read again from its SMEM pair for dw's second use, not kept across diag's
  product: 68 / 72;
- b_late: the forward recompute's b^ made when it is stored, not before A_qk's and A_ak's products: 72 / 76;
- dgm_Q_b: all three: 64 / 68 (the effects do not add).
Same values up to float32 rounding (`--verify 1,128,1,64`).

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_chunk_grads_spills.py
"""

SRC = "pallas_kernels/wkv7/gpu_bwd.py"
DGM = [("        dgm = term_fac + term_side\n", ""),
       ("        out(dw_ref, sum(parts) - dgm, kb)\n", "        out(dw_ref, sum(parts) - (term_fac + term_side), kb)\n")]
Q_RELOAD = [
  ("        Q = Q3[0][...].astype(F32) + Q3[1][...].astype(F32)\n        put(P - Q, Q0)\n",
   "        put(P - Q3[0][...].astype(F32) - Q3[1][...].astype(F32), Q0)\n"),
  ("        put(Q + jnp.where(iota(LL, 0) == iota(LL, 1), diag * dec_cols, 0.0), Q3)\n",
   "        Q = Q3[0][...].astype(F32) + Q3[1][...].astype(F32)\n"
   "        put(Q + jnp.where(iota(LL, 0) == iota(LL, 1), diag * dec_cols, 0.0), Q3)\n"),
]
B_LATE = [("        b_hat = (inp(b_ref) * e_out).astype(BF16)\n", ""),
          ("        u_s[...] = b_hat  # (the products that read k^ are done)\n",
           "        u_s[...] = (inp(b_ref) * e_out).astype(BF16)  # b^ (the products that read k^ are done)\n")]

VARIANTS = {
  "head": (SRC, []),
  "dgm_late": (SRC, DGM),
  "Q_reload": (SRC, Q_RELOAD),
  "b_late": (SRC, B_LATE),
  "dgm_Q_b": (SRC, DGM + Q_RELOAD + B_LATE),
}
