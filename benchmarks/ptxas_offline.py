"""ptxas's register and spill report of Mosaic GPU kernels on a machine without a GPU (sixteenth session).

A Mosaic GPU kernel lowered for CUDA (as `kernel_variants.py --check` does on any host) is compiled here by the CUDA
PJRT plugin's own Mosaic GPU compiler (`MosaicGpuCompile`, the pass pipeline XLA runs on the GPU: MLIR -> PTX ->
ptxas), with ptxas from NVIDIA's pip package and a stand-in `libcuda.so.1` that only answers the compute-capability
query (sm_90, built here with the C compiler); loading the compiled kernel then fails, after ptxas has reported. The
numbers are the ones `MOSAIC_GPU_DUMP_PTXAS=1` prints on the H100 for the same kernel at the same shape (checked:
`chunk_grads` 92 / 100 bytes of spill stores / loads and `prep` 296 / 296 at K1, sixteenth session).

The packages go into a folder of their own (never on sys.path: the plugin would make jax look for a GPU):

  python -m pip install --no-deps --target .ptxas jax-cuda12-pjrt==0.11.2 nvidia-cuda-nvcc-cu12

(0.11.2: the jax version; about 230 MB). `kernel_variants.py --ptxas` prints the report of every variant.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pathlib
import re
import subprocess
import tempfile

import jax
from jax.experimental.mosaic.gpu import core as mgpu_core

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".ptxas"
PLUGIN = "jax_plugins/xla_cuda12/xla_cuda_plugin.so"
CUDA_ROOT = "nvidia/cuda_nvcc"  # bin/ptxas, nvvm/libdevice

# The stand-in driver: cuCtxGetDevice and cuDeviceGetAttribute answer compute capability 9.0; the plugin reaches any
# other driver function through its own stubs, which fail cleanly when the symbol is missing.
STUB_C = r"""
typedef int CUresult;
CUresult cuInit(unsigned flags) { return 0; }
CUresult cuDriverGetVersion(int *v) { *v = 12090; return 0; }
CUresult cuCtxGetDevice(int *device) { *device = 0; return 0; }
CUresult cuDeviceGetAttribute(int *value, int attribute, int device) {
  *value = attribute == 75 ? 9 : 0;  /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR (76, MINOR: 0) */
  return 0;
}
CUresult cuGetErrorString(int error, const char **s) { *s = "stand-in libcuda (ptxas_offline.py)"; return 0; }
CUresult cuGetErrorName(int error, const char **s) { *s = "CUDA_ERROR_NOT_SUPPORTED"; return 0; }
"""


@dataclasses.dataclass(frozen=True)
class Report:
  """ptxas's numbers for one kernel function: registers per thread, spill bytes stored / loaded per thread."""
  registers: int
  spill_stores: int
  spill_loads: int

  def __str__(self):
    return f"{self.registers} registers, {self.spill_stores} / {self.spill_loads} bytes of spill stores / loads"


def parse(text: str) -> dict[str, Report]:
  """{function: Report} from ptxas's verbose output (`-v`: a "Compiling entry function 'f'" line, then its spill and
  register lines)."""
  reports = {}
  for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", text)[1:]:
    name = re.search(r"Compiling entry function '([^']+)'", block).group(1)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
    registers = re.search(r"Used (\d+) registers", block)
    if spills is None or registers is None:
      raise ValueError(f"ptxas output for {name!r} without its spill or register line:\n{block}")
    reports[name] = Report(int(registers.group(1)), int(spills.group(1)), int(spills.group(2)))
  return reports


class Compiler:
  """Compiles lowered Mosaic GPU kernels with ptxas on this machine. `folder`: where the pip command in this module's
  docstring installed the two packages."""

  def __init__(self, folder: os.PathLike = DEFAULT_DIR):
    folder = pathlib.Path(folder).resolve()
    plugin, cuda_root = folder / PLUGIN, folder / CUDA_ROOT
    for path in (plugin, cuda_root / "bin" / "ptxas"):
      if not path.exists():
        raise FileNotFoundError(
          f"{path} not found: install the packages with `python -m pip install --no-deps --target {folder} "
          f"jax-cuda12-pjrt=={jax.__version__} nvidia-cuda-nvcc-cu12`")
    stub = folder / "stub" / "libcuda.so.1"
    if not stub.exists():
      stub.parent.mkdir(exist_ok=True)
      source = stub.parent / "libcuda_stub.c"
      source.write_text(STUB_C)
      subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub), str(source)],
                     check=True)
    # loaded first under its soname, the stand-in is what the plugin's dlopen("libcuda.so.1") returns
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    os.environ["CUDA_ROOT"] = str(cuda_root)
    os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"
    self._compile = ctypes.CDLL(str(plugin)).MosaicGpuCompile
    self._compile.argtypes = [ctypes.c_char_p, ctypes.c_int]
    self._compile.restype = ctypes.c_void_p

  def report(self, module: bytes) -> dict[str, Report]:
    """{kernel function: Report} of one serialized Mosaic GPU module (the `module` of its custom call)."""
    with tempfile.TemporaryFile() as out:
      saved = [os.dup(1), os.dup(2)]
      os.dup2(out.fileno(), 1)  # ptxas's report and the plugin's log go to the C streams
      os.dup2(out.fileno(), 2)
      try:
        self._compile(module, len(module))  # (fails after ptxas, loading the kernel: no GPU)
      finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
          os.close(fd)
      out.seek(0)
      text = out.read().decode(errors="replace")
    reports = parse(text)
    if not reports:
      raise RuntimeError(f"no ptxas report in the compiler's output:\n{text[-3000:]}")
    return reports

  def lowered_reports(self, lower) -> dict[str, Report]:
    """The reports of every Mosaic GPU kernel that `lower()` (a call that lowers a jitted function for CUDA) lowers."""
    mgpu_core.KNOWN_KERNELS.clear()  # (the lowering's cache of modules by hash: emptied, it holds this call's)
    lower()
    reports = {}
    for module in mgpu_core.KNOWN_KERNELS.values():
      reports.update(self.report(module))
    return reports
