"""benchmarks/kernel_variants.py: variant files and their text replacements (the GPU timing itself is not on CI)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kernel_variants  # noqa: E402

VARIANTS_DIR = os.path.join(os.path.dirname(kernel_variants.__file__), "variants")


@pytest.mark.parametrize("name, kernel, built", [
  ("wkv7_chunk_grads_whatif.py", "chunk_grads", "head, no_inputs_in_smem, all_inputs_smem, G_smem, dw_lhs_smem"),
  ("wkv7_prep_whatif.py", "prep", "head, no_inverse_levels, inverse_x2"),
  ("wkv7_prep_inverse.py", "prep", "head, E_carried, E_carried_acc_init"),
])
def test_the_committed_variants_still_apply_and_lower(name, kernel, built, capsys):
  """Every replacement of a committed variants file finds its text in the current kernel, and each variant builds and
  lowers for CUDA."""
  kernel_variants.main([os.path.join(VARIANTS_DIR, name), "--kernel", kernel, "--check"])
  n = len(built.split(", "))
  assert f"{n} variants built: {built}\n{n} variants lowered for CUDA" in capsys.readouterr().out


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


def test_verify_in_the_interpreter_tells_same_values_from_what_ifs(tmp_path, capsys):
  """--verify on CPU runs the variants in the Mosaic GPU interpreter: a rewrite that computes the same values (a mask
  made from the segment indices loaded once instead of loaded again) is exact, a what-if (the inverse's levels
  skipped) is not."""
  path = tmp_path / "v.py"
  path.write_text(
    "SRC = 'pallas_kernels/wkv7/gpu.py'\n"
    "MASK = ('q0 = jnp.where(first_rows(),', 'q0 = jnp.where(rows(seg_i, LL) == 0.0,')\n"
    "VARIANTS = {'head': (SRC, []), 'mask_late': (SRC, [MASK]),\n"
    "            'no_levels': (SRC, [('D = lax.fori_loop(1, levels, doubling, D)', 'D = D')])}\n")
  errors = kernel_variants.verify("prep", {n: kernel_variants.build(n, *spec)
                                           for n, spec in kernel_variants.load_variants(path).items()}, (1, 128, 1, 64))
  assert errors["head"] == [0.0] * 10 and errors["mask_late"] == [0.0] * 10
  assert max(errors["no_levels"][:4]) > 1e-2  # W, U_wy, Qo, Ob use T

