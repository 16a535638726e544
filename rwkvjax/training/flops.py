"""Model FLOPs per token and device peaks, for tokens/s -> TFLOP/s and MFU."""

from __future__ import annotations

import jax

from rwkvjax.models import get_model

# Dense peak FLOP/s per device by (device kind substring, compute dtype). Vendor datasheet numbers.
PEAK_FLOPS = {
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("TPU v5p", "bfloat16"): 459e12, ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v4", "bfloat16"): 275e12,
    ("TPU v6", "bfloat16"): 918e12,
}


def train_flops_per_token(cfg, seq_len: int) -> float:
  """Model FLOPs of one training token: forward + backward (2x forward), without rematerialisation. The
  forward count is the model's own (`forward_flops_per_token` of its module)."""
  return 3 * get_model(cfg.version).forward_flops_per_token(cfg, seq_len)


def peak_flops(device: jax.Device, compute_dtype: str) -> float | None:
  """The device's dense peak for the compute dtype, or None when unknown (e.g. CPU)."""
  kind = getattr(device, "device_kind", "")
  for (name, dtype), flops in PEAK_FLOPS.items():
    if name in kind and dtype == compute_dtype:
      return flops
  return None
