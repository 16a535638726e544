"""Model FLOPs per token and device peaks, for tokens/s -> TFLOP/s and MFU."""

from __future__ import annotations

import jax

from rwkvjax.config.model import ModelConfig

# Dense peak FLOP/s per device by (device kind substring, compute dtype). Vendor datasheet numbers.
PEAK_FLOPS = {
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("TPU v5p", "bfloat16"): 459e12, ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v4", "bfloat16"): 275e12,
    ("TPU v6", "bfloat16"): 918e12,
}


def rwkv7_forward_flops_per_token(cfg: ModelConfig) -> float:
  """Forward FLOPs per token of RWKV-7 as this framework computes it (matmuls at 2 FLOPs per multiply-add,
  the WKV update and readout, the LM head). Elementwise work is not counted."""
  C, N, F, V, L = cfg.n_embd, cfg.head_size, cfg.ffn_dim, cfg.vocab_size, cfg.n_layer
  lora = sum(cfg.lora_dims.values())
  per_layer = (2 * 4 * C * C        # receptance, key, value, output
               + 2 * 2 * C * lora   # w, a, v, g LoRAs: C -> D -> C each (v also runs in layer 0)
               + 2 * 2 * C * F      # channel-mix key and value
               + 2 * 4 * C * N)     # WKV per head: a^T S, b (a^T S)^T, k v^T, S^T r on N x N
  return L * per_layer + 2 * C * V


def train_flops_per_token(cfg: ModelConfig) -> float:
  """Model FLOPs of one training token: forward + backward (2x forward), without rematerialisation."""
  return 3 * rwkv7_forward_flops_per_token(cfg)


def peak_flops(device: jax.Device, compute_dtype: str) -> float | None:
  """The device's dense peak for the compute dtype, or None when unknown (e.g. CPU)."""
  kind = getattr(device, "device_kind", "")
  for (name, dtype), flops in PEAK_FLOPS.items():
    if name in kind and dtype == compute_dtype:
      return flops
  return None
