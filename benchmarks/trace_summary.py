"""Where the device time of a profiled run goes: sums the kernels of a jax.profiler perfetto trace
(`perfetto_trace.json.gz`, written by `jax.profiler.trace(..., create_perfetto_trace=True)`, e.g. by
`benchmarks/train_bench.py --profile DIR`) by class (matmul, attention, fusion, copy, ...) and by kernel.

  python benchmarks/trace_summary.py DIR [--steps 3] [--top 25] [--device GPU]

DIR is searched recursively for the newest perfetto_trace.json.gz. Times are per step (the trace's kernel
time divided by --steps), in milliseconds; "busy" is the union of kernel intervals, so the gap to the step time
is device idle time (host, launch or synchronisation gaps).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re

CLASSES = (  # (class, regex on the kernel name), first match wins
    ("attention", r"cudnn|fmha|flash|attention|sdpa"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|wgmma|cublas|matmul|dot"),
    ("copy/transpose", r"memcpy|memset|copy|transpose"),
    ("reduction", r"reduce|reduction"),
    ("fusion", r"fusion|loop|input_|elementwise"),
    ("pallas/mosaic", r"mosaic|pallas|triton"),
)


def newest_trace(root: pathlib.Path) -> pathlib.Path:
  traces = sorted(root.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise FileNotFoundError(f"{root}: no perfetto_trace.json.gz below it (run jax.profiler.trace with "
                            "create_perfetto_trace=True)")
  return traces[-1]


def device_kernels(trace: dict, device: str) -> list[tuple[str, float, float]]:
  """(name, start us, duration us) of every complete event on a process whose name contains `device`."""
  names = {e["pid"]: e["args"].get("name", "") for e in trace["traceEvents"]
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  pids = {pid for pid, name in names.items() if device.lower() in name.lower()}
  if not pids:
    raise ValueError(f"no process named like {device!r} in the trace; processes: {sorted(set(names.values()))}")
  return [(e["name"], float(e["ts"]), float(e.get("dur", 0.0))) for e in trace["traceEvents"]
          if e.get("ph") == "X" and e.get("pid") in pids]


def classify(name: str) -> str:
  lowered = name.lower()
  for cls, pattern in CLASSES:
    if re.search(pattern, lowered):
      return cls
  return "other"


def busy_time(events: list[tuple[str, float, float]]) -> float:
  """Length of the union of the events' intervals (kernels on several streams may overlap)."""
  total, end = 0.0, float("-inf")
  for _, start, dur in sorted(events, key=lambda e: e[1]):
    if start > end:
      total += dur
      end = start + dur
    elif start + dur > end:
      total += start + dur - end
      end = start + dur
  return total


def summary(path: pathlib.Path, steps: int = 3, top: int = 25, device: str = "GPU", gaps: int = 10) -> str:
  """The tables of the module docstring for the trace file `path` (kernel times divided by `steps`) and its `gaps`
  largest idle gaps."""
  with gzip.open(path, "rt") as f:
    events = device_kernels(json.load(f), device)
  per_step = lambda us: us / steps / 1e3  # noqa: E731
  kernel_sum = sum(d for _, _, d in events)
  span = max(s + d for _, s, d in events) - min(s for _, s, _ in events)
  lines = [f"{path}: {len(events)} kernels, per step: span {per_step(span):.2f} ms, busy "
           f"{per_step(busy_time(events)):.2f} ms, kernel sum {per_step(kernel_sum):.2f} ms"]
  by_class, by_name = collections.Counter(), collections.Counter()
  count = collections.Counter()
  for name, _, dur in events:
    by_class[classify(name)] += dur
    by_name[name] += dur
    count[name] += 1
  lines += ["", "| class | ms/step | share |", "|---|---|---|"]
  lines += [f"| {cls} | {per_step(us):.2f} | {us / kernel_sum:.1%} |" for cls, us in by_class.most_common()]
  lines += ["", "| kernel | class | calls/step | ms/step | share |", "|---|---|---|---|---|"]
  lines += [f"| {name[:90]} | {classify(name)} | {count[name] / steps:g} | {per_step(us):.3f} | {us / kernel_sum:.1%} |"
            for name, us in by_name.most_common(top)]
  lines += ["", f"largest idle gaps between kernels (all {steps} steps; the gaps between steps are host time):"]
  lines += [f"  {gap:.1f} us: {before[:50]} -> {after[:50]}" for gap, before, after in idle_gaps(events)[:gaps]]
  return "\n".join(lines)


def idle_gaps(events: list[tuple[str, float, float]]) -> list[tuple[float, str, str]]:
  """(idle us, kernel before, kernel after) for every gap in the union of the events' intervals, largest first."""
  (first, start0, dur0), *rest = sorted(events, key=lambda e: e[1])
  out, end, last = [], start0 + dur0, first
  for name, start, dur in rest:
    if start > end:
      out.append((start - end, last, name))
    if start + dur > end:
      end, last = start + dur, name
  return sorted(out, reverse=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("dir", type=pathlib.Path)
  parser.add_argument("--steps", type=int, default=3, help="steps the trace covers")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--device", default="GPU", help="substring of the device processes' names")
  args = parser.parse_args()
  print(summary(newest_trace(args.dir), args.steps, args.top, args.device))


if __name__ == "__main__":
  main()
