"""One entry point for model files of every family: RWKV-LM `.pth` files and HF model directories."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.convert.hf import load_hf, save_hf
from rwkvjax.convert.rwkv_pth import load_pth, save_pth


def is_hf_dir(path: str | os.PathLike) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def load_model_file(path: str | os.PathLike, dtype=np.float32) -> tuple[dict[str, Any], Any]:
  """(params, cfg) from an RWKV-LM `.pth` or an HF model directory (config.json + safetensors)."""
  if is_hf_dir(path):
    return load_hf(path, dtype=dtype)
  return load_pth(path, dtype=dtype)


def export_model(params: Any, cfg: Any, workdir: str, tag: str, dtype: str = "bfloat16") -> str:
  """Writes the model in its family's format: RWKV -> `workdir/rwkv-{tag}.pth` (RWKV-LM's names);
  transformers -> the HF directory `workdir/hf-{tag}`. Returns the path."""
  if isinstance(cfg, TransformerConfig):
    path = os.path.join(workdir, f"hf-{tag}")
    save_hf(params, cfg, path, dtype=dtype)
  elif isinstance(cfg, ModelConfig):
    path = os.path.join(workdir, f"rwkv-{tag}.pth")
    save_pth(params, cfg, path, dtype=dtype)
  else:
    raise TypeError(f"export_model: unknown model config type {type(cfg).__name__}")
  return path
