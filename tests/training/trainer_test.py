"""The trainer end to end on tiny data: loss falls, logs and exports, resume, faults."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from rwkvjax.config.train import MeshConfig
from rwkvjax.convert.rwkv_pth import load_pth
from rwkvjax.training import trainer
from tests.training.conftest import tiny_config


def read_metrics(workdir):
  """Last record per step (a resumed run may log a step twice)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if "loss" in rec:
        out[rec["step"]] = rec
  return out


def test_training_run_learns_logs_and_exports(tmp_path, tiny_data):
  cfg = tiny_config(tiny_data, my_exit_tokens=32 * 4 * 24)
  result = trainer.train(cfg, str(tmp_path))
  assert result.status == "finished" and result.step == 24
  metrics = read_metrics(tmp_path)
  assert sorted(metrics) == list(range(1, 25))
  first, last = metrics[1], metrics[24]
  assert last["loss"] < first["loss"] - 1.0, (first["loss"], last["loss"])
  for key in ("step", "loss", "lr", "tokens", "tokens_per_sec", "tflops_per_device", "mfu", "grad_norm"):
    assert key in last
  assert last["tokens"] == 24 * 4 * 32
  assert result.eval_loss is not None and result.eval_loss < first["loss"]
  # RWKV-LM's files: train_log.txt line per mini-epoch (16 samples = 4 steps), rwkv-N.pth, rwkv-final.pth
  lines = (tmp_path / "train_log.txt").read_text().splitlines()
  assert lines[0].startswith("NEW RUN")
  epoch_lines = [l for l in lines[2:] if l.split()[0].isdigit()]
  assert [int(l.split()[0]) for l in epoch_lines] == list(range(6))
  assert {p.name for p in tmp_path.glob("rwkv-*.pth")} == {"rwkv-0.pth", "rwkv-2.pth", "rwkv-4.pth", "rwkv-final.pth"}
  params, mcfg = load_pth(tmp_path / "rwkv-final.pth")
  assert mcfg.n_layer == 2 and mcfg.vocab_size == cfg.model.vocab_size
  np.testing.assert_allclose(params["head"]["weight"], result.params["head"]["weight"], atol=1e-2)
  assert any((tmp_path / "tensorboard").iterdir())


def test_unreadable_latest_checkpoint_falls_back(tmp_path, tiny_data, capsys):
  cfg = tiny_config(tiny_data, save_every_steps=2, my_exit_tokens=32 * 4 * 6)
  trainer.train(cfg, str(tmp_path))
  ckpt = tmp_path / "checkpoints"
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert steps[-1] == 6
  shutil.rmtree(ckpt / "6" / "state")
  os.makedirs(ckpt / "6" / "state")
  result = trainer.train(dataclasses.replace(cfg, my_exit_tokens=32 * 4 * 8), str(tmp_path))
  out = capsys.readouterr().out
  assert "checkpoints/6 is unreadable" in out and f"resumed from {ckpt}/4" in out
  assert result.step == 8


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss(tmp_path, tiny_data, policy):
  cfg = tiny_config(tiny_data, nan_policy=policy, my_exit_tokens=32 * 4 * 3)
  cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr_init=1e30, lr_final=1e30, warmup_steps=0))
  if policy == "stop":
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss or gradient at step"):
      trainer.train(cfg, str(tmp_path))
  else:
    result = trainer.train(cfg, str(tmp_path))
    assert result.status == "finished"
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result.params))


def test_sharded_meshes_agree(tmp_path, tiny_data):
  """data-only, FSDP and FSDP + tensor meshes over 8 fake devices give the same losses."""
  losses = {}
  for name, mesh in {"data": MeshConfig(data=8), "fsdp": MeshConfig(data=1, fsdp=8),
                     "fsdp_tensor": MeshConfig(data=1, fsdp=4, tensor=2)}.items():
    cfg = tiny_config(tiny_data, mesh=mesh, world_size=8, micro_bsz=1, my_exit_tokens=32 * 8 * 4,
                      epoch_samples=32, save_every_steps=100, eval_batches=0)
    result = trainer.train(cfg, str(tmp_path / name))
    losses[name] = [result.losses[s] for s in sorted(result.losses)]
  np.testing.assert_allclose(losses["fsdp"], losses["data"], rtol=2e-5)
  np.testing.assert_allclose(losses["fsdp_tensor"], losses["data"], rtol=2e-5)


def test_llama_baseline_trains_with_the_same_trainer(tmp_path, tiny_data):
  from rwkvjax.config.transformer import TransformerConfig
  from rwkvjax.convert.hf import load_hf
  model = TransformerConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, compute_dtype="float32")
  cfg = tiny_config(tiny_data, model=model, my_exit_tokens=32 * 4 * 16, epoch_save=0)
  cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr_init=1e-2, lr_final=1e-3))
  result = trainer.train(cfg, str(tmp_path))
  metrics = read_metrics(tmp_path)
  assert metrics[16]["loss"] < metrics[1]["loss"] - 1.0
  params, hf_cfg = load_hf(tmp_path / "hf-final")
  assert hf_cfg.num_hidden_layers == 2
  np.testing.assert_allclose(params["lm_head"]["weight"], result.params["lm_head"]["weight"], atol=1e-2)


@pytest.mark.parametrize("data_type", ["packed", "padded"])
def test_packed_records_train_on_responses_only(tmp_path, tiny_data, data_type):
  """data_type="packed" / "padded": jsonl prompt/response records, World-tokenised, loss only on responses."""
  from rwkvjax.config.train import DataConfig
  from rwkvjax.config.model import ModelConfig
  records = tmp_path / "sft.jsonl"
  with open(records, "w") as f:
    for i in range(40):
      f.write(json.dumps({"prompt": f"Q: what is {i} plus one?\n", "response": f"A: {i + 1}\n"}) + "\n")
  cfg = tiny_config(tiny_data, model=ModelConfig(n_layer=2, n_embd=64, vocab_size=65536, head_size=32,
                                                 compute_dtype="float32"),
                    data=DataConfig(data_type=data_type, data_file=str(records), val_file=str(records)),
                    my_exit_tokens=32 * 4 * 10, epoch_save=0, eval_batches=1)
  result = trainer.train(cfg, str(tmp_path / "run"))
  metrics = read_metrics(tmp_path / "run")
  assert metrics[10]["loss"] < metrics[1]["loss"]
  assert result.eval_loss is not None
