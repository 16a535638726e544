"""Where a Mosaic GPU kernel's time goes, region by region: runs WKV-7 `pallas_gpu` forward + backward once under
`pallas_kernels.mosaic_gpu_tiles.profiled` (Mosaic GPU's on-device profiler: every warpgroup records the SM clock at
the start and end of each `jax.named_scope` region of its kernel body) and prints, per kernel, each region's cycles
per warpgroup (mean over the grid, inclusive of the regions inside it) and its share of the warpgroup's span (first
region start to last region end). Needs a Hopper GPU (the traces leave the GPU by a host callback).

  python benchmarks/kernel_regions.py [--shape 2,4096,32,64] [--dir /tmp/kernel_regions]

The shape's grid should hold many more CTAs than the GPU runs at once (the default: 4096 chunk CTAs), so that the
numbers are those of the steady state (two CTAs per SM at N = 64). Pallas writes one trace per kernel and
compilation (`<kernel_name>-<time>-trace.json`, never overwritten), so one call is traced. Region
boundaries are where the first thread of the warpgroup issues the profiler's clock read: asynchronous work (TMA,
tensor-core products) is counted where the warpgroup waits for it, and the compiler may move independent
arithmetic across a boundary. The profiler itself costs a few cycles per region (its estimate is subtracted) and
16 bytes of SMEM per region.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import shutil
import sys

if os.environ.get("JAX_PLATFORMS") and "cpu" not in os.environ["JAX_PLATFORMS"]:
  os.environ["JAX_PLATFORMS"] += ",cpu"  # the profiler's host callback runs on the CPU device

import jax
import jax.numpy as jnp

import wkv_bench  # benchmarks/, the script's folder

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from pallas_kernels import mosaic_gpu_tiles  # noqa: E402
from pallas_kernels.wkv7.gpu import wkv7_pallas_gpu  # noqa: E402


def region_cycles(trace: dict) -> tuple[dict[str, list[float]], list[float]]:
  """({region: [inclusive cycles per warpgroup trace]}, [span cycles per trace]) of one profiler trace (Chrome trace
  events, "B" / "E" pairs per tid; Mosaic GPU writes clock cycles / 1e3 as "ts")."""
  by_tid = collections.defaultdict(list)
  for ev in trace["traceEvents"]:
    by_tid[ev["tid"]].append(ev)
  per_region, spans = collections.defaultdict(list), []
  for events in by_tid.values():
    stack, totals = [], collections.Counter()
    for ev in events:
      if ev["ph"] == "B":
        stack.append(ev)
      else:
        begin = stack.pop()
        totals[begin["name"]] += (ev["ts"] - begin["ts"]) * 1e3
    spans.append((events[-1]["ts"] - events[0]["ts"]) * 1e3)
    for name, cycles in totals.items():
      per_region[name].append(cycles)
  return per_region, spans


def summarize(path: pathlib.Path) -> str | None:
  """A table of the regions of one trace file `<kernel_name>-<time>-trace.json` (None for a kernel without
  regions)."""
  trace = json.loads(path.read_text())
  if not trace["traceEvents"]:
    return None
  per_region, spans = region_cycles(trace)
  span = sum(spans) / len(spans)
  kernel = path.name.rsplit("-", 2)[0]
  lines = [f"{kernel}: {len(spans)} warpgroup traces, mean span {span:,.0f} cycles",
           f"  {'region':<16}{'cycles / wg':>14}{'share':>8}{'traces':>9}"]
  for name, cycles in sorted(per_region.items(), key=lambda kv: -sum(kv[1])):
    mean = sum(cycles) / len(spans)  # traces without the region count as 0
    lines.append(f"  {name:<16}{mean:>14,.0f}{mean / span:>8.1%}{len(cycles):>9}")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shape", default="2,4096,32,64", help="B,T,H,N (default: K1 with B = 2)")
  p.add_argument("--dir", default="/tmp/kernel_regions", help="where the traces go (emptied first)")
  p.add_argument("--regions", type=int, default=64, help="profiler regions per warpgroup (later ones are dropped)")
  args = p.parse_args(argv)
  if not mosaic_gpu_tiles.is_hopper():
    sys.exit("kernel_regions.py: needs a Hopper (sm_90) GPU")
  B, T, H, N = (int(x) for x in args.shape.split(","))
  out = pathlib.Path(args.dir)
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  r, w, k, v, a, b, do, ds = wkv_bench.make_inputs(0, B, T, H, N)
  s0 = 0.1 * ds
  seg = jnp.zeros((B, T), jnp.int32)

  def loss(r, w, k, v, a, b, s0):
    o, final = wkv7_pallas_gpu(r, w, k, v, a, b, s0, seg)
    return jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32)) + jnp.sum(final * ds)

  with mosaic_gpu_tiles.profiled(str(out), args.regions):
    jax.block_until_ready(jax.jit(jax.grad(loss, argnums=tuple(range(7))))(r, w, k, v, a, b, s0))
    jax.effects_barrier()  # the traces' host callbacks have run
  files = sorted(out.glob("*-trace.json"), key=lambda f: int(f.name.rsplit("-", 2)[1]))  # in launch order
  print(f"WKV-7 pallas_gpu fwd+bwd, shape (B, T, H, N) = {(B, T, H, N)}, {jax.devices()[0].device_kind}: "
        f"{len(files)} kernel traces")
  for path in files:
    table = summarize(path)
    if table is not None:
      print(f"\n{table}")


if __name__ == "__main__":
  main()
