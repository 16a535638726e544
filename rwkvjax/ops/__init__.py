"""WKV recurrences: one public API per version, backends behind `impl=`."""

from rwkvjax.ops.api import backends, register_backend, resolve_impl, wkv7
from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference

register_backend("reference", wkv7_reference, auto_platforms=("cpu", "gpu", "tpu"))
register_backend("chunked", wkv7_chunked, auto_platforms=("cpu", "tpu"))

# RWKV-5.2 / RWKV-6 (wkv5, wkv6).
from rwkvjax.ops.wkv5 import wkv5, wkv5_reference  # noqa: E402
from rwkvjax.ops.wkv6 import wkv6, wkv6_reference  # noqa: E402
from rwkvjax.ops.chunked_v56 import wkv5_chunked, wkv6_chunked  # noqa: E402

register_backend("reference", wkv5_reference, auto_platforms=("cpu", "gpu", "tpu"), op="wkv5")
register_backend("reference", wkv6_reference, auto_platforms=("cpu", "gpu", "tpu"), op="wkv6")
# chunked: ~3x faster than reference fwd+bwd on CPU at T=512 (similar forward); see chunked_v56.py.
register_backend("chunked", wkv5_chunked, auto_platforms=("cpu", "tpu"), op="wkv5")
register_backend("chunked", wkv6_chunked, auto_platforms=("cpu", "tpu"), op="wkv6")

__all__ = ["wkv7", "wkv5", "wkv6", "register_backend", "backends", "resolve_impl"]

try:  # Pallas backends of wkv7 (pallas_gpu, pallas_tpu, *_interpret): they register themselves; never fatal on CPU.
  import pallas_kernels.wkv7  # noqa: E402,F401
except Exception as _e:  # noqa: BLE001  (a jax without Pallas Mosaic support, or a broken install)
  import warnings as _warnings

  _warnings.warn(f"rwkvjax.ops: Pallas WKV-7 backends not registered: {_e!r}", stacklevel=1)
