"""WKV recurrences: one public API per version, backends behind `impl=`."""

from rwkvjax.ops.api import backends, register_backend, resolve_impl, wkv7
from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference

register_backend("reference", wkv7_reference, auto_platforms=("cpu", "gpu", "tpu"))
register_backend("chunked", wkv7_chunked, auto_platforms=("cpu", "tpu"))

__all__ = ["wkv7", "register_backend", "backends", "resolve_impl"]

try:  # Pallas backends of wkv7 (pallas_gpu, pallas_tpu, *_interpret): they register themselves; never fatal on CPU.
  import pallas_kernels.wkv7  # noqa: E402,F401
except Exception as _e:  # noqa: BLE001  (a jax without Pallas Mosaic support, or a broken install)
  import warnings as _warnings

  _warnings.warn(f"rwkvjax.ops: Pallas WKV-7 backends not registered: {_e!r}", stacklevel=1)
