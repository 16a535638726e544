"""benchmarks/kernel_variants.py: variant files and their text replacements (the GPU timing itself is not on CI)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kernel_variants  # noqa: E402

VARIANTS_DIR = os.path.join(os.path.dirname(kernel_variants.__file__), "variants")


@pytest.mark.parametrize("name, built", [
  ("wkv7_chunk_grads_whatif.py", "head, no_inputs_in_smem, all_inputs_smem, G_smem, dw_lhs_smem"),
  ("wkv7_prep_whatif.py", "head, w_kept, w_smem, no_inverse_levels, inverse_x2"),
])
def test_the_committed_whatif_variants_still_apply(name, built, capsys):
  """Every replacement of a committed what-if file finds its text in the current kernel, and each variant builds."""
  kernel_variants.main([os.path.join(VARIANTS_DIR, name), "--check"])
  assert f"5 variants built: {built}" in capsys.readouterr().out


def test_a_replacement_that_does_not_apply_names_the_variant_and_text():
  with pytest.raises(ValueError, match=r"variant 'x': text not found in .*gpu_bwd.py: 'no such text'"):
    kernel_variants.build("x", kernel_variants.MODULES["chunk_grads"], [("no such text", "")])


def test_a_variant_builds_the_patched_source():
  module = kernel_variants.build("y", kernel_variants.MODULES["chunk_grads"], [("L = CHUNK", "L = 2 * CHUNK")])
  assert module.L == 128 and callable(module.chunk_grads)


def test_malformed_variant_files_are_rejected(tmp_path):
  path = tmp_path / "v.py"
  path.write_text("VARIANTS = {'a': ('pallas_kernels/wkv7/gpu_bwd.py', [('only old',)])}")
  with pytest.raises(ValueError, match=r"VARIANTS\['a'\] must be \(source path, \[\(old, new\), \.\.\.\]\)"):
    kernel_variants.load_variants(path)
  path.write_text("OTHER = 1")
  with pytest.raises(ValueError, match="expected a non-empty dict VARIANTS"):
    kernel_variants.load_variants(path)
