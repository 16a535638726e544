"""Pallas kernels of the WKV-7 op, registered as backends of `rwkvjax.ops.wkv7`.

Backends (see `rwkvjax.ops.api.register_backend`):
  pallas_tpu            Pallas Mosaic-TPU kernels (`tpu.py`); impl="auto" picks it on TPU.
  pallas_gpu            Pallas Mosaic-GPU kernels for Hopper (`gpu.py`); impl="auto" picks it on GPU (calls the
                        kernels cannot run, e.g. a non-Hopper GPU or head dim not in (64, 128), run `chunked`).
  pallas_tpu_interpret  the TPU kernels in Pallas interpret mode (any platform; never picked by "auto").
  pallas_gpu_interpret  the Mosaic GPU kernels in the Mosaic GPU interpreter (any platform; never picked by "auto").

The TPU backends support `reset_state` (segments restart from a given state); the GPU ones raise
NotImplementedError for one ("auto" on GPU then picks `chunked`).

Interpret mode is how CI tests the kernels' logic on CPU: `wkv7(..., impl="pallas_tpu_interpret")`, or the
functions themselves with `interpret=True`, e.g. `functools.partial(wkv7_pallas_tpu, interpret=True)`
(tests/ops/wkv7_pallas_test.py).
"""

from __future__ import annotations

import functools

from rwkvjax.ops.api import register_backend

from pallas_kernels.wkv7.gpu import wkv7_pallas_gpu
from pallas_kernels.wkv7.tpu import wkv7_pallas_tpu

register_backend("pallas_tpu", wkv7_pallas_tpu, auto_platforms=("tpu",), supports_reset_state=True)
register_backend("pallas_gpu", wkv7_pallas_gpu, auto_platforms=("gpu",))
register_backend("pallas_tpu_interpret", functools.partial(wkv7_pallas_tpu, interpret=True), supports_reset_state=True)
register_backend("pallas_gpu_interpret", functools.partial(wkv7_pallas_gpu, interpret=True))

__all__ = ["wkv7_pallas_gpu", "wkv7_pallas_tpu"]
