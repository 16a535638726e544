"""HF transformers checkpoints (Llama / Qwen2) <-> rwkvjax parameter trees, without torch.

A model directory holds `config.json` and either `model.safetensors` or a sharded
`model.safetensors.index.json` (+ the shard files it names). Safetensors files are read and written here
directly (8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
raw little-endian data); bf16 through ml_dtypes. Reads are memory-mapped, so a big teacher's tensors are read
when they are converted, one at a time.

Conversion is driven by the model's ParamSpec table (`rwkvjax.models.transformer.param_specs`): per-layer
tensors `model.layers.{i}.<name>` are stacked into `model.layers.<name>`, and the attention projections are
reshaped between HF's [out, in] matrices and the per-head layout. Values are never changed (only cast when a
dtype is asked for), so import and export are exact.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from rwkvjax.config.transformer import ConfigError, TransformerConfig, from_hf_config
from rwkvjax.fileio import atomic_write
from rwkvjax.models import transformer
from rwkvjax.models.params import ParamSpec, flatten, unflatten

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tags <-> numpy dtypes (little-endian)
_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_ST_TAGS = {v: k for k, v in _ST_DTYPES.items()}
EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                 "float16": np.dtype(np.float16)}
# Keys some HF checkpoints carry that are not parameters (old Llama checkpoints saved the RoPE buffer).
_IGNORED_KEY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$|^model\.rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
  """A checkpoint that does not fit the model: names the file or tensor and what was expected."""


# ----------------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------------

def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: array} of a .safetensors file; arrays are read-only views of a memory map of the file."""
  path = os.fspath(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise CheckpointError(f"{path}: too short to be a safetensors file")
    n = int.from_bytes(raw, "little")
    if n > size - 8:
      raise CheckpointError(f"{path}: header length {n} exceeds the file size {size}")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise CheckpointError(f"{path}: the safetensors header is not JSON ({e})") from None
  header.pop("__metadata__", None)
  data_start, data_size = 8 + n, size - 8 - n
  mm = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,)) if data_size else None
  out = {}
  for name, info in header.items():
    tag, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
    if tag not in _ST_DTYPES:
      raise CheckpointError(f"{path}: tensor {name!r} has dtype {tag}; supported: {sorted(_ST_DTYPES)}")
    dtype = _ST_DTYPES[tag]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
      raise CheckpointError(f"{path}: tensor {name!r} ({tag} {list(shape)}) has data_offsets {[begin, end]} "
                            f"that do not hold {nbytes} bytes inside the {data_size}-byte data section")
    out[name] = (np.ndarray(shape, dtype, buffer=mm, offset=begin) if nbytes else np.zeros(shape, dtype))
  return out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes {name: array} as a .safetensors file (atomically), tensors in the given order."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset, arrays = 0, []
  for name, value in tensors.items():
    arr = np.asarray(value)
    arr = np.ascontiguousarray(arr).reshape(arr.shape)  # (ascontiguousarray makes 0-d arrays 1-d)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype not in _ST_TAGS:
      raise ValueError(f"write_safetensors: tensor {name!r} has dtype {arr.dtype}; supported: "
                       f"{sorted(str(d) for d in _ST_TAGS)}")
    arr = arr.astype(dtype, copy=False)
    header[name] = {"dtype": _ST_TAGS[dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes, as the reference writer does
  with atomic_write(path) as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for arr in arrays:
      f.write(arr.tobytes())


# ----------------------------------------------------------------------------------------------------
# Model directories
# ----------------------------------------------------------------------------------------------------

def is_hf_model_dir(path: str | os.PathLike) -> bool:
  """A directory with a config.json (how the tools tell an HF model from an RWKV .pth)."""
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_hf_config(model_dir: str | os.PathLike) -> dict[str, Any]:
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{os.fspath(model_dir)}: no {CONFIG_FILE}")
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_hf_state_dict(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors` or of the shards named by `model.safetensors.index.json`."""
  model_dir = os.fspath(model_dir)
  index_path, single_path = os.path.join(model_dir, INDEX_FILE), os.path.join(model_dir, SINGLE_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (ValueError, KeyError) as e:
        raise CheckpointError(f"{index_path}: expected JSON with a 'weight_map' ({e!r})") from None
    sd: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(model_dir, shard)
      if not os.path.isfile(shard_path):
        raise CheckpointError(f"{index_path} names shard {shard!r}, which does not exist")
      tensors = read_safetensors(shard_path)
      for name in tensors:
        if weight_map.get(name) == shard:
          sd[name] = tensors[name]
    absent = [k for k, shard in weight_map.items() if k not in sd]
    if absent:
      raise CheckpointError(f"{index_path}: tensor {absent[0]!r} is mapped to {weight_map[absent[0]]!r} but is "
                            f"not in that file ({len(absent)} such tensors)")
    return sd
  if os.path.isfile(single_path):
    return read_safetensors(single_path)
  others = sorted(f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth", ".safetensors")))
  raise CheckpointError(f"{model_dir}: neither {SINGLE_FILE} nor {INDEX_FILE}"
                        + (f" (found {others}; only safetensors are read)" if others else ""))


def _expected(specs: list[ParamSpec], n_layer: int) -> dict[str, tuple[ParamSpec, int | None]]:
  out = {}
  for s in specs:
    for l in (range(n_layer) if s.stacked else [None]):
      out[s.pth_key.format(l=l)] = (s, l)
  return out


def params_from_hf_state_dict(sd: Mapping[str, np.ndarray], cfg: TransformerConfig, dtype=np.float32
                              ) -> dict[str, Any]:
  """HF state dict -> params (numpy arrays of `dtype`; float32 keeps bf16/fp16 files exact). Raises
  CheckpointError naming the first missing, unexpected or mis-shaped tensor and the expected shape."""
  specs = transformer.param_specs(cfg)
  expected = _expected(specs, cfg.num_hidden_layers)
  missing = [k for k in expected if k not in sd]
  if missing:
    k = missing[0]
    raise CheckpointError(f"missing tensor {k!r} (expected shape {list(expected[k][0].pth_shape)}); "
                          f"{len(missing)} missing in all (model: {cfg})")
  unexpected = [k for k in sd if k not in expected and not _IGNORED_KEY.match(k)
                and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
  if unexpected:
    k = unexpected[0]
    raise CheckpointError(f"unexpected tensor {k!r} with shape {list(sd[k].shape)}; {len(unexpected)} unexpected "
                          f"in all (model: {cfg})")
  for k, (s, _) in expected.items():
    if tuple(sd[k].shape) != s.pth_shape:
      raise CheckpointError(f"tensor {k!r} has shape {list(sd[k].shape)}; expected {list(s.pth_shape)} (model: {cfg})")
    if not np.issubdtype(sd[k].dtype, np.floating) and sd[k].dtype != ml_dtypes.bfloat16:
      raise CheckpointError(f"tensor {k!r} has dtype {sd[k].dtype}; expected a float dtype")
  flat = {}
  for s in specs:
    if s.stacked:
      out = np.empty(s.full_shape(cfg.num_hidden_layers), dtype)
      for l in range(cfg.num_hidden_layers):
        out[l] = np.asarray(sd[s.pth_key.format(l=l)]).astype(dtype).reshape(s.shape)
      flat[s.name] = out
    else:
      flat[s.name] = np.asarray(sd[s.pth_key]).astype(dtype).reshape(s.shape)
  return unflatten(flat)


def hf_state_dict_from_params(params: Mapping[str, Any], cfg: TransformerConfig, dtype: str = "bfloat16"
                              ) -> dict[str, np.ndarray]:
  """params -> HF state dict in HF's key order and shapes, cast to dtype ("bfloat16", "float32", "float16").
  Tied models have no lm_head.weight (as transformers saves them)."""
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected one of {sorted(EXPORT_DTYPES)}")
  np_dtype = EXPORT_DTYPES[dtype]
  flat = flatten(dict(params))
  specs = transformer.param_specs(cfg)
  for s in specs:
    if s.name not in flat:
      raise CheckpointError(f"params lack {s.name!r} (expected shape {list(s.full_shape(cfg.n_layer))})")
    if tuple(flat[s.name].shape) != s.full_shape(cfg.n_layer):
      raise CheckpointError(f"params {s.name!r} has shape {list(flat[s.name].shape)}; expected "
                            f"{list(s.full_shape(cfg.n_layer))}")
  extra = sorted(set(flat) - {s.name for s in specs})
  if extra:
    raise CheckpointError(f"params have {extra[0]!r}, which the model {cfg} does not use")

  def emit(s, l=None):
    value = np.asarray(flat[s.name][l] if s.stacked else flat[s.name])
    return s.pth_key.format(l=l), value.astype(np.float32).astype(np_dtype).reshape(s.pth_shape)

  stacked = [s for s in specs if s.stacked]
  out = dict(emit(s) for s in specs if not s.stacked and s.name.startswith("model.embed"))
  for l in range(cfg.num_hidden_layers):
    out.update(emit(s, l) for s in stacked)
  out.update(emit(s) for s in specs if not s.stacked and not s.name.startswith("model.embed"))
  return out


def load_hf(model_dir: str | os.PathLike, dtype=np.float32, **config_overrides
            ) -> tuple[dict[str, Any], TransformerConfig]:
  """Loads an HF Llama / Qwen2 model directory as (params, cfg); params are numpy arrays of `dtype` (pass
  ml_dtypes.bfloat16 to halve the memory of a frozen teacher). `config_overrides` replace config fields
  (e.g. compute_dtype="bfloat16")."""
  model_dir = os.fspath(model_dir)
  try:
    cfg = from_hf_config(read_hf_config(model_dir), **config_overrides)
    return params_from_hf_state_dict(load_hf_state_dict(model_dir), cfg, dtype), cfg
  except (CheckpointError, ConfigError) as e:
    raise type(e)(f"{model_dir}: {e}") from None


def save_hf(params: Mapping[str, Any], cfg: TransformerConfig, out_dir: str | os.PathLike, *,
            dtype: str = "bfloat16", max_shard_size: int | None = None) -> list[str]:
  """Writes an HF model directory (config.json + model.safetensors, or shards of at most `max_shard_size`
  bytes + model.safetensors.index.json) that transformers' `from_pretrained` loads. Each file is written
  atomically and config.json last, so a failed export never looks like a model. Returns the file names."""
  out_dir = os.fspath(out_dir)
  sd = hf_state_dict_from_params(params, cfg, dtype)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for stale in (CONFIG_FILE, SINGLE_FILE, INDEX_FILE):  # config.json first: a half-written export is no model
    if os.path.exists(os.path.join(out_dir, stale)):
      os.unlink(os.path.join(out_dir, stale))
  if max_shard_size is None:
    write_safetensors(os.path.join(out_dir, SINGLE_FILE), sd)
    written.append(SINGLE_FILE)
  else:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in sd.items():
      if shards[-1] and size + value.nbytes > max_shard_size:
        shards.append({})
        size = 0
      shards[-1][name] = value
      size += value.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      write_safetensors(os.path.join(out_dir, fname), shard)
      weight_map.update({name: fname for name in shard})
      written.append(fname)
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in sd.values()))}, "weight_map": weight_map}
    with atomic_write(os.path.join(out_dir, INDEX_FILE)) as f:
      f.write(json.dumps(index, indent=2).encode())
    written.append(INDEX_FILE)
  hf_config = {**cfg.to_hf_config(), "torch_dtype": dtype}
  with atomic_write(os.path.join(out_dir, CONFIG_FILE)) as f:
    f.write(json.dumps(hf_config, indent=2, sort_keys=True).encode())
  written.append(CONFIG_FILE)
  return written
