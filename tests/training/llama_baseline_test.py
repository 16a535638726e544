"""The Llama baseline trains from an experiment config with the RWKV runs' command (`python -m launch.train`),
learns, exports an HF directory and samples text at the end."""

import os
import subprocess
import sys

from tests.training.conftest import VOCAB
from tests.training.faults_test import env
from tests.training.trainer_test import read_metrics

STEPS = 24


def test_llama_demo_config_trains_exports_and_samples(tiny_data, tmp_path):
  train, val = tiny_data
  sets = {"model.num_hidden_layers": 2, "model.hidden_size": 64, "model.intermediate_size": 128,
          "model.num_attention_heads": 1, "model.vocab_size": VOCAB, "data.data_file": f"'{train}'",
          "data.val_file": f"'{val}'", "data.sampler": "'shuffle'", "ctx_len": 32, "micro_bsz": 4,
          "my_exit_tokens": 32 * 4 * STEPS, "epoch_samples": 16, "save_every_steps": 12, "log_every_steps": 1,
          "eval_batches": 2, "sample.prompt": "'\\x01'", "sample.max_new_tokens": 8}
  args = [sys.executable, "-m", "launch.train", "--config", "config:llama_demo", "--workdir", str(tmp_path)]
  for k, v in sets.items():
    args += ["--config", f"set:{k}={v}"]
  proc = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  metrics = read_metrics(tmp_path)
  assert max(metrics) == STEPS
  first, last = metrics[1]["loss"], metrics[STEPS]["loss"]
  assert last < first - 0.5, (first, last)
  assert os.path.isfile(tmp_path / "hf-final" / "config.json")
  assert os.path.isfile(tmp_path / "hf-final" / "model.safetensors")
  assert "sample" in proc.stdout.lower(), proc.stdout[-2000:]
