"""WKV recurrences: one public API per version, backends behind `impl=`."""

from rwkvjax.ops.api import backends, register_backend, resolve_impl, wkv7
from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference

register_backend("reference", wkv7_reference, auto_platforms=("cpu", "gpu", "tpu"), supports_reset_state=True)
# chunked is also "auto" on GPU, behind pallas_gpu (which registers later): what runs calls with a reset_state.
register_backend("chunked", wkv7_chunked, auto_platforms=("cpu", "gpu", "tpu"), supports_reset_state=True)

# RWKV-5.2 / RWKV-6 (wkv5, wkv6).
from rwkvjax.ops.wkv5 import wkv5, wkv5_reference  # noqa: E402
from rwkvjax.ops.wkv6 import wkv6, wkv6_reference  # noqa: E402
from rwkvjax.ops.chunked_v56 import wkv5_chunked, wkv6_chunked  # noqa: E402

register_backend("reference", wkv5_reference, auto_platforms=("cpu", "gpu", "tpu"), op="wkv5",
                 supports_reset_state=True)
register_backend("reference", wkv6_reference, auto_platforms=("cpu", "gpu", "tpu"), op="wkv6",
                 supports_reset_state=True)
# chunked: chunk-parallel, ~3x faster than reference fwd+bwd on CPU at T=512 (similar forward; chunked_v56.py).
# "auto" on every platform: on GPU too, instead of the per-token reference scan, since the wkv5/wkv6 pallas_gpu
# kernels are not "auto" until checked on hardware; on TPU, pallas_tpu (registered later) is preferred to it.
register_backend("chunked", wkv5_chunked, auto_platforms=("cpu", "gpu", "tpu"), op="wkv5",
                 supports_reset_state=True)
register_backend("chunked", wkv6_chunked, auto_platforms=("cpu", "gpu", "tpu"), op="wkv6",
                 supports_reset_state=True)

__all__ = ["wkv7", "wkv5", "wkv6", "register_backend", "backends", "resolve_impl"]

# Pallas backends of wkv7, wkv5, wkv6 (pallas_gpu, pallas_tpu, *_interpret): they register themselves; a failed
# import only warns (never fatal on CPU).
try:
  import pallas_kernels.wkv7  # noqa: E402,F401
  import pallas_kernels.wkv56  # noqa: E402,F401
except Exception as _e:  # noqa: BLE001  (a jax without Pallas Mosaic support, or a broken install)
  import warnings as _warnings

  _warnings.warn(f"rwkvjax.ops: Pallas WKV backends not registered: {_e!r}", stacklevel=1)
