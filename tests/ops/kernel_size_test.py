"""benchmarks/kernel_size.py: it finds every Mosaic GPU kernel of a pallas_gpu VJP and counts its MLIR operations."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kernel_size  # noqa: E402


def test_counts_every_wkv7_kernel():
  modules = kernel_size.kernel_modules(kernel_size.vjp_lowering("wkv7", 64))
  assert [name for name, _ in modules] == ["wkv7_prep", "wkv7_state_fwd", "wkv7_state_bwd", "wkv7_chunk_grads"]
  counts = {name: kernel_size.op_counts(module) for name, module in modules}
  # the WGMMAs (and fences) are inline assembly; the gradient kernel is the largest module
  assert all(c["llvm.inline_asm"] > 0 for c in counts.values())
  assert max(counts, key=lambda n: sum(counts[n].values())) == "wkv7_chunk_grads"
