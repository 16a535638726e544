"""A run killed with SIGKILL resumes with the same data order and identical losses; SIGTERM saves and stops.

The runs go through the real launcher (`python -m launch.train`) in subprocesses."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.training.conftest import VOCAB
from tests.training.trainer_test import read_metrics

STEPS = 16


def launch_args(data, workdir, save_every=2):
  train, val = data
  sets = {"model.n_layer": 2, "model.n_embd": 64, "model.vocab_size": VOCAB, "model.head_size": 32,
          "model.compute_dtype": "'float32'", "data.data_file": f"'{train}'", "data.val_file": f"'{val}'",
          "data.sampler": "'shuffle'", "mesh.data": 1, "ctx_len": 32, "micro_bsz": 4, "world_size": 1,
          "my_exit_tokens": 32 * 4 * STEPS, "epoch_samples": 16, "epoch_save": 0, "save_every_steps": save_every,
          "log_every_steps": 1, "eval_batches": 0, "remat": "'none'", "optim.lr_init": 3e-3,
          "optim.lr_final": 3e-4, "optim.warmup_steps": 2}
  args = [sys.executable, "-m", "launch.train", "--config", "config:pretrain", "--workdir", str(workdir)]
  for k, v in sets.items():
    args += ["--config", f"set:{k}={v}"]
  return args


def env():
  e = dict(os.environ)
  e.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return e


def wait_for_checkpoint(workdir, proc, min_step, timeout=300):
  ckpt = workdir / "checkpoints"
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      pytest.fail(f"run ended (rc {proc.returncode}) before checkpoint {min_step}:\n{proc.stdout.read()}")
    done = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit() and (p / "commit_success.txt").exists()] \
        if ckpt.exists() else []
    if done and max(done) >= min_step:
      return max(done)
    time.sleep(0.2)
  pytest.fail("timed out waiting for a checkpoint")


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  subprocess.run(launch_args(tiny_data, workdir), check=True, env=env(), capture_output=True)
  return read_metrics(workdir)


def test_sigkill_then_resume_gives_identical_losses(tiny_data, tmp_path, straight_run):
  proc = subprocess.Popen(launch_args(tiny_data, tmp_path), env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  wait_for_checkpoint(tmp_path, proc, STEPS // 2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = subprocess.run(launch_args(tiny_data, tmp_path), env=env(), capture_output=True, text=True, check=True).stdout
  assert "resumed from" in out
  resumed = read_metrics(tmp_path)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    assert resumed[step]["loss"] == straight_run[step]["loss"], step


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_data, tmp_path, straight_run):
  proc = subprocess.Popen(launch_args(tiny_data, tmp_path, save_every=1000), env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  t0 = time.time()
  while not (tmp_path / "metrics.jsonl").exists() or len(read_metrics(tmp_path)) < 3:
    assert time.time() - t0 < 300 and proc.poll() is None
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert "SIGTERM: saved checkpoint" in out
  subprocess.run(launch_args(tiny_data, tmp_path), env=env(), capture_output=True, check=True)
  resumed = read_metrics(tmp_path)
  for step in range(1, STEPS + 1):
    assert resumed[step]["loss"] == straight_run[step]["loss"], step
