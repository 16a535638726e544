"""benchmarks/ptxas_offline.py: ptxas's report parsed, and (where its packages are installed in .ptxas) a kernel
compiled on this machine without a GPU."""

import functools
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kernel_variants  # noqa: E402
import ptxas_offline  # noqa: E402

# ptxas -v as the Mosaic GPU compiler prints it (two kernels, the second without spills)
SAMPLE = ("ptxas warning : Registers are spilled to local memory in function 'wkv7_prep_mosaic_gpu_kernel', "
          "296 bytes spill stores, 296 bytes spill loads\n") + """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'wkv7_prep_mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for wkv7_prep_mosaic_gpu_kernel
    224 bytes stack frame, 296 bytes spill stores, 296 bytes spill loads
ptxas info    : Used 255 registers, used 2 barriers, 224 bytes cumulative stack size, 1 bytes smem
ptxas info    : Compile time = 1338.351 ms
ptxas info    : Compiling entry function 'wkv7_state_fwd_mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for wkv7_state_fwd_mosaic_gpu_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 190 registers, used 2 barriers, 1 bytes smem
"""


def test_parse_reads_each_function_s_registers_and_spills():
  reports = ptxas_offline.parse(SAMPLE)
  assert reports == {"wkv7_prep_mosaic_gpu_kernel": ptxas_offline.Report(255, 296, 296),
                     "wkv7_state_fwd_mosaic_gpu_kernel": ptxas_offline.Report(190, 0, 0)}
  assert str(reports["wkv7_prep_mosaic_gpu_kernel"]) == "255 registers, 296 / 296 bytes of spill stores / loads"


def test_parse_rejects_a_function_without_its_numbers():
  with pytest.raises(ValueError, match="'f' without its spill or register line"):
    ptxas_offline.parse("ptxas info    : Compiling entry function 'f' for 'sm_90a'\n")


def test_a_missing_install_names_the_pip_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps --target .* jax-cuda12-pjrt==\S+ "
                                              r"nvidia-cuda-nvcc-cu12"):
    ptxas_offline.Compiler(tmp_path)


@pytest.mark.skipif(not (ptxas_offline.DEFAULT_DIR / ptxas_offline.PLUGIN).exists(),
                    reason="ptxas_offline's packages are not installed in .ptxas (see its docstring)")
def test_chunk_grads_compiles_with_ptxas_without_a_gpu():
  """The kernel's report at a small shape: ptxas ran (255 registers: the kernel is written to use them all)."""
  module = kernel_variants.build("head", kernel_variants.MODULES["chunk_grads"], [])
  reports = ptxas_offline.Compiler().lowered_reports(functools.partial(kernel_variants.lower, "chunk_grads", module))
  assert list(reports) == ["wkv7_chunk_grads_mosaic_gpu_kernel"]
  assert reports["wkv7_chunk_grads_mosaic_gpu_kernel"].registers == 255
