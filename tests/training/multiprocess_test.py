"""A 2-process run on localhost through jax.distributed gives the losses of the same run in one process."""

import os
import socket
import subprocess

import numpy as np

from tests.training.faults_test import launch_args
from tests.training.trainer_test import read_metrics


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices):
  e = dict(os.environ)
  e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return e


def test_two_processes_match_one(tiny_data, tmp_path):
  mesh = ["--config", "set:mesh.data=-1", "--config", "set:world_size=4", "--config", "set:micro_bsz=1",
          "--config", "set:my_exit_tokens=1024", "--config", "set:epoch_samples=4"]
  single = launch_args(tiny_data, tmp_path / "single") + mesh
  subprocess.run(single, env=env(4), check=True, capture_output=True)
  port = free_port()
  procs = []
  for pid in range(2):
    args = launch_args(tiny_data, tmp_path / "multi") + mesh + [
        "--coordinator_address", f"localhost:{port}", "--num_processes", "2", "--process_id", str(pid)]
    procs.append(subprocess.Popen(args, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  a, b = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "multi")
  assert sorted(a) == sorted(b) == list(range(1, 9))
  np.testing.assert_allclose([b[s]["loss"] for s in sorted(b)], [a[s]["loss"] for s in sorted(a)], rtol=1e-5)
  assert (tmp_path / "multi" / "rwkv-final.pth").exists()
