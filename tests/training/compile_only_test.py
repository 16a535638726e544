"""launch.compile_only: AOT compilation of a sharded run for 8 devices, with a memory verdict."""

import subprocess
import sys

ARGS = [sys.executable, "-m", "launch.compile_only", "--config", "config:pretrain", "--topology", "cpu:8",
        "--config", "set:model.n_layer=2", "--config", "set:model.n_embd=128", "--config", "set:model.vocab_size=256",
        "--config", "set:ctx_len=64", "--config", "set:micro_bsz=1", "--config", "set:world_size=8",
        "--config", "set:mesh.data=1", "--config", "set:mesh.fsdp=4", "--config", "set:mesh.tensor=2",
        "--config", "set:epoch_samples=8"]


def test_compile_only_reports_memory():
  out = subprocess.run(ARGS, capture_output=True, text=True, check=True).stdout
  assert "compiled x070" in out and "'fsdp': 4, 'tensor': 2" in out and "per device:" in out


def test_compile_only_fails_when_it_does_not_fit():
  proc = subprocess.run(ARGS + ["--device_memory_gb", "0.000001"], capture_output=True, text=True)
  assert proc.returncode == 1 and "DOES NOT FIT" in proc.stderr


def test_compile_only_unrolled_llama():
  """config:llama_pretrain (layers unrolled, remat keeping attention outputs) compiles sharded over fsdp x tensor."""
  args = [sys.executable, "-m", "launch.compile_only", "--config", "config:llama_pretrain", "--topology", "cpu:8"]
  for field, value in (("model.num_hidden_layers", 2), ("model.hidden_size", 128), ("model.intermediate_size", 384),
                       ("model.num_attention_heads", 2), ("model.num_key_value_heads", 2), ("model.vocab_size", 256),
                       ("ctx_len", 64), ("micro_bsz", 1), ("world_size", 8), ("mesh.data", 1), ("mesh.fsdp", 4),
                       ("mesh.tensor", 2), ("epoch_samples", 8)):
    args += ["--config", f"set:{field}={value}"]
  out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
  assert "compiled llama" in out and "'fsdp': 4, 'tensor': 2" in out and "per device:" in out
