"""What-if variants of WKV-7 `chunk_grads` for `benchmarks/kernel_variants.py` (fourteenth session): each loads
operands from an SMEM tile instead of GMEM (wrong values, the same work otherwise), bounding what staging them in SMEM
would save at the current SMEM budget. Their numbers: docs/benchmarks.md, fourteenth session.

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_chunk_grads_whatif.py
"""

SRC = "pallas_kernels/wkv7/gpu_bwd.py"
INPUTS = "return load(ref.at[bi, tok, h, ks(kb)]).astype(F32)"  # the inputs not in SMEM (N = 64: b and r)
G_LOAD = "return load(g_ref.at[bi, pl.ds(g_row(0), L), h, ks(kb)])"
GM_LOAD = "load(g_ref.at[bi, pl.ds(g_row(-1), L), h, ks(kb)])"
SMEM_F32 = "load(square.at[2, 1]).astype(F32)"  # any SMEM tile of the shape
DW_LHS = ["load(dst_ref.at[bi, h, c, ks(kb)])", "load(tri_ref.at[0])", "load(tri_ref.at[1])"]

VARIANTS = {
  "head": (SRC, []),
  "no_inputs_in_smem": (SRC, [("in_smem = (k_ref, a_ref) if staged", "in_smem = () if staged"),
                              ("plgpu.barrier_wait(in_bar)", "pass")]),
  "all_inputs_smem": (SRC, [(INPUTS, "return load(v_s).astype(F32)")]),
  "G_smem": (SRC, [(G_LOAD, "return " + SMEM_F32), (GM_LOAD, SMEM_F32)]),
  "dw_lhs_smem": (SRC, [(x, "load(v_s)") for x in DW_LHS]),
}
