"""Write a freshly initialised RWKV model as an RWKV-LM `.pth` (RWKV-LM's `--train_stage 1` rwkv-init.pth).

  python -m rwkvjax.cli.init_model --n_layer 12 --n_embd 768 [--vocab_size 65536] [--head_size 64]
      [--seed 0] [--dtype bfloat16|float32] --out rwkv-init.pth
"""

from __future__ import annotations

import jax
from absl import app, flags

from rwkvjax.config import ModelConfig
from rwkvjax.convert.rwkv_pth import save_pth
from rwkvjax.models import get_model
from rwkvjax.models.params import count_params

_VERSION = flags.DEFINE_string("my_testing", "x070", "Model version tag (RWKV-LM's --my_testing).")
_N_LAYER = flags.DEFINE_integer("n_layer", 12, "Number of blocks.")
_N_EMBD = flags.DEFINE_integer("n_embd", 768, "Model width.")
_VOCAB = flags.DEFINE_integer("vocab_size", 65536, "Vocabulary size.")
_HEAD_SIZE = flags.DEFINE_integer("head_size", 64, "Channels per head.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32", "float16"], "Saved dtype.")
_OUT = flags.DEFINE_string("out", None, "Output .pth path.", required=True)


def main(argv):
  del argv
  cfg = ModelConfig(version=_VERSION.value, n_layer=_N_LAYER.value, n_embd=_N_EMBD.value,
                    vocab_size=_VOCAB.value, head_size=_HEAD_SIZE.value)
  params = jax.jit(lambda key: get_model(cfg.version).init(cfg, key))(jax.random.key(_SEED.value))
  save_pth(params, cfg, _OUT.value, dtype=_DTYPE.value)
  print(f"wrote {_OUT.value}: {cfg.version} L{cfg.n_layer}-D{cfg.n_embd}, {count_params(params):,} parameters, {_DTYPE.value}")


if __name__ == "__main__":
  app.run(main)
