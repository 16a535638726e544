"""RWKV-LM `.pth` state dicts <-> rwkvjax parameter trees, driven by the model's ParamSpec table.

Widths, LoRA ranks and the layer count are read from the checkpoint. Conversion is exact both ways:
values are only reshaped and stacked (and cast when a dtype is asked for).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from rwkvjax.config.model import ModelConfig
from rwkvjax.convert.torch_zip import load_state_dict, save_state_dict
from rwkvjax.models import get_model
from rwkvjax.models.params import ParamSpec, flatten, unflatten

PTH_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}
# Keys a checkpoint may lack (filled with zeros), per version. x070: present in RWKV-LM's block 0 but unused
# there (v_first is the block-0 value); fla's conversions omit them.
_OPTIONAL_KEYS = {"x070": ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}


class CheckpointError(ValueError):
  """A state dict that does not fit the model: names the key and what was expected."""


def detect_version(keys) -> str:
  """RWKV-LM version tag from state-dict keys: x070 (RWKV-7), x060 (RWKV-6), x052 (RWKV-5.2)."""
  keys = set(keys)
  if "blocks.0.att.r_k" in keys or "blocks.0.att.x_r" in keys:
    return "x070"
  if "blocks.0.att.time_maa_x" in keys:
    return "x060"
  if "blocks.0.att.time_mix_k" in keys and "blocks.0.att.ln_x.weight" in keys:
    return "x052"
  raise CheckpointError("cannot tell the RWKV version from the keys: expected blocks.0.att.r_k (x070), "
                        "blocks.0.att.time_maa_x (x060) or blocks.0.att.time_mix_k + ln_x (x052)")


def _shape(sd, key) -> tuple[int, ...]:
  if key not in sd:
    raise CheckpointError(f"missing key {key!r}, needed to infer the model shape")
  return tuple(sd[key].shape)


def _n_layer(sd) -> int:
  blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
  if not blocks or blocks != set(range(max(blocks) + 1)):
    raise CheckpointError(f"block indices {sorted(blocks)} are not 0..L-1")
  return max(blocks) + 1


def _config_x070(sd) -> dict[str, Any]:
  V, C = _shape(sd, "emb.weight")
  H, N = _shape(sd, "blocks.0.att.r_k")
  if H * N != C:
    raise CheckpointError(f"blocks.0.att.r_k has shape {(H, N)}: H*N={H * N} does not match n_embd={C} "
                          "from emb.weight")
  return dict(
      n_embd=C, vocab_size=V, head_size=N, dim_ffn=_shape(sd, "blocks.0.ffn.key.weight")[0],
      d_decay_lora=_shape(sd, "blocks.0.att.w1")[1], d_aaa_lora=_shape(sd, "blocks.0.att.a1")[1],
      d_mv_lora=next((sd[k].shape[1] for k in ("blocks.0.att.v1", "blocks.1.att.v1") if k in sd), None),
      d_gate_lora=_shape(sd, "blocks.0.att.g1")[1])


def _config_x052(sd) -> dict[str, Any]:
  V, C = _shape(sd, "emb.weight")
  H, N = _shape(sd, "blocks.0.att.time_faaaa")
  if H * N != C:
    raise CheckpointError(f"blocks.0.att.time_faaaa has shape {(H, N)}: H*N={H * N} does not match n_embd={C} "
                          "from emb.weight")
  return dict(n_embd=C, vocab_size=V, head_size=N, dim_ffn=_shape(sd, "blocks.0.ffn.key.weight")[0])


def _config_x060(sd) -> dict[str, Any]:
  fields = _config_x052(sd)
  mix = _shape(sd, "blocks.0.att.time_maa_w2")
  if len(mix) != 3 or mix[0] != 5:
    raise CheckpointError(f"blocks.0.att.time_maa_w2 has shape {mix}; expected (5, D_mix, C)")
  return dict(fields, d_mix_lora=mix[1], d_decay_lora=_shape(sd, "blocks.0.att.time_decay_w1")[1])


# version -> reader of the ModelConfig fields (other than version and n_layer) from a state dict
_CONFIG_READERS = {"x070": _config_x070, "x060": _config_x060, "x052": _config_x052}


def config_from_state_dict(sd: Mapping[str, np.ndarray], **overrides) -> ModelConfig:
  """Infers the ModelConfig (version, layers, widths, head size, LoRA ranks, vocab) from a state dict."""
  version = detect_version(sd)
  if version not in _CONFIG_READERS:
    raise CheckpointError(f"checkpoint is RWKV {version}; this build reads {sorted(_CONFIG_READERS)}")
  try:
    fields = dict(version=version, n_layer=_n_layer(sd), **_CONFIG_READERS[version](sd))
  except CheckpointError as e:
    raise CheckpointError(f"RWKV {version} checkpoint (detected from the keys): {e}") from None
  fields.update(overrides)
  return ModelConfig(**fields)


def _expected_keys(specs: list[ParamSpec], n_layer: int) -> dict[str, tuple[int, ...]]:
  out = {}
  for s in specs:
    for l in (range(n_layer) if s.stacked else [None]):
      out[s.pth_key.format(l=l)] = s.pth_shape
  return out


def params_from_state_dict(sd: Mapping[str, np.ndarray], cfg: ModelConfig | None = None,
                           dtype=np.float32) -> tuple[dict[str, Any], ModelConfig]:
  """Converts an RWKV-LM state dict to (params, cfg). Params are numpy arrays of `dtype` (float32 keeps
  bf16/fp16 checkpoints exact). Raises CheckpointError naming missing, unexpected or mis-shaped keys."""
  cfg = cfg or config_from_state_dict(sd)
  specs = get_model(cfg.version).param_specs(cfg)
  expected = _expected_keys(specs, cfg.n_layer)
  optional = _OPTIONAL_KEYS.get(cfg.version, ())
  missing = [k for k in expected if k not in sd and k not in optional]
  if missing:
    k = missing[0]
    raise CheckpointError(f"missing key {k!r} (expected shape {expected[k]}); {len(missing)} missing in all")
  unexpected = [k for k in sd if k not in expected]
  if unexpected:
    raise CheckpointError(f"unexpected key {unexpected[0]!r} with shape {tuple(sd[unexpected[0]].shape)}; "
                          f"{len(unexpected)} unexpected in all (model: {cfg})")
  for k, shape in expected.items():
    if k in sd and tuple(sd[k].shape) != shape:
      raise CheckpointError(f"key {k!r} has shape {tuple(sd[k].shape)}; expected {shape}")
  flat = {}
  for s in specs:
    if s.stacked:
      per_layer = [np.asarray(sd[key], dtype).reshape(s.shape) if (key := s.pth_key.format(l=l)) in sd
                   else np.zeros(s.shape, dtype) for l in range(cfg.n_layer)]
      flat[s.name] = np.stack(per_layer)
    else:
      flat[s.name] = np.asarray(sd[s.pth_key], dtype).reshape(s.shape)
  return unflatten(flat), cfg


def state_dict_from_params(params: Mapping[str, Any], cfg: ModelConfig, dtype: str = "bfloat16"
                           ) -> dict[str, np.ndarray]:
  """Converts params to an RWKV-LM state dict in RWKV-LM's key order and shapes, cast to `dtype`
  ("bfloat16" like RWKV-LM's --precision bf16 checkpoints, "float32" or "float16")."""
  if dtype not in PTH_DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected one of {sorted(PTH_DTYPES)}")
  np_dtype = PTH_DTYPES[dtype]
  flat = {k: np.asarray(v) for k, v in flatten(dict(params)).items()}
  specs = get_model(cfg.version).param_specs(cfg)
  for s in specs:
    if s.name not in flat:
      raise CheckpointError(f"params lack {s.name!r}")
    if flat[s.name].shape != s.full_shape(cfg.n_layer):
      raise CheckpointError(f"params {s.name!r} has shape {flat[s.name].shape}; expected {s.full_shape(cfg.n_layer)}")

  def emit(s, l=None):
    value = flat[s.name][l] if s.stacked else flat[s.name]
    return s.pth_key.format(l=l), value.astype(np.float32).astype(np_dtype).reshape(s.pth_shape)

  first_block = next(i for i, s in enumerate(specs) if s.stacked or s.pth_key.startswith("blocks."))
  last_block = max(i for i, s in enumerate(specs) if s.stacked or s.pth_key.startswith("blocks."))
  out = dict(emit(s) for s in specs[:first_block])
  for l in range(cfg.n_layer):
    for s in specs[first_block:last_block + 1]:
      if s.stacked:
        out.update([emit(s, l)])
      elif s.pth_key.startswith(f"blocks.{l}."):
        out.update([emit(s)])
  out.update(emit(s) for s in specs[last_block + 1:])
  return out


def load_pth(path: str | os.PathLike, dtype=np.float32) -> tuple[dict[str, Any], ModelConfig]:
  """Loads an RWKV-LM `.pth` checkpoint (fp32, bf16 or fp16) as (params, cfg) without torch."""
  try:
    return params_from_state_dict(load_state_dict(path), dtype=dtype)
  except CheckpointError as e:
    raise CheckpointError(f"{os.fspath(path)}: {e}") from None


def save_pth(params: Mapping[str, Any], cfg: ModelConfig, path: str | os.PathLike, dtype: str = "bfloat16") -> None:
  """Writes params as an RWKV-LM `.pth` (atomic), loadable by RWKV-LM and the `rwkv` package."""
  save_state_dict(state_dict_from_params(params, cfg, dtype), path)
