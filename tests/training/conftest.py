"""Small data and configs for trainer tests."""

import numpy as np
import pytest

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.train import DataConfig, MeshConfig, OptimConfig, TrainConfig
from rwkvjax.data.binidx import BinIdxWriter

VOCAB = 64


def write_patterned_binidx(prefix, n_docs=60, seed=0):
  """Documents made of repeated short motifs: learnable, so the loss must fall."""
  motif_rng = np.random.default_rng(1234)  # the same motifs in every split
  motifs = [motif_rng.integers(1, VOCAB, size=motif_rng.integers(3, 7)) for _ in range(12)]
  rng = np.random.default_rng(seed)
  with BinIdxWriter(prefix, vocab_size=VOCAB) as w:
    for _ in range(n_docs):
      doc = np.concatenate([motifs[i] for i in rng.integers(0, len(motifs), size=40)])
      w.add_document(doc)
  return str(prefix)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  return write_patterned_binidx(root / "train"), write_patterned_binidx(root / "val", n_docs=10, seed=1)


def tiny_config(tiny_data, **overrides) -> TrainConfig:
  train, val = tiny_data
  fields = dict(
      model=ModelConfig(n_layer=2, n_embd=64, vocab_size=VOCAB, head_size=32, compute_dtype="float32"),
      data=DataConfig(data_file=train, val_file=val, sampler="shuffle", seed=3),
      optim=OptimConfig(lr_init=3e-3, lr_final=3e-4, warmup_steps=2),
      mesh=MeshConfig(data=1),
      ctx_len=32, micro_bsz=4, world_size=1, my_exit_tokens=32 * 4 * 12, epoch_samples=16, epoch_save=2,
      save_every_steps=4, log_every_steps=1, eval_batches=2, remat="none")
  fields.update(overrides)
  return TrainConfig(**fields)
