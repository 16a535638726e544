"""The fifteenth session's two-warpgroup `chunk_grads` (`wkv7_gpu_bwd_by_role.py`, see its docstring) against the
kernel in use, for `benchmarks/kernel_variants.py`. At K5 (N = 128) both run; at N = 64 the experiment needs a g_pad
with G at rows 8 + t, which this tree's `_prep` does not write, so at K1 it fails to build (reported, the head still
runs).

  python benchmarks/kernel_variants.py benchmarks/variants/wkv7_chunk_grads_by_role.py --shape K5
"""

VARIANTS = {
  "head": ("pallas_kernels/wkv7/gpu_bwd.py", []),
  "by_role": ("benchmarks/variants/wkv7_gpu_bwd_by_role.py", [("c * L + G_ROW0 + t", "c * L + 1 + t")]),
}
