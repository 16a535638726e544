"""RWKV models as pure functions, one module per version, looked up by RWKV-LM's version tag.

Each model module provides: param_specs(cfg), init(cfg, key), init_state(cfg, batch),
forward(params, cfg, tokens, state=None, *, segment_ids=None, impl) -> (logits, state) (the RWKV versions also
take reset_state=None: the WKV state packed documents restart from),
step(params, cfg, token, state, *, impl) -> (logits, state), forward_flops_per_token(cfg, seq_len), and (RWKV)
official_state(state, index) -> the state of batch row `index` as the official `rwkv` package lays it out.
The transformer family (Llama, Qwen2) is registered under its HF model_type.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rwkvjax.models import rwkv5, rwkv6, rwkv7, transformer

_MODELS: dict[str, ModuleType] = {"x070": rwkv7, "llama": transformer, "qwen2": transformer}
_MODELS.update({"x060": rwkv6, "x052": rwkv5})
_MODELS["arwkv7"] = importlib.import_module("rwkvjax.distill.student")  # the ARWKV distillation student


def get_model(version: str) -> ModuleType:
  """The model module for an RWKV-LM version tag ("x070", ...)."""
  try:
    return _MODELS[version]
  except KeyError:
    raise ValueError(f"model version {version!r}: expected one of {sorted(_MODELS)}") from None
