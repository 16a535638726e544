"""Base experiment configs: Fiddle Configs of TrainConfig that experiments specialise."""

from __future__ import annotations

import fiddle as fdl

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.train import DataConfig, MeshConfig, OptimConfig, SampleConfig, TrainConfig


def pretrain(*, version: str = "x070", n_layer: int = 12, n_embd: int = 768, vocab_size: int = 65536,
             ctx_len: int = 512, micro_bsz: int = 16, my_exit_tokens: int = 1_000_000_000) -> fdl.Config[TrainConfig]:
  """An RWKV pretraining run with RWKV-LM train_temp's defaults (optimizer, schedule, sampler)."""
  return fdl.Config(
      TrainConfig,
      model=fdl.Config(ModelConfig, version=version, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size,
                       head_size=64, compute_dtype="bfloat16"),
      data=fdl.Config(DataConfig, sampler="magic_prime"),
      optim=fdl.Config(OptimConfig),
      mesh=fdl.Config(MeshConfig),
      ctx_len=ctx_len, micro_bsz=micro_bsz, my_exit_tokens=my_exit_tokens)


def with_sample(cfg: fdl.Config[TrainConfig], prompt: str = "\n", max_new_tokens: int = 200,
                temperature: float = 1.0, top_p: float = 0.85) -> fdl.Config[TrainConfig]:
  """Fiddler: sample text from the final model."""
  cfg.sample = fdl.Config(SampleConfig, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p)
  return cfg
