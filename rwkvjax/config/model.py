"""Model configuration schema (no Fiddle import here; experiments bind these with Fiddle)."""

from __future__ import annotations

import dataclasses
import math

SUPPORTED_VERSIONS = ("x070",)
COMPUTE_DTYPES = ("float32", "bfloat16")


def rwkv7_lora_dim(n_embd: int, factor: float) -> int:
  """RWKV-LM train_temp's LoRA width rule: max(32, round(factor * sqrt(C) / 32) * 32) (round half to even)."""
  return max(32, int(round(factor * math.sqrt(n_embd) / 32) * 32))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of an RWKV model. Field names follow RWKV-LM's arguments.

  Attributes:
    version: RWKV-LM's `my_testing` tag; "x070" is RWKV-7 "Goose".
    n_layer: number of blocks L.
    n_embd: model width C (= dim_att).
    vocab_size: V (65536 for the World tokenizer).
    head_size: N, channels per head; H = C / N heads.
    dim_ffn: channel-mix hidden width; None means 4 * C (hard-coded in x070).
    d_decay_lora, d_aaa_lora, d_mv_lora, d_gate_lora: x070 LoRA widths (w, a, v, g); None means the
      train_temp rule (2.5, 2.5, 1.7 and 5 times sqrt(C), rounded to multiples of 32).
    compute_dtype: "float32" or "bfloat16" for activations and matmul inputs. Parameters stay float32;
      the WKV state, normalisations and matmul accumulations are always float32.
  """

  version: str = "x070"
  n_layer: int = 12
  n_embd: int = 768
  vocab_size: int = 65536
  head_size: int = 64
  dim_ffn: int | None = None
  d_decay_lora: int | None = None
  d_aaa_lora: int | None = None
  d_mv_lora: int | None = None
  d_gate_lora: int | None = None
  compute_dtype: str = "float32"

  def __post_init__(self):
    def bad(field, value, expected):
      raise ValueError(f"ModelConfig.{field}={value!r}: expected {expected}")

    if self.version not in SUPPORTED_VERSIONS:
      bad("version", self.version, f"one of {SUPPORTED_VERSIONS}")
    for field in ("n_layer", "n_embd", "vocab_size", "head_size"):
      if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
        bad(field, getattr(self, field), "a positive int")
    if self.n_embd % self.head_size:
      bad("n_embd", self.n_embd, f"a multiple of head_size={self.head_size}")
    for field in ("dim_ffn", "d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora"):
      value = getattr(self, field)
      if value is not None and (not isinstance(value, int) or value < 1):
        bad(field, value, "None or a positive int")
    if self.compute_dtype not in COMPUTE_DTYPES:
      bad("compute_dtype", self.compute_dtype, f"one of {COMPUTE_DTYPES}")

  @property
  def n_head(self) -> int:
    return self.n_embd // self.head_size

  @property
  def ffn_dim(self) -> int:
    return self.dim_ffn if self.dim_ffn is not None else 4 * self.n_embd

  @property
  def lora_dims(self) -> dict[str, int]:
    """LoRA widths keyed by the x070 parameter prefix: w (decay), a (iclr), v (value residual), g (gate)."""
    C = self.n_embd
    return {
        "w": self.d_decay_lora or rwkv7_lora_dim(C, 2.5),
        "a": self.d_aaa_lora or rwkv7_lora_dim(C, 2.5),
        "v": self.d_mv_lora or rwkv7_lora_dim(C, 1.7),
        "g": self.d_gate_lora or rwkv7_lora_dim(C, 5.0),
    }
