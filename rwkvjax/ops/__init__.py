"""WKV recurrences: one public API per version, backends behind `impl=`."""

from rwkvjax.ops.api import backends, register_backend, resolve_impl, wkv7
from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference

register_backend("reference", wkv7_reference, auto_platforms=("cpu", "gpu", "tpu"))
register_backend("chunked", wkv7_chunked, auto_platforms=("cpu", "tpu"))

__all__ = ["wkv7", "register_backend", "backends", "resolve_impl"]
