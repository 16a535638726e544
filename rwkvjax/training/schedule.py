"""RWKV-LM's learning-rate schedule (train_temp trainer.py): cosine over tokens from lr_init to lr_final,
ending at my_exit_tokens, with a linear warmup factor (0.01 + 0.99 * step / warmup_steps) on top."""

from __future__ import annotations

import math

import jax.numpy as jnp

from rwkvjax.config.train import OptimConfig


def learning_rate(step, optim: OptimConfig, tokens_per_step: int, my_exit_tokens: int):
  """The learning rate at optimizer step `step` (an int or a traced int scalar), float32."""
  step = jnp.asarray(step, jnp.float32)
  warmup_tokens = float(optim.warmup_steps * tokens_per_step)  # Python floats: token counts exceed int32
  progress = (step * float(tokens_per_step) - warmup_tokens) / max(float(my_exit_tokens) - warmup_tokens, 1.0)
  progress = jnp.clip(progress, 0.0, 1.0)
  final_factor = optim.lr_final / optim.lr_init
  lr = optim.lr_init * ((0.5 + final_factor / 2) + (0.5 - final_factor / 2) * jnp.cos(math.pi * progress))
  if optim.warmup_steps > 0:
    lr = jnp.where(step < optim.warmup_steps, lr * (0.01 + 0.99 * step / optim.warmup_steps), lr)
  return lr
