"""The size of each Mosaic GPU kernel of a WKV op's `pallas_gpu` forward+backward, on CPU (no GPU needed).

  python benchmarks/kernel_size.py [--op wkv7|wkv6|wkv5] [--head-dim 64] [--top 6] [--append-docs]

Lowers the op's VJP for CUDA (as tests/ops/*_pallas_test.py do), takes the Mosaic GPU module of every kernel out of
its custom call, and counts the module's MLIR operations: all of them, by kind (address arithmetic, constants,
float arithmetic, inline assembly: the WGMMAs, fences and barriers), and the most frequent ones. The module is what
Mosaic GPU hands to LLVM, which folds constants and shares address arithmetic, so the counts are a proxy for a
kernel's instruction volume, not instruction counts and not timings. They are meant for comparing versions of one
kernel between GPU runs: for WKV-7's unrolled `chunk_grads` the count followed the H100 time over three versions
(docs/benchmarks.md, sixth session). A loop body is counted once however often it runs, so for kernels with loops
the count measures code size (what the instruction caches must hold), not work (seventh session). Prints a table; `--append-docs` appends a dated row to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import sys

import jax
import jax.numpy as jnp
import provenance  # benchmarks/, the script's folder
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib import mosaic_gpu_dialect
from jax._src.lib.mlir import ir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pallas_kernels import mosaic_gpu_tiles  # noqa: E402

KINDS = {  # op name suffixes per reported kind
  "address": ("arith.muli", "arith.addi", "arith.divui", "arith.remui", "arith.index_cast", "arith.index_castui",
              "llvm.getelementptr", "gpu.thread_id", "gpu.block_dim"),
  "constants": ("arith.constant", "llvm.mlir.constant"),
  "float": ("arith.mulf", "arith.addf", "arith.subf", "arith.divf", "arith.extf", "arith.truncf", "math.exp",
            "math.exp2", "arith.select", "arith.cmpf"),
  "asm": ("llvm.inline_asm",),
}


def vjp_lowering(op: str, N: int):
  """The CUDA lowering of grad(sum(o) + sum(final state)) of the op's pallas_gpu backend at (B 1, T 128, H 2, N)."""
  from pallas_kernels.wkv56.gpu import wkv5_pallas_gpu, wkv6_pallas_gpu  # noqa: PLC0415
  from pallas_kernels.wkv7.gpu import wkv7_pallas_gpu  # noqa: PLC0415

  B, T, H = 1, 128, 2
  bf16 = jax.ShapeDtypeStruct((B, T, H, N), jnp.bfloat16)
  f32 = jax.ShapeDtypeStruct((B, T, H, N), jnp.float32)
  state = jax.ShapeDtypeStruct((B, H, N, N), jnp.float32)
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32)
  if op == "wkv7":
    fn, args = wkv7_pallas_gpu, (bf16, f32, bf16, bf16, bf16, bf16, state, seg)
  else:
    u = jax.ShapeDtypeStruct((H, N), jnp.float32)
    fn = wkv6_pallas_gpu if op == "wkv6" else wkv5_pallas_gpu
    w = f32 if op == "wkv6" else jax.ShapeDtypeStruct((H, N), jnp.float32)
    args = (bf16, w, bf16, bf16, u, state, seg)

  def loss(*x):
    o, s = fn(*x)
    return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

  grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(args) - 1))))
  real = mosaic_gpu_tiles.is_hopper
  mosaic_gpu_tiles.is_hopper = lambda: True  # lower for sm_90 on any machine
  try:
    return grad.trace(*args).lower(lowering_platforms=("cuda",))
  finally:
    mosaic_gpu_tiles.is_hopper = real


def kernel_modules(lowered):
  """[(kernel name, serialized Mosaic GPU module bytes)] of every Mosaic GPU custom call, in program order."""
  out = []

  def walk(op):
    for region in op.regions:
      for block in region:
        for o in block:
          if o.name == "stablehlo.custom_call" and "mosaic_gpu" in str(o.attributes["call_target_name"]):
            config = ir.DictAttr(o.attributes["mhlo.backend_config"])
            name = re.search(r"/(\w+)/mpmd_map", str(o.location))
            out.append((name.group(1) if name else "?", ir.StringAttr(config["module"]).value_bytes))
          walk(o)

  walk(lowered.compiler_ir().operation)
  return out


def op_counts(module: bytes) -> collections.Counter:
  """Operation name -> count over the whole parsed module (dialect prefixes as Mosaic GPU serializes them)."""
  counts = collections.Counter()
  with ir.Context() as ctx, ir.Location.unknown():
    ctx.append_dialect_registry(jax_mlir.upstream_dialects)
    ctx.load_all_available_dialects()
    mosaic_gpu_dialect.register_dialect(ctx)
    ctx.allow_unregistered_dialects = True

    def walk(op):
      counts[op.name.removeprefix("stable_mosaic_gpu.")] += 1
      for region in op.regions:
        for block in region:
          for o in block:
            walk(o.operation)

    walk(ir.Module.parse(module).operation)
  return counts


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--op", default="wkv7", choices=("wkv7", "wkv6", "wkv5"))
  p.add_argument("--head-dim", type=int, default=64, choices=mosaic_gpu_tiles.HEAD_DIMS)
  p.add_argument("--top", type=int, default=6, help="also list each kernel's most frequent operations")
  p.add_argument("--append-docs", action="store_true")
  args = p.parse_args(argv)
  rows, cells = [], []
  for name, module in kernel_modules(vjp_lowering(args.op, args.head_dim)):
    counts = op_counts(module)
    total = sum(counts.values())
    kinds = {kind: sum(counts[n] for n in names) for kind, names in KINDS.items()}
    top = ", ".join(f"{n} {c}" for n, c in counts.most_common(args.top))
    per_kind = " | ".join(str(kinds[k]) for k in KINDS)
    rows.append(f"| {name} | {total} | {per_kind} | {len(module) // 1024} | {top} |")
    cells.append(f"{name} {total}")
  print(f"{args.op}, head dim {args.head_dim}: MLIR operations of each Mosaic GPU module (before LLVM)")
  print("| kernel | ops | " + " | ".join(KINDS) + " | module KiB | most frequent |")
  print("|" + "---|" * (len(KINDS) + 4))
  print("\n".join(rows))
  if args.append_docs:
    cmd = "python benchmarks/kernel_size.py " + " ".join(argv or sys.argv[1:])
    row = (f"| {datetime.date.today().isoformat()} | CPU (lowered for sm_90, no GPU) | `{cmd.strip()}` | "
           f"{provenance.commit()} | {args.op} N={args.head_dim} MLIR ops per kernel: {', '.join(cells)} |")
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md"), "a") as f:
      f.write(row + "\n")


if __name__ == "__main__":
  main()
