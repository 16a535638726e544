"""benchmarks/kernel_regions.py: region cycles from Mosaic GPU profiler traces (the GPU run itself is not on CI)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kernel_regions  # noqa: E402


def _events(tid, spans):  # spans: (name, begin cycles, end cycles), nested ones after their parent
  events = [(b, "B", name) for name, b, _ in spans] + [(e, "E", name) for name, _, e in spans]
  events.sort(key=lambda x: (x[0], x[1] == "B"))  # at a shared time an end comes before a begin
  return [{"name": n, "ph": ph, "ts": t / 1e3, "pid": 1, "tid": tid} for t, ph, n in events]


def test_region_cycles_are_inclusive_per_warpgroup():
  trace = {"traceEvents": _events(1, [("role", 0, 100), ("dA", 10, 40), ("role", 100, 300), ("dA", 120, 150)])
           + _events(2, [("role", 0, 50), ("dA", 5, 25)])}
  per_region, spans = kernel_regions.region_cycles(trace)
  assert sorted(spans) == [50, 300]
  assert sorted(per_region["role"]) == [50, 300]  # two loop iterations summed on warpgroup 1
  assert sorted(per_region["dA"]) == [20, 60]


def test_summarize_names_the_kernel(tmp_path):
  path = tmp_path / "wkv7_chunk_grads-17957-trace.json"
  path.write_text(kernel_regions.json.dumps({"traceEvents": _events(1, [("first_phase", 0, 80), ("role", 80, 200)])}))
  table = kernel_regions.summarize(path)
  assert table.startswith("wkv7_chunk_grads: 1 warpgroup traces, mean span 200 cycles")
  assert "first_phase" in table and "40.0%" in table
  (tmp_path / "wkv7_state_fwd-17958-trace.json").write_text('{"traceEvents": []}')
  assert kernel_regions.summarize(tmp_path / "wkv7_state_fwd-17958-trace.json") is None
