"""The main job: a small RWKV-7 trained on the embedded corpus (Python's standard library sources) on a
2-core CPU in under 10 minutes, then text sampled from it with recurrent generation."""

from __future__ import annotations

import fiddle as fdl

from experiments.base import pretrain, with_sample
from rwkvjax.config.train import TrainConfig


def demo() -> fdl.Config[TrainConfig]:
  # The 65536-way softmax dominates a CPU step (~1000 tokens/s on 2 cores), hence a small model and 250k tokens.
  cfg = pretrain(n_layer=4, n_embd=128, ctx_len=128, micro_bsz=8, my_exit_tokens=250_000)
  cfg.model.compute_dtype = "float32"   # CPU: float32 matmuls are the fast ones
  cfg.optim.lr_init = 3e-3
  cfg.optim.lr_final = 3e-4
  cfg.optim.warmup_steps = 20
  cfg.optim.weight_decay = 0.001
  cfg.world_size = 1                    # global batch: 8 rows of 128 tokens
  cfg.epoch_samples = 8 * 50            # a train_log.txt line every 50 steps
  cfg.epoch_save = 0
  cfg.save_every_steps = 50
  cfg.log_every_steps = 10
  cfg.eval_batches = 16
  cfg.remat = "none"
  return with_sample(cfg, prompt="def ", max_new_tokens=120, temperature=0.8, top_p=0.8)
