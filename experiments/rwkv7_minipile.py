"""RWKV-LM's MiniPile demo (RWKV-v7/train_temp/demo-training-run.sh), field by field.

RWKV-LM: --my_testing x070 --n_layer 12 --n_embd 768 --ctx_len 512 --micro_bsz 16 --lr_init 6e-4
--lr_final 6e-5 --warmup_steps 10 --beta1 0.9 --beta2 0.99 --adam_eps 1e-18 --weight_decay 0.001
--my_exit_tokens 1498226207 --magic_prime 2926181 --epoch_save 10 --vocab_size 65536 --head_size 64
--precision bf16 --grad_cp 1 (one GPU), on data/minipile.bin/.idx (the World-tokenised MiniPile binidx).

  python -m launch.train --config config:minipile --config "set:data.data_file='data/minipile'" \\
      --workdir out/L12-D768-x070
"""

from __future__ import annotations

import fiddle as fdl

from experiments.base import pretrain
from rwkvjax.config.train import TrainConfig


def minipile() -> fdl.Config[TrainConfig]:
  cfg = pretrain(n_layer=12, n_embd=768, ctx_len=512, micro_bsz=16, my_exit_tokens=1498226207)
  cfg.data.data_file = "data/minipile"
  cfg.data.magic_prime = 2926181
  cfg.world_size = 1                    # one GPU: real_bsz = 16, 2520 steps per mini-epoch
  cfg.epoch_save = 10
  cfg.save_every_steps = 2520           # an orbax checkpoint every mini-epoch
  cfg.remat = "block"                   # --grad_cp 1
  return cfg
