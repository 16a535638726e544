"""Tiny random Qwen2 teachers (GQA, q/k/v biases) saved as HF directories, students and trainer configs."""

import numpy as np
import pytest

from rwkvjax.config.train import DataConfig, MeshConfig, OptimConfig, TrainConfig
from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.convert.hf import save_hf
from rwkvjax.distill.student import StudentConfig
from rwkvjax.models import transformer
from rwkvjax.models.params import unflatten
from tests.training.conftest import write_patterned_binidx

# hidden 64, 2 layers, 4 query heads of 16 sharing 2 kv heads, an odd vocabulary (the data's ids are < 64)
TEACHER = TransformerConfig(model_type="qwen2", vocab_size=97, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                            compute_dtype="float32")
STUDENT = StudentConfig(base=TEACHER, head_size=16, d_decay_lora=8, d_aaa_lora=8, d_mv_lora=8, d_gate_lora=8)


def random_teacher(cfg=TEACHER, seed=0):
  """Random weights with enough scale that the teacher's attention and logits are far from trivial."""
  rng = np.random.default_rng(seed)
  flat = {}
  for s in transformer.param_specs(cfg):
    shape = s.full_shape(cfg.n_layer)
    if s.name.endswith("norm.weight"):
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif s.name.endswith(".bias"):
      v = 0.3 * rng.standard_normal(shape)
    elif s.name == "model.embed_tokens.weight":
      v = rng.standard_normal(shape)
    elif s.name == "lm_head.weight":
      v = 3.0 / np.sqrt(cfg.hidden_size) * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape) / np.sqrt(np.prod(s.pth_shape[1:]))
    flat[s.name] = v.astype(np.float32)
  return unflatten(flat)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("teacher") / "hf"
  params = random_teacher()
  save_hf(params, TEACHER, path, dtype="float32")
  return str(path), params


@pytest.fixture(scope="session")
def distill_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill_data")
  return write_patterned_binidx(root / "train"), write_patterned_binidx(root / "val", n_docs=10, seed=1)


def train_config(data, task, **overrides) -> TrainConfig:
  train, val = data
  fields = dict(model=STUDENT, data=DataConfig(data_file=train, val_file=val, sampler="shuffle", seed=3),
                optim=OptimConfig(lr_init=3e-3, lr_final=1e-3, warmup_steps=2, weight_decay=0.0),
                mesh=MeshConfig(data=1), ctx_len=32, micro_bsz=4, world_size=1, my_exit_tokens=32 * 4 * 12,
                epoch_samples=16, epoch_save=0, save_every_steps=100, log_every_steps=1, eval_batches=1,
                remat="none", export_dtype="float32", impl="reference", task=task)
  fields.update(overrides)
  return TrainConfig(**fields)


