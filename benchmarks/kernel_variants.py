"""Times variants of one WKV-7 Mosaic GPU kernel in one process: each variant is a kernel module's source (this tree's,
or another tree's copy) with text replacements applied, built as a module of its own and timed on the same inputs,
all variants interleaved round by round (median of every call). In one process the variants compare to a few percent;
between processes (`compare_trees.sh`) one unchanged kernel moved by up to 9%.

  python benchmarks/kernel_variants.py VARIANTS_FILE [--kernel chunk_grads|prep] [--shape K1] [--rounds 5]
      [--repeats 15] [--check] [--verify B,T,H,N] [--ptxas [DIR]]

VARIANTS_FILE is a Python file that defines VARIANTS = {name: (source, [(old, new), ...])}: `source` the path of a
copy of the kernel's module (`pallas_kernels/wkv7/gpu_bwd.py` for chunk_grads, `gpu.py` for prep; relative to the
repository root), each `old` a text that must occur in it (every occurrence is replaced). A replacement may be a
what-if that computes wrong values but shows what a change could save: loading an operand from an SMEM tile instead of
GMEM bounds what staging it would gain (`benchmarks/variants/wkv7_chunk_grads_whatif.py`: the fourteenth session's).
The variants must keep the kernel's signature; their inputs come from this tree's forward at the shape. `--check`
only builds every variant's module and lowers its kernel for CUDA at a small shape, under the SMEM of two CTAs per
SM (on any machine: what CI runs). `--verify B,T,H,N` runs every variant once at that small shape (with a document
reset) and prints each output's largest difference from the first variant's, relative to the first's largest
magnitude: on a Hopper GPU on the hardware, elsewhere in the Mosaic GPU interpreter (so a variant meant to compute the
same values is checked on CPU before device time is spent on it; what-ifs differ by design). The timing needs a Hopper
GPU; it prints a table and the dated row for docs/benchmarks.md. `--ptxas` prints ptxas's registers and spill bytes of
every variant's kernel at `--shape`, compiled on this machine without a GPU (`ptxas_offline.py`: the numbers the H100
reports; the kernels are register-bound, so spills are the first thing a variant is judged by). A variant that wins
is then written into the kernel and checked as any kernel change (the float64 tests on the GPU,
`benchmarks/gpu_checks.sh kernels`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import pathlib
import runpy
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp

import provenance  # benchmarks/, the script's folder
import ptxas_offline
import wkv_bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jax.experimental.mosaic.gpu import core as mgpu_core  # noqa: E402

from pallas_kernels import mosaic_gpu_tiles  # noqa: E402
from pallas_kernels.chunking import segment_index  # noqa: E402
from pallas_kernels.wkv7 import gpu  # noqa: E402

MODULES = {"chunk_grads": "pallas_kernels/wkv7/gpu_bwd.py", "prep": "pallas_kernels/wkv7/gpu.py"}


def load_variants(path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
  """VARIANTS of the file at `path`, checked: {name: (source path, [(old, new), ...])}."""
  variants = runpy.run_path(str(path)).get("VARIANTS")
  if not isinstance(variants, dict) or not variants:
    raise ValueError(f"{path}: expected a non-empty dict VARIANTS = {{name: (source, [(old, new), ...])}}")
  for name, spec in variants.items():
    if not (isinstance(spec, tuple) and len(spec) == 2 and all(len(p) == 2 for p in spec[1])):
      raise ValueError(f"{path}: VARIANTS[{name!r}] must be (source path, [(old, new), ...]), got {spec!r}")
  return variants


def build(name: str, source: str, patches) -> types.ModuleType:
  """The module `source` (a path relative to the repository root, or absolute) with every (old, new) applied."""
  path = ROOT / source
  text = path.read_text()
  for old, new in patches:
    if old not in text:
      raise ValueError(f"variant {name!r}: text not found in {path}: {old!r}")
    text = text.replace(old, new)
  module = types.ModuleType(f"variant_{name}")
  module.__file__ = str(path)
  exec(compile(text, f"<variant {name}: {source}>", "exec"), module.__dict__)  # noqa: S102
  return module


def inputs(shape, segment_ids=None, interpret=False):
  """(prep's arguments, chunk_grads' arguments) at `shape` from this tree's forward (the forward saving for its VJP, as
  in training) and backward state pass; segment_ids [B, T] int or None; interpret: the kernels in the interpreter."""
  B, T, H, N = shape
  r, w, k, v, a, b, do, ds = wkv_bench.make_inputs(1, *shape)
  rb, kb, vb, ab, bb, dob = (x.astype(jnp.bfloat16) for x in (r, k, v, a, b, do))
  seg = segment_index(segment_ids, B, T, gpu.L).reshape(B, T)
  bv = gpu.state_block_v(B, H, N)
  prep_args = (rb, kb, vb, ab, bb, w, seg)
  ww, wu, qo, ob, bbar, kbar, dec, g_pad, t_hi, t_lo = jax.jit(functools.partial(
    gpu._prep, save_inverse=True, interpret=interpret))(*prep_args)
  s0 = jnp.zeros((B, H, N, N), jnp.float32)
  _, _, states, u = jax.jit(functools.partial(gpu._state_fwd, bv=bv, save=True, interpret=interpret))(
    ww, wu, qo, ob, bbar, kbar, vb, dec, s0)
  d_states, _, du = jax.jit(functools.partial(gpu._state_bwd, bv=bv, interpret=interpret))(ww, qo, bbar, dob, dec, ds)
  return prep_args, (rb, kb, vb, ab, bb, g_pad, seg, dec, states, dob, d_states, t_hi, t_lo, kbar, u, du)


def kernel_call(kernel: str, module: types.ModuleType, interpret=False):
  """The jitted kernel of a built variant module (interpret: in the Mosaic GPU interpreter)."""
  if kernel == "chunk_grads":
    return jax.jit(functools.partial(module.chunk_grads, out_dtypes=[jnp.bfloat16, jnp.float32] + [jnp.bfloat16] * 4,
                                     interpret=interpret))
  return jax.jit(functools.partial(module._prep, save_inverse=True, interpret=interpret))


def lower(kernel: str, module: types.ModuleType, shape=(1, 128, 1, 64)) -> None:
  """Lowers the variant's kernel for CUDA at `shape` on any host; at N = 64 under the SMEM of two CTAs per H100 SM
  (228 KiB / 2, less the 1 KiB reserved per CTA), which both kernels fit: Mosaic GPU's lowering fails for a variant
  that needs more."""
  B, T, H, N = shape
  C = T // gpu.L

  def spec(*s, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(s, dtype)

  x, f32 = spec(B, T, H, N), functools.partial(spec, dtype=jnp.float32)
  if kernel == "chunk_grads":
    t, state, tile = spec(B, H, C, gpu.L, gpu.L), spec(B, H, C, N, N), spec(B, H, T, N)
    args = (x,) * 5 + (f32(B, 1 + T, H, N), f32(B, T), f32(B, H, C, N), state, x, state, t, t, tile, tile, tile)
  else:
    args = (x,) * 5 + (f32(B, T, H, N), f32(B, T))
  limit = mosaic_gpu_tiles.SMEM_TWO_CTAS_PER_SM if N == gpu.L else None
  with mgpu_core.artificial_shared_memory_limit(limit) if limit else contextlib.nullcontext():
    kernel_call(kernel, module).trace(*args).lower(lowering_platforms=("cuda",))


def verify(kernel: str, modules: dict, shape) -> dict[str, list[float]]:
  """{variant: [per output: max |out - first's| / max |first's|, nan if out is not finite where the first's is]} of
  one call of every variant at `shape` (a document reset at T // 3); on the GPU if it is a Hopper one, else in the
  Mosaic GPU interpreter."""
  B, T, H, N = shape
  interpret = not mosaic_gpu_tiles.is_hopper()
  segment_ids = jnp.broadcast_to((jnp.arange(T) >= T // 3).astype(jnp.int32), (B, T))
  prep_args, grads_args = inputs(shape, segment_ids, interpret)
  args = grads_args if kernel == "chunk_grads" else prep_args
  outs = {name: [jnp.asarray(x, jnp.float32) for x in kernel_call(kernel, m, interpret)(*args)]
          for name, m in modules.items()}
  first = next(iter(outs.values()))

  def difference(x, y):  # nan if x is not finite where y is (memory no kernel writes, as g_pad's first row, may not be)
    finite = jnp.isfinite(y)
    if not bool(jnp.all(jnp.isfinite(x) == finite)):
      return float("nan")
    x, y = jnp.where(finite, x, 0.0), jnp.where(finite, y, 0.0)
    return float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-30))

  return {name: [difference(x, y) for x, y in zip(xs, first)] for name, xs in outs.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("variants", help="a Python file defining VARIANTS")
  p.add_argument("--kernel", default="chunk_grads", choices=sorted(MODULES))
  p.add_argument("--shape", default="K1", help=f"one of {', '.join(wkv_bench.SHAPES)}")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--repeats", type=int, default=15, help="timed calls per variant and round")
  p.add_argument("--check", action="store_true", help="only build every variant's module")
  p.add_argument("--verify", default=None, metavar="B,T,H,N", help="compare every variant's outputs with the first's")
  p.add_argument("--ptxas", nargs="?", const=str(ptxas_offline.DEFAULT_DIR), default=None, metavar="DIR",
                 help="print ptxas's registers and spill bytes of every variant at --shape, compiled on this machine "
                      "(no GPU: benchmarks/ptxas_offline.py; DIR holds its packages, default .ptxas)")
  args = p.parse_args(argv)
  variants = load_variants(args.variants)
  modules = {name: build(name, source, patches) for name, (source, patches) in variants.items()}
  print(f"{len(modules)} variants built: {', '.join(modules)}", flush=True)
  if args.check:
    for module in modules.values():
      lower(args.kernel, module)
    print(f"{len(modules)} variants lowered for CUDA", flush=True)
    return
  if args.ptxas:
    compiler, shape = ptxas_offline.Compiler(args.ptxas), wkv_bench.SHAPES[args.shape]
    print(f"ptxas at {args.shape} {shape}, sm_90a, compiled on this machine", flush=True)
    for name, module in modules.items():
      try:
        reports = compiler.lowered_reports(functools.partial(lower, args.kernel, module, shape))
      except Exception as e:  # noqa: BLE001 (a variant that does not lower is reported, the others still run)
        print(f"  {name}: FAILED {type(e).__name__}: {str(e)[:500]}", flush=True)
        continue
      print("\n".join(f"  {name}: {report} ({function})" for function, report in reports.items()), flush=True)
    return
  if args.verify:
    shape = tuple(int(x) for x in args.verify.split(","))
    for name, errors in verify(args.kernel, modules, shape).items():
      print(f"  {name}: max relative difference from {next(iter(modules))} per output: "
            + " ".join(f"{e:.1e}" for e in errors), flush=True)
    return
  if not mosaic_gpu_tiles.is_hopper():
    sys.exit("kernel_variants.py: needs a Hopper (sm_90) GPU (or --check)")
  shape = wkv_bench.SHAPES[args.shape]
  prep_args, grads_args = inputs(shape)
  call_args = grads_args if args.kernel == "chunk_grads" else prep_args
  calls = {}
  for name, module in modules.items():
    t0 = time.time()
    try:
      f = kernel_call(args.kernel, module)
      jax.block_until_ready(f(*call_args))
    except Exception as e:  # noqa: BLE001 (a variant that does not build is reported, the others still run)
      print(f"  {name}: FAILED {type(e).__name__}: {str(e)[:1000]}", flush=True)
      continue
    calls[name] = f
    print(f"  {name}: built in {time.time() - t0:.1f} s", flush=True)
  times = {name: [] for name in calls}
  for _ in range(args.rounds):
    for name, f in calls.items():
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*call_args))
        times[name].append(time.perf_counter() - t0)
  medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
  first = next(iter(medians.values()), None)
  device = jax.devices()[0].device_kind
  print(f"\nWKV-7 {args.kernel} at {args.shape} {shape}, {device}, {args.rounds} x {args.repeats} calls per variant")
  print("| variant | median ms | min ms | / first |\n|---|---|---|---|")
  for name, ms in medians.items():
    print(f"| {name} | {ms:.3f} | {min(times[name]) * 1e3:.3f} | {ms / first:.3f} |")
  cmd = "python benchmarks/kernel_variants.py " + " ".join(argv or sys.argv[1:])
  cells = ", ".join(f"{name} {ms:.2f}" for name, ms in medians.items())
  print(f"\n| {datetime.date.today().isoformat()} | {device} | `{cmd}` | {provenance.commit()} | WKV-7 {args.kernel} "
        f"{args.shape} ms: {cells} |")


if __name__ == "__main__":
  main()
