"""Pallas kernels of the WKV-5 and WKV-6 ops, registered as backends of `rwkvjax.ops.wkv5` and `rwkvjax.ops.wkv6`.

One kernel set serves both ops: WKV-5 is WKV-6 with a decay constant over time, which its backends broadcast over
[B, T] (as `rwkvjax.ops.chunked_v56` does). Backends of each op (see `rwkvjax.ops.api.register_backend`):
  pallas_tpu            Pallas Mosaic-TPU kernels (`tpu.py`); impl="auto" picks it on TPU.
  pallas_gpu            Pallas Mosaic-GPU kernels for Hopper (`gpu.py`); impl="auto" picks it on GPU (calls the
                        kernels cannot run, e.g. a non-Hopper GPU or head dim not in (64, 128), run `chunked`).
                        Checked against float64 on an H100 and 2.1x to 2.3x faster than `chunked` there at K1-K3,
                        forward + backward (docs/benchmarks.md).
  pallas_tpu_interpret  the TPU kernels in Pallas interpret mode (any platform; never picked by "auto").
  pallas_gpu_interpret  the Mosaic GPU kernels in the Mosaic GPU interpreter (any platform; never picked by "auto").

The TPU backends support `reset_state` (segments restart from a given state); the GPU ones raise
NotImplementedError for one ("auto" on GPU then picks `chunked`). The chunk algebra (`common.py`) uses
exact pairwise decays over a binary hierarchy of blocks (spec wkv_kernels.md section 2.4), so RWKV-6's unbounded
decays cannot overflow. Tests: tests/ops/wkv56_pallas_test.py.
"""

from __future__ import annotations

import functools

from rwkvjax.ops.api import register_backend

from pallas_kernels.wkv56.gpu import wkv5_pallas_gpu, wkv6_pallas_gpu
from pallas_kernels.wkv56.tpu import wkv5_pallas_tpu, wkv6_pallas_tpu

for _op, _tpu, _gpu in (("wkv5", wkv5_pallas_tpu, wkv5_pallas_gpu), ("wkv6", wkv6_pallas_tpu, wkv6_pallas_gpu)):
  register_backend("pallas_tpu", _tpu, auto_platforms=("tpu",), op=_op, supports_reset_state=True)
  register_backend("pallas_gpu", _gpu, auto_platforms=("gpu",), op=_op)
  register_backend("pallas_tpu_interpret", functools.partial(_tpu, interpret=True), op=_op, supports_reset_state=True)
  register_backend("pallas_gpu_interpret", functools.partial(_gpu, interpret=True), op=_op)

__all__ = ["wkv5_pallas_gpu", "wkv5_pallas_tpu", "wkv6_pallas_gpu", "wkv6_pallas_tpu"]
