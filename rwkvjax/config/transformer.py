"""Transformer (Llama / Qwen2 family) configuration schema, with HF `config.json` field names.

`TransformerConfig` is frozen and hashable (so it can be a static argument of `jax.jit`); `rope_scaling` is
kept as a sorted tuple of (key, value) pairs and given back as a dict by `rope_scaling_dict`.
`from_hf_config(dict)` reads a transformers `config.json` (both the v4 layout, `rope_theta` + `rope_scaling`,
and the v5 layout, `rope_parameters`) with transformers' defaults for the optional fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

MODEL_TYPES = ("llama", "qwen2")
COMPUTE_DTYPES = ("float32", "bfloat16")
# RoPE types whose frequencies are static (a function of the config only). transformers' "dynamic" (NTK
# re-scaled at run time by the sequence length) and "longrope" (two frequency sets) are not supported.
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_ROPE_REQUIRED = {"default": (), "linear": ("factor",),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                  "yarn": ("factor", "original_max_position_embeddings")}
_ROPE_OPTIONAL = {"default": (), "linear": (), "llama3": (),
                  "yarn": ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")}

# transformers' class defaults for the optional config.json fields, per model_type.
_HF_DEFAULTS = {
    "llama": dict(num_key_value_heads=None, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, max_position_embeddings=2048, initializer_range=0.02),
    "qwen2": dict(num_key_value_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                  max_position_embeddings=32768, initializer_range=0.02),
}
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class ConfigError(ValueError):
  """A config that this implementation cannot run: names the field, the value and what was expected."""


def _freeze(value):
  if isinstance(value, Mapping):
    return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of a Llama / Qwen2 decoder. Field names follow HF transformers' config.json.

  Attributes:
    model_type: "llama" or "qwen2" (Qwen2 and Qwen2.5 share the architecture).
    vocab_size: V. hidden_size: model width C. intermediate_size: SwiGLU width F.
    num_hidden_layers: L. num_attention_heads: H query heads. num_key_value_heads: K key/value heads
      (H % K == 0; K < H is grouped-query attention); None means H.
    head_dim: D per head; None means C // H (it may differ from C / H, as in some Llama variants).
    rope_theta: RoPE base. rope_scaling: None (plain RoPE) or a mapping with "rope_type" (or "type") one of
      "linear", "llama3", "yarn" and that type's fields, as in HF (`factor`, `low_freq_factor`, ...).
    rms_norm_eps: RMSNorm epsilon. tie_word_embeddings: the LM head is the embedding matrix.
    attention_bias: q/k/v projections have biases (Qwen2: always; Llama: config.attention_bias).
    attention_out_bias: o_proj has a bias (Llama with attention_bias=True; never Qwen2).
    mlp_bias: gate/up/down projections have biases (Llama's mlp_bias).
    max_position_embeddings: the context length (informational; also the default original length of
      llama3/yarn scaling, as in HF).
    initializer_range: std of the normal init of every matrix (HF's `_init_weights`).
    compute_dtype: "float32" or "bfloat16" for activations and matmul inputs; norms, softmax, RoPE tables and
      matmul accumulations are float32.
  """

  model_type: str = "llama"
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rope_scaling: Any = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  max_position_embeddings: int = 2048
  initializer_range: float = 0.02
  compute_dtype: str = "float32"

  def __post_init__(self):
    def bad(field, value, expected):
      raise ConfigError(f"TransformerConfig.{field}={value!r}: expected {expected}")

    if self.model_type not in MODEL_TYPES:
      bad("model_type", self.model_type, f"one of {MODEL_TYPES}")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "max_position_embeddings"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        bad(field, value, "a positive int")
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      if self.hidden_size % self.num_attention_heads:
        bad("hidden_size", self.hidden_size, f"a multiple of num_attention_heads={self.num_attention_heads} "
            "(or give head_dim)")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    for field in ("num_key_value_heads", "head_dim"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        bad(field, value, "None or a positive int")
    if self.num_attention_heads % self.num_key_value_heads:
      bad("num_key_value_heads", self.num_key_value_heads,
          f"a divisor of num_attention_heads={self.num_attention_heads}")
    if self.head_dim % 2:
      bad("head_dim", self.head_dim, "an even number (RoPE rotates pairs)")
    for field in ("rope_theta", "rms_norm_eps", "initializer_range"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        bad(field, value, "a positive number")
    object.__setattr__(self, "rope_theta", float(self.rope_theta))
    for field in ("tie_word_embeddings", "attention_bias", "attention_out_bias", "mlp_bias"):
      if not isinstance(getattr(self, field), bool):
        bad(field, getattr(self, field), "a bool")
    if self.compute_dtype not in COMPUTE_DTYPES:
      bad("compute_dtype", self.compute_dtype, f"one of {COMPUTE_DTYPES}")
    object.__setattr__(self, "rope_scaling", self._check_rope_scaling(self.rope_scaling))

  def _check_rope_scaling(self, scaling):
    if scaling is None:
      return None
    items = dict(scaling)
    if "rope_type" not in items and "type" not in items:
      raise ConfigError(f"TransformerConfig.rope_scaling={items!r}: expected a 'rope_type' (or 'type') key")
    rope_type = items.pop("rope_type", None) or items.get("type")
    if items.get("type", rope_type) != rope_type:
      raise ConfigError(f"rope_scaling: 'rope_type'={rope_type!r} and 'type'={items['type']!r} disagree")
    items.pop("type", None)
    items.pop("rope_theta", None)  # transformers v5 keeps the base inside rope_parameters; it is rope_theta here
    if rope_type not in ROPE_TYPES:
      raise ConfigError(f"rope_scaling rope_type={rope_type!r} is not supported: expected one of {ROPE_TYPES} "
                        "(dynamic NTK and longrope re-scale at run time and are not implemented)")
    if rope_type == "default":
      if items.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"rope_scaling partial_rotary_factor={items['partial_rotary_factor']!r}: only 1.0 is "
                          "supported")
      return None
    if rope_type in ("llama3", "yarn"):
      items.setdefault("original_max_position_embeddings", self.max_position_embeddings)
    missing = [k for k in _ROPE_REQUIRED[rope_type] if items.get(k) is None]
    if missing:
      raise ConfigError(f"rope_scaling of rope_type {rope_type!r} lacks {missing}; it needs "
                        f"{list(_ROPE_REQUIRED[rope_type])}")
    if items.get("partial_rotary_factor", 1.0) != 1.0:
      raise ConfigError(f"rope_scaling partial_rotary_factor={items['partial_rotary_factor']!r}: only 1.0 is "
                        "supported")
    items.pop("partial_rotary_factor", None)
    unknown = sorted(set(items) - set(_ROPE_REQUIRED[rope_type]) - set(_ROPE_OPTIONAL[rope_type]))
    if unknown:
      raise ConfigError(f"rope_scaling of rope_type {rope_type!r} has unsupported fields {unknown}; known: "
                        f"{sorted(_ROPE_REQUIRED[rope_type] + _ROPE_OPTIONAL[rope_type])}")
    for k in ("factor", "low_freq_factor", "high_freq_factor"):
      if k in items and (isinstance(items[k], bool) or not isinstance(items[k], (int, float)) or items[k] <= 0):
        raise ConfigError(f"rope_scaling {k}={items[k]!r}: expected a positive number")
    if rope_type == "llama3" and items["high_freq_factor"] <= items["low_freq_factor"]:
      raise ConfigError(f"rope_scaling llama3: high_freq_factor={items['high_freq_factor']} must exceed "
                        f"low_freq_factor={items['low_freq_factor']}")
    return _freeze({"rope_type": rope_type, **items})

  # ---------------------------------------------------------------------------------------------------
  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    """rope_scaling as a dict (with "rope_type"), or None for plain RoPE."""
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @property
  def rope_type(self) -> str:
    return "default" if self.rope_scaling is None else dict(self.rope_scaling)["rope_type"]

  @property
  def version(self) -> str:
    """The architecture tag under which the model registry (`rwkvjax.models.get_model`) finds this family,
    as RWKV configs have theirs ("x070"): the HF model_type."""
    return self.model_type

  @property
  def n_layer(self) -> int:
    """num_hidden_layers under the name the shared ParamSpec helpers and the trainer use."""
    return self.num_hidden_layers

  @property
  def q_dim(self) -> int:
    return self.num_attention_heads * self.head_dim

  @property
  def kv_dim(self) -> int:
    return self.num_key_value_heads * self.head_dim

  def num_params(self, include_embeddings: bool = True) -> int:
    C, F, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
    per_layer = C * (self.q_dim + 2 * self.kv_dim) + self.q_dim * C + 3 * C * F + 2 * C
    per_layer += (self.q_dim + 2 * self.kv_dim) * self.attention_bias + C * self.attention_out_bias
    per_layer += (2 * F + C) * self.mlp_bias
    emb = V * C * (1 if self.tie_word_embeddings else 2)
    return L * per_layer + C + (emb if include_embeddings else 0)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 per matmul weight (the LM head
    included, the embedding lookup not) plus causal attention, 6 * L * T * H * D (QK^T and PV, half of
    the T x T square, times 3)."""
    C, V = self.hidden_size, self.vocab_size
    matmul_params = self.num_params(include_embeddings=False) + V * C
    attention = 6 * self.num_hidden_layers * seq_len * self.num_attention_heads * self.head_dim
    return 6.0 * matmul_params + attention

  def replace(self, **changes) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)

  def to_hf_config(self) -> dict[str, Any]:
    """The config.json dict (transformers v4 layout, which v4 and v5 both read) for this architecture."""
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.model_type]
    out: dict[str, Any] = dict(
        architectures=[arch], model_type=self.model_type, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
        num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
        head_dim=self.head_dim, hidden_act="silu", rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
        rope_scaling=self.rope_scaling_dict, tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings, initializer_range=self.initializer_range,
        attention_dropout=0.0)
    if self.model_type == "llama":
      out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
    else:
      out.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers)
    return out


def from_hf_config(hf: Mapping[str, Any], **overrides) -> TransformerConfig:
  """TransformerConfig from a transformers config.json dict (v4 or v5 layout); `overrides` replace fields
  (e.g. compute_dtype). Raises ConfigError naming a missing or unsupported field."""
  hf = dict(hf)
  model_type = hf.get("model_type")
  if model_type is None:
    raise ConfigError("config.json lacks 'model_type'; expected one of " + repr(MODEL_TYPES))
  if model_type not in MODEL_TYPES:
    raise ConfigError(f"config.json model_type={model_type!r} is not supported: expected one of {MODEL_TYPES}")
  missing = [k for k in _HF_REQUIRED if hf.get(k) is None]
  if missing:
    raise ConfigError(f"config.json ({model_type}) lacks required field(s) {missing}")
  defaults = _HF_DEFAULTS[model_type]

  def get(key):
    value = hf.get(key)
    return defaults.get(key) if value is None else value

  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ConfigError(f"config.json hidden_act={act!r} is not supported: expected 'silu' (SwiGLU)")
  if model_type == "qwen2":
    window = hf.get("sliding_window", 4096)
    if hf.get("use_sliding_window") and window is not None and hf.get("max_window_layers", 28) < hf["num_hidden_layers"]:
      raise ConfigError("config.json use_sliding_window=true with max_window_layers < num_hidden_layers: "
                        "sliding-window attention is not supported")
  layer_types = hf.get("layer_types")
  if layer_types and any(t != "full_attention" for t in layer_types):
    raise ConfigError(f"config.json layer_types={layer_types!r}: only 'full_attention' layers are supported")

  # RoPE: v5 keeps everything in rope_parameters; v4 has rope_theta + rope_scaling.
  rope = hf.get("rope_parameters") or hf.get("rope_scaling")
  rope = dict(rope) if rope else None
  rope_theta = hf.get("rope_theta")
  if rope is not None and rope.get("rope_theta") is not None:
    rope_theta = rope["rope_theta"]
  if rope is not None and isinstance(next(iter(rope.values()), None), Mapping):
    raise ConfigError("config.json rope_parameters is nested by layer type; only one RoPE for all layers is "
                      "supported")
  if hf.get("partial_rotary_factor", 1.0) not in (None, 1.0):
    raise ConfigError(f"config.json partial_rotary_factor={hf['partial_rotary_factor']!r}: only 1.0 is supported")

  fields = dict(
      model_type=model_type,
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
      num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=hf["num_attention_heads"],
      num_key_value_heads=get("num_key_value_heads"), head_dim=hf.get("head_dim"),
      rope_theta=rope_theta if rope_theta is not None else defaults["rope_theta"], rope_scaling=rope,
      rms_norm_eps=get("rms_norm_eps"), tie_word_embeddings=bool(get("tie_word_embeddings")),
      max_position_embeddings=get("max_position_embeddings"), initializer_range=get("initializer_range"))
  if model_type == "llama":
    bias = bool(get("attention_bias"))
    fields.update(attention_bias=bias, attention_out_bias=bias, mlp_bias=bool(get("mlp_bias")))
  else:
    fields.update(attention_bias=True, attention_out_bias=False, mlp_bias=False)
  fields.update(overrides)
  return TransformerConfig(**fields)
