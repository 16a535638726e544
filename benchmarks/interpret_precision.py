"""Relative errors of a `pallas_gpu` backend against float64, over many seeds, in the Mosaic GPU interpreter (CPU).

The interpreter reproduces the kernels' bf16 tensor-core numerics (bf16 operands, fp32 accumulation), so a change of
precision (which products are split, which values are rounded to bf16) can be judged here before a GPU call: run this
in two source trees (`benchmarks/compare_trees.sh export BRANCH` writes one to `.trees/`) and compare. It runs the
float64 test's comparison (`tests/ops/pallas_checks.compare_float64`, bf16 inputs) for every seed, with and without a
reset, and prints each output's and gradient's max and mean relative error (max |x - ref| / max |ref|):

    PYTHONPATH=. python benchmarks/interpret_precision.py --op wkv6 --decays rwkv6 --seeds 12   # ~1 min, 2 cores
    PYTHONPATH=. python benchmarks/interpret_precision.py --op wkv7 --decays slow --seeds 10

Decays as in the tests' `make_inputs` (wkv6: rwkv6, slow, extreme; wkv7: rwkv7, slow, aligned, strong_decay, generic).
Ninth session: this showed that rounding WKV-6's level factors to bf16 doubles dw's error (dw's regrouped sums cancel)
and that rounding WKV-7's factor-gradient factors triples it, while rounding dA instead does not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io

import jax.numpy as jnp
import numpy as np

from tests.ops import pallas_checks
from tests.ops.wkv7_chunked_test import segments_from_starts


def errors_for_seed(op: str, seed: int, shape, decays: str, starts) -> dict:
  """{name: relative error} of `op`'s pallas_gpu (interpreted) against float64 for one seed."""
  B, T, H, N = shape
  segment_ids = None if starts is None else segments_from_starts(B, T, starts)
  if op == "wkv7":
    from pallas_kernels.wkv7.gpu import wkv7_pallas_gpu  # noqa: PLC0415
    from tests.ops.wkv7_chunked_test import make_inputs  # noqa: PLC0415
    from tests.ops.wkv7_pallas_test import NAMES, _reference_f64  # noqa: PLC0415

    r, w, k, v, a, b, s0 = make_inputs(seed, B, T, H, N, decays)
    r, k, v, a, b = (x.astype(jnp.bfloat16) for x in (r, k, v, a, b))
    primals, fn = (r, w, k, v, a, b, s0), wkv7_pallas_gpu
  else:
    from pallas_kernels.wkv56.gpu import wkv6_pallas_gpu  # noqa: PLC0415
    from tests.ops.wkv56_pallas_test import NAMES, _reference_f64, make_inputs  # noqa: PLC0415

    r, w, k, v, u, s0 = make_inputs(seed, B, T, H, N, "wkv6", decays)
    r, k, v = (x.astype(jnp.bfloat16) for x in (r, k, v))
    primals, fn = (r, w, k, v, u, s0), wkv6_pallas_gpu
  with contextlib.redirect_stdout(io.StringIO()):  # compare_float64 prints its line; we print the summary
    return pallas_checks.compare_float64(seed, functools.partial(fn, interpret=True), _reference_f64, primals,
                                         segment_ids, np.inf, names=NAMES, label="")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--op", choices=("wkv6", "wkv7"), required=True)
  p.add_argument("--decays", default=None, help="make_inputs' decay kind (default: rwkv6 / rwkv7)")
  p.add_argument("--seeds", type=int, default=10)
  p.add_argument("--shape", default="1,128,2,64", help="B,T,H,N")
  args = p.parse_args(argv)
  decays = args.decays or {"wkv6": "rwkv6", "wkv7": "rwkv7"}[args.op]
  shape = tuple(int(x) for x in args.shape.split(","))
  runs = [errors_for_seed(args.op, seed, shape, decays, starts)
          for seed in range(args.seeds) for starts in (None, [shape[1] // 2 - 14])]
  print(f"{args.op} pallas_gpu (interpreted) vs float64, decays {decays}, shape {shape}, {len(runs)} runs: "
        "max / mean relative error")
  for name in runs[0]:
    values = np.array([run[name] for run in runs])
    print(f"  {name:16s} {values.max():.1e} / {values.mean():.1e}")


if __name__ == "__main__":
  main()
