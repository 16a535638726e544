"""Tuning timings of the WKV-7 `chunked` backend: forward+backward per (chunk size, scan unroll), on JAX's default
device.

Usage (the fifth session's H100 variant tables in docs/benchmarks.md):
  XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. python benchmarks/chunked_tuning.py --shape K1 \
      --variants 32:1,32:2,32:4,64:2,16:4 [--dtype bfloat16|float32] [--repeats 10] [--append-docs]

Shapes and inputs are `wkv_bench.py`'s (RWKV-7 structure, bf16-representable values); r, k, v, a, b are given in
--dtype (bfloat16: split-bf16 x3 matmuls on a GPU; float32: Precision.HIGHEST, see `chunked._matmul_precision`),
w in float32. A variant L:U sets chunk_size=L and `chunked._SCAN_UNROLL` = U (steps per iteration of the state
scans). Each variant is jitted (VJP of o and the final state with random cotangents, as `wkv_bench._jax_modes`
builds it), called once to warm up, then timed `repeats` times around a block_until_ready (`wkv_bench._median_ms`);
the median and the compiled peak memory (temporaries + outputs) are reported. Prints a table and a dated row;
--append-docs appends the row to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import provenance  # benchmarks/, the script's folder
import wkv_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rwkvjax.ops import chunked  # noqa: E402


def fwd_bwd(L, x, cot):
  """(a zero-argument call of the jitted VJP of `wkv7_chunked` at chunk L on x, no initial state or resets, for the
  cotangents cot; its peak memory in bytes), from `wkv_bench._jax_modes`."""
  modes, _ = wkv_bench._jax_modes(lambda *p: chunked.wkv7_chunked(*p, None, None, chunk_size=L), x, cot)
  return modes["fwdbwd"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shape", default="K1", choices=sorted(wkv_bench.SHAPES))
  p.add_argument("--variants", default="32:2,64:2", help="comma list of CHUNK:UNROLL")
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--append-docs", action="store_true")
  args = p.parse_args(argv)
  shape = wkv_bench.SHAPES[args.shape]
  r, w, k, v, a, b, d_o, d_s = wkv_bench.make_inputs(0, *shape)
  dt = jnp.dtype(args.dtype)
  x = (r.astype(dt), w, k.astype(dt), v.astype(dt), a.astype(dt), b.astype(dt))
  cot = (d_o.astype(dt), d_s)
  dev = jax.devices()[0]
  device = getattr(dev, "device_kind", str(dev))
  print(f"chunked WKV-7 fwd+bwd, {args.shape} {shape}, {args.dtype} inputs, {device}, median of {args.repeats}")
  print("| chunk | scan unroll | ms | peak MB | build s |\n|---|---|---|---|---|")
  default_unroll = chunked._SCAN_UNROLL
  cells = []
  try:
    for variant in args.variants.split(","):
      L, unroll = map(int, variant.split(":"))
      chunked._SCAN_UNROLL = unroll
      start = time.time()
      run, mem = fwd_bwd(L, x, cot)
      ms = wkv_bench._median_ms({"fwdbwd": run}, args.repeats)["fwdbwd"]
      mb = "-" if mem is None else f"{mem / 2**20:.0f}"
      print(f"| {L} | {unroll} | {ms:.2f} | {mb} | {time.time() - start:.0f} |", flush=True)
      cells.append(f"{L}:{unroll} {ms:.2f}")
  finally:
    chunked._SCAN_UNROLL = default_unroll
  cmd = "python benchmarks/chunked_tuning.py " + " ".join(argv or sys.argv[1:])
  row = (f"| {datetime.date.today().isoformat()} | {device} | `{cmd.strip()}` | {provenance.commit()} | chunked "
         f"WKV-7 {args.shape} {shape} {args.dtype}, fwd+bwd ms by chunk:unroll: " + ", ".join(cells) + " |")
  print(row)
  if args.append_docs:
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md"), "a") as f:
      f.write(row + "\n")


if __name__ == "__main__":
  main()
