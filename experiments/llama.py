"""Llama pretraining baselines (the GoldFinch paper trains Llama beside Finch): the same trainer, data, metrics and
commands as the RWKV runs, with a `TransformerConfig` as the model.

  python -m launch.train --config config:llama_demo --workdir out/llama_demo                  # the demo corpus, CPU
  python -m launch.train --config config:llama_pretrain --config set:model.num_hidden_layers=24 \
      --config "set:data.data_file='data/minipile'" --workdir out/llama-L24
"""

from __future__ import annotations

import math

import fiddle as fdl

from experiments.base import pretrain
from experiments.demo import demo
from rwkvjax.config.train import TrainConfig
from rwkvjax.config.transformer import TransformerConfig


def _llama(n_layer: int, n_embd: int, vocab_size: int, ctx_len: int, compute_dtype: str) -> fdl.Config:
  """A Llama decoder of RWKV-style width: heads of 64, SwiGLU width 8/3 C rounded up to a multiple of 64 (as
  Llama's), untied embeddings, RoPE base 10000."""
  return fdl.Config(TransformerConfig, model_type="llama", vocab_size=vocab_size, hidden_size=n_embd,
                    intermediate_size=math.ceil(8 * n_embd / 3 / 64) * 64, num_hidden_layers=n_layer,
                    num_attention_heads=n_embd // 64, max_position_embeddings=ctx_len, compute_dtype=compute_dtype)


def llama_pretrain(*, n_layer: int = 12, n_embd: int = 768, vocab_size: int = 65536, ctx_len: int = 512,
                   micro_bsz: int = 16, my_exit_tokens: int = 1_000_000_000) -> fdl.Config[TrainConfig]:
  """`pretrain` with a Llama model of the same depth and width as the RWKV default (L12-D768), set up for GPU speed:
  the layers unrolled (`scan_layers=False`) and matmul, attention, RoPE and SwiGLU outputs kept for the backward
  (`remat="block_save_dots"`). With both, a 1.3B Llama trains at 53.4% MFU on one H100 (16 x 2048 rows,
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95; docs/benchmarks.md)."""
  cfg = pretrain(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, ctx_len=ctx_len, micro_bsz=micro_bsz,
                 my_exit_tokens=my_exit_tokens)
  cfg.model = _llama(n_layer, n_embd, vocab_size, ctx_len, "bfloat16")
  cfg.remat = "block_save_dots"
  cfg.scan_layers = False
  return cfg


def llama_demo() -> fdl.Config[TrainConfig]:
  """The README's demo run (`config:demo`: embedded corpus, schedule, sampling) with a Llama of the demo's size
  (L4-D128, float32 on CPU) in place of the RWKV-7."""
  cfg = demo()
  cfg.model = _llama(cfg.model.n_layer, cfg.model.n_embd, cfg.model.vocab_size, cfg.ctx_len, "float32")
  return cfg


__all__ = ["llama_pretrain", "llama_demo"]
