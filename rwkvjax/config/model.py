"""Model configuration schema (no Fiddle import here; experiments bind these with Fiddle)."""

from __future__ import annotations

import dataclasses
import math

SUPPORTED_VERSIONS = ("x052", "x060", "x070")
# LoRA-width fields that only some versions have (x070: w/a/v/g LoRAs; x060: the time_maa LoRA).
_VERSION_ONLY_FIELDS = {"d_aaa_lora": ("x070",), "d_mv_lora": ("x070",), "d_gate_lora": ("x070",),
                        "d_mix_lora": ("x060",), "d_decay_lora": ("x060", "x070")}
COMPUTE_DTYPES = ("float32", "bfloat16")


def rwkv7_lora_dim(n_embd: int, factor: float) -> int:
  """RWKV-LM train_temp's LoRA width rule: max(32, round(factor * sqrt(C) / 32) * 32) (round half to even)."""
  return max(32, int(round(factor * math.sqrt(n_embd) / 32) * 32))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of an RWKV model. Field names follow RWKV-LM's arguments.

  Attributes:
    version: RWKV-LM's `my_testing` tag: "x070" is RWKV-7 "Goose", "x060" RWKV-6 "Finch", "x052" RWKV-5.2
      "Eagle".
    n_layer: number of blocks L.
    n_embd: model width C (= dim_att).
    vocab_size: V (65536 for the World tokenizer).
    head_size: N, channels per head; H = C / N heads.
    dim_ffn: channel-mix hidden width; None means 4 * C (hard-coded in x070), or int(3.5 * C) // 32 * 32 for
      x052/x060 (RWKV-LM's default --dim_ffn).
    d_decay_lora, d_aaa_lora, d_mv_lora, d_gate_lora: x070 LoRA widths (w, a, v, g); None means the
      train_temp rule (2.5, 2.5, 1.7 and 5 times sqrt(C), rounded to multiples of 32). For x060,
      d_decay_lora is the width of the decay LoRA time_decay_w1/w2 (None means 64, RWKV-LM's D_DECAY_LORA).
    d_mix_lora: x060 only, the width of the data-dependent token-shift LoRA time_maa_w1/w2 per branch
      (None means 32, RWKV-LM's D_MIX_LORA).
    head_size_divisor: x052/x060 only (RWKV-LM --head_size_divisor, default 8): the ln_x GroupNorm runs on
      y / divisor with eps 1e-5, i.e. on y with eps 1e-5 * divisor**2. x070 ignores it (eps 64e-5 fixed).
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
  d_mix_lora: int | None = None
  head_size_divisor: int = 8
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
    for field in ("dim_ffn", "d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora", "d_mix_lora"):
      value = getattr(self, field)
      if value is not None and (not isinstance(value, int) or value < 1):
        bad(field, value, "None or a positive int")
      if value is not None and field in _VERSION_ONLY_FIELDS and self.version not in _VERSION_ONLY_FIELDS[field]:
        bad(field, value, f"None: version {self.version} has no such LoRA (only {_VERSION_ONLY_FIELDS[field]})")
    if not isinstance(self.head_size_divisor, int) or self.head_size_divisor < 1:
      bad("head_size_divisor", self.head_size_divisor, "a positive int")
    if self.compute_dtype not in COMPUTE_DTYPES:
      bad("compute_dtype", self.compute_dtype, f"one of {COMPUTE_DTYPES}")

  @property
  def n_head(self) -> int:
    return self.n_embd // self.head_size

  @property
  def ffn_dim(self) -> int:
    if self.dim_ffn is not None:
      return self.dim_ffn
    if self.version == "x070":
      return 4 * self.n_embd
    return int(self.n_embd * 3.5) // 32 * 32  # RWKV-LM RWKV-v5 train.py default for x052/x060

  @property
  def lora_dims(self) -> dict[str, int]:
    """LoRA widths. x070, keyed by parameter prefix: w (decay), a (iclr), v (value residual), g (gate).
    x060: maa (time_maa_w1/w2, per branch) and w (time_decay_w1/w2). x052: none."""
    C = self.n_embd
    if self.version == "x060":
      return {"maa": self.d_mix_lora or 32, "w": self.d_decay_lora or 64}
    if self.version == "x052":
      return {}
    return {
        "w": self.d_decay_lora or rwkv7_lora_dim(C, 2.5),
        "a": self.d_aaa_lora or rwkv7_lora_dim(C, 2.5),
        "v": self.d_mv_lora or rwkv7_lora_dim(C, 1.7),
        "g": self.d_gate_lora or rwkv7_lora_dim(C, 5.0),
    }
