"""Student files.

`WORKDIR/student-{tag}/`: config.json + model.safetensors with ARWKV's HF names (`modeling_arwkv` / OpenMOSE's
converters): the kept Qwen2 tensors under their HF keys, each replaced layer's time mixer under
`model.layers.{l}.self_attn.time_mixer.<RWKV-LM name>` (mixing vectors [1, 1, C] as RWKV-LM stores them).
config.json carries the Qwen2 fields, ARWKV's (`wkv_version`, `wkv_has_gate`, `wkv_has_group_norm`,
`head_size`, ...) and, under "rwkvjax_student", everything `load_student` needs to rebuild the StudentConfig.

`WORKDIR/student-{tag}.pth`: the same tensors under RWKV `.pth` names (the mapping of RWKVInside's
`convert_pt_and_hf`): emb.weight, blocks.{l}.ln1/ln2.weight, blocks.{l}.att.<time-mixer name>,
blocks.{l}.ffn.{gate,up,down}.weight, ln_out.weight, head.weight (and blocks.{l}.att.{q,k,v,o}_proj.* for
layers that keep attention). A torch.save zip archive written without torch.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from rwkvjax.config.transformer import from_hf_config
from rwkvjax.convert.hf import (CONFIG_FILE, EXPORT_DTYPES, SINGLE_FILE, CheckpointError, is_hf_model_dir,
                                read_safetensors, write_safetensors)
from rwkvjax.convert.torch_zip import save_state_dict
from rwkvjax.distill import student as st
from rwkvjax.fileio import atomic_write
from rwkvjax.models.params import ParamSpec, flatten, unflatten

CONFIG_KEY = "rwkvjax_student"
# HF key -> RWKV .pth key (ordered substring replacements, as in RWKVInside's converters).
PTH_NAMES = (("model.embed_tokens.", "emb."), ("model.layers.", "blocks."), ("self_attn.time_mixer.", "att."),
             ("self_attn.", "att."), ("input_layernorm.", "ln1."), ("post_attention_layernorm.", "ln2."),
             ("mlp.gate_proj.", "ffn.gate."), ("mlp.up_proj.", "ffn.up."), ("mlp.down_proj.", "ffn.down."),
             ("model.norm.", "ln_out."), ("lm_head.", "head."))


def _layer_ids(spec: ParamSpec, cfg: st.StudentConfig) -> tuple[int, ...] | None:
  """The layer index of each slice of a stacked spec (None: not stacked)."""
  if not spec.axes or spec.axes[0] != "layers":
    return None
  if spec.name.startswith(st.TIME_MIXER):
    return cfg.layers
  if spec.name.startswith("model.layers.self_attn."):
    return cfg.attention_layers
  return tuple(range(cfg.n_layer))


def state_dict(params: Mapping[str, Any], cfg: st.StudentConfig, dtype: str = "bfloat16") -> dict[str, np.ndarray]:
  """Student params -> {HF key: array} in HF order (embedding, layer by layer, final norm, head)."""
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected one of {sorted(EXPORT_DTYPES)}")
  flat = flatten(dict(params))
  specs = st.param_specs(cfg)
  for s in specs:
    if s.name not in flat:
      raise CheckpointError(f"student params lack {s.name!r} (expected shape {list(s.shape)})")
    if tuple(np.shape(flat[s.name])) != s.shape:
      raise CheckpointError(f"student params {s.name!r} have shape {list(np.shape(flat[s.name]))}; expected "
                            f"{list(s.shape)}")
  extra = sorted(set(flat) - {s.name for s in specs})
  if extra:
    raise CheckpointError(f"student params have {extra[0]!r}, which the student {cfg} does not use")
  cast = lambda a, shape: np.asarray(a, np.float32).astype(EXPORT_DTYPES[dtype]).reshape(shape)
  head, per_layer, tail = {}, {l: {} for l in range(cfg.n_layer)}, {}
  for s in specs:
    ids = _layer_ids(s, cfg)
    value = np.asarray(flat[s.name])
    if ids is None:
      (head if s.name.startswith("model.embed") else tail)[s.pth_key] = cast(value, s.pth_shape)
    else:
      for j, l in enumerate(ids):
        per_layer[l][s.pth_key.format(l=l)] = cast(value[j], s.pth_shape)
  out = dict(head)
  for l in range(cfg.n_layer):
    out.update(per_layer[l])
  out.update(tail)
  return out


def params_from_state_dict(sd: Mapping[str, np.ndarray], cfg: st.StudentConfig, dtype=np.float32) -> dict[str, Any]:
  """{HF key: array} -> student params (numpy, `dtype`); errors name the missing / unexpected / mis-shaped key."""
  specs = st.param_specs(cfg)
  flat, used = {}, set()
  for s in specs:
    ids = _layer_ids(s, cfg)
    keys = [s.pth_key] if ids is None else [s.pth_key.format(l=l) for l in ids]
    parts = []
    for k in keys:
      if k not in sd:
        raise CheckpointError(f"missing tensor {k!r} (expected shape {list(s.pth_shape)})")
      if tuple(sd[k].shape) != s.pth_shape:
        raise CheckpointError(f"tensor {k!r} has shape {list(sd[k].shape)}; expected {list(s.pth_shape)}")
      used.add(k)
      parts.append(np.asarray(sd[k]).astype(dtype))
    per = s.shape if ids is None else s.shape[1:]
    flat[s.name] = parts[0].reshape(per) if ids is None else np.stack([p.reshape(per) for p in parts])
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise CheckpointError(f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all) for the student {cfg}")
  return unflatten(flat)


def student_config_json(cfg: st.StudentConfig, dtype: str) -> dict[str, Any]:
  """config.json of a student directory (Qwen2 fields + ARWKV fields + the exact StudentConfig)."""
  base_hf = cfg.base.to_hf_config()
  own = {f: getattr(cfg, f) for f in ("head_size", "gate", "group_norm", "d_decay_lora", "d_aaa_lora", "d_mv_lora",
                                      "d_gate_lora", "init_mode", "untie_embeddings")}
  own.update(rwkv_layers=list(cfg.layers), base=base_hf, compute_dtype=cfg.compute_dtype)
  out = dict(base_hf)
  out.update(architectures=["RwkvHybridForCausalLM"], model_type="rwkv_hybrid", tie_word_embeddings=cfg.tied,
             head_size=cfg.head_size, head_size_divisor=8, wkv_version=7, wkv_has_gate=cfg.gate != "none",
             wkv_has_group_norm=cfg.group_norm, rwkv_layers=list(cfg.layers), torch_dtype=dtype)
  out[CONFIG_KEY] = own
  return out


def config_from_json(config: Mapping[str, Any], compute_dtype: str | None = None) -> st.StudentConfig:
  """StudentConfig from a student config.json dict (compute_dtype: override the recorded one)."""
  if CONFIG_KEY not in config:
    raise CheckpointError(f"config.json lacks {CONFIG_KEY!r}: not a student exported by rwkvjax.distill")
  own = dict(config[CONFIG_KEY])
  base = from_hf_config(own.pop("base"), compute_dtype=compute_dtype or own.pop("compute_dtype", "float32"))
  own.pop("compute_dtype", None)
  own["rwkv_layers"] = tuple(own["rwkv_layers"])
  return st.StudentConfig(base=base, **own)


def read_student_config(path: str | os.PathLike, compute_dtype: str | None = None) -> st.StudentConfig:
  """The StudentConfig of a student directory."""
  with open(os.path.join(path, CONFIG_FILE)) as f:
    return config_from_json(json.load(f), compute_dtype)


def is_student_dir(path: str | os.PathLike) -> bool:
  if not is_hf_model_dir(path):
    return False
  with open(os.path.join(path, CONFIG_FILE)) as f:
    return CONFIG_KEY in json.load(f)


def save_student(params: Mapping[str, Any], cfg: st.StudentConfig, out_dir: str | os.PathLike, *,
                 dtype: str = "bfloat16") -> list[str]:
  """Writes out_dir/model.safetensors and then out_dir/config.json (a half-written export has no config)."""
  out_dir = os.fspath(out_dir)
  sd = state_dict(params, cfg, dtype)
  os.makedirs(out_dir, exist_ok=True)
  if os.path.exists(os.path.join(out_dir, CONFIG_FILE)):
    os.unlink(os.path.join(out_dir, CONFIG_FILE))
  write_safetensors(os.path.join(out_dir, SINGLE_FILE), sd)
  with atomic_write(os.path.join(out_dir, CONFIG_FILE)) as f:
    f.write(json.dumps(student_config_json(cfg, dtype), indent=2, sort_keys=True).encode())
  return [SINGLE_FILE, CONFIG_FILE]


def load_student(path: str | os.PathLike, dtype=np.float32, compute_dtype: str | None = None
                 ) -> tuple[dict[str, Any], st.StudentConfig]:
  """(params, StudentConfig) of a student directory written by `save_student`."""
  path = os.fspath(path)
  try:
    cfg = read_student_config(path, compute_dtype)
    return params_from_state_dict(read_safetensors(os.path.join(path, SINGLE_FILE)), cfg, dtype), cfg
  except (CheckpointError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: {e}") from None


def pth_key(hf_key: str) -> str:
  for old, new in PTH_NAMES:
    hf_key = hf_key.replace(old, new)
  return hf_key


def save_student_pth(params: Mapping[str, Any], cfg: st.StudentConfig, path: str | os.PathLike, *,
                     dtype: str = "bfloat16") -> None:
  """Writes the student as a torch state dict under RWKV `.pth` names (see the module docstring)."""
  save_state_dict({pth_key(k): v for k, v in state_dict(params, cfg, dtype).items()}, path)


def export_student(params: Mapping[str, Any], cfg: st.StudentConfig, workdir: str, tag: str,
                   dtype: str = "bfloat16") -> list[str]:
  """Writes workdir/student-{tag}/ and workdir/student-{tag}.pth; returns both paths."""
  out_dir = os.path.join(workdir, f"student-{tag}")
  save_student(params, cfg, out_dir, dtype=dtype)
  pth = os.path.join(workdir, f"student-{tag}.pth")
  save_student_pth(params, cfg, pth, dtype=dtype)
  return [out_dir, pth]
