"""Training-step throughput and MFU of the real jitted train step (rwkvjax.training.trainer.setup) on
synthetic tokens, for model presets on a chosen number of devices and mesh.

  python benchmarks/train_bench.py --runs "rwkv7-L12-D768:1:data" "rwkv7-1.5b:4:fsdp" [--ctx_len 4096]
      [--micro_bsz 8] [--impl chunked] [--remat block] [--no-scan_layers] [--no-l2wrap] [--steps 6]
      [--append docs/benchmarks.md]
      [--profile DIR]

Each run is PRESET:DEVICES:MESH with MESH one of data, fsdp, fsdp_tensor (tensor axis 2). micro_bsz is
rows per device on the batch axes (global batch = micro_bsz x batch devices). Prints one table row per run:
tokens/s (global and per device), TFLOP/s per device (model FLOPs, training = 3x forward) and MFU against
the device's dense bf16 peak, peak device memory, and per-device efficiency against the 1-device run of
the same preset when there is one. --profile DIR traces 3 more steps of each run with jax.profiler into
DIR/PRESET (summarise with benchmarks/trace_summary.py).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rwkvjax.config.model import ModelConfig  # noqa: E402
from rwkvjax.config.train import MeshConfig, TrainConfig  # noqa: E402
from rwkvjax.config.transformer import TransformerConfig  # noqa: E402
from rwkvjax.training import flops, sharding  # noqa: E402
from rwkvjax.training.trainer import setup  # noqa: E402
import provenance  # noqa: E402 (benchmarks/, the script's folder)

PRESETS = {
    "rwkv7-L12-D768": lambda: ModelConfig(n_layer=12, n_embd=768, vocab_size=65536, compute_dtype="bfloat16"),
    "rwkv7-1.5b": lambda: ModelConfig(n_layer=24, n_embd=2048, vocab_size=65536, compute_dtype="bfloat16"),
    "llama-0.4b": lambda: TransformerConfig(vocab_size=65536, hidden_size=1024, intermediate_size=2816,
                                            num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                                            compute_dtype="bfloat16"),
    "llama-1.3b": lambda: TransformerConfig(vocab_size=65536, hidden_size=2048, intermediate_size=5120,
                                            num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                                            compute_dtype="bfloat16"),
    "rwkv7-tiny": lambda: ModelConfig(n_layer=2, n_embd=128, vocab_size=512, compute_dtype="float32"),
}
MESHES = {"data": lambda n: MeshConfig(data=n), "fsdp": lambda n: MeshConfig(data=1, fsdp=n),
          "fsdp_tensor": lambda n: MeshConfig(data=1, fsdp=n // 2, tensor=2)}


def run_one(preset: str, n_devices: int, mesh_name: str, args) -> dict:
  model = PRESETS[preset]()
  mesh_cfg = MESHES[mesh_name](n_devices)
  mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:n_devices])
  batch_devices = sharding.batch_devices(mesh)
  cfg = TrainConfig(model=model, mesh=mesh_cfg, ctx_len=args.ctx_len, micro_bsz=args.micro_bsz,
                    world_size=batch_devices, my_exit_tokens=10**12, epoch_samples=args.micro_bsz * batch_devices,
                    impl=args.impl, remat=args.remat, scan_layers=args.scan_layers, l2wrap=args.l2wrap)
  run = setup(cfg, mesh)
  params = jax.jit(run.task.init_params, out_shardings=run.params_sharding)(jax.random.key(0))
  state = jax.jit(run.init_state, out_shardings=run.state_sharding)(params)
  del params
  shape = (1, batch_devices * args.micro_bsz, args.ctx_len + 1)
  tokens = jax.device_put(jax.random.randint(jax.random.key(1), shape, 1, model.vocab_size), run.batch_sharding)
  batch = {"input_ids": tokens[..., :-1], "targets": tokens[..., 1:],
           "loss_mask": jnp.ones(tokens[..., 1:].shape, jnp.float32)}
  batch = jax.device_put(batch, run.batch_sharding)
  t0 = time.perf_counter()
  state, metrics = run.train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, metrics = run.train_step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = run.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  if args.profile:
    with jax.profiler.trace(f"{args.profile}/{preset}", create_perfetto_trace=True):
      for _ in range(3):
        state, metrics = run.train_step(state, batch)
      jax.block_until_ready(metrics)
  tokens_per_step = shape[1] * args.ctx_len
  tps = tokens_per_step / step_s
  tflops = flops.train_flops_per_token(model, args.ctx_len) * tps / n_devices / 1e12
  peak = flops.peak_flops(jax.devices()[0], model.compute_dtype)
  mem = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.devices()[:n_devices]) / 2**30
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  result = dict(preset=preset, params=n_params, devices=n_devices, mesh=mesh_name, batch=f"{shape[1]}x{args.ctx_len}",
                step_ms=step_s * 1e3, tokens_per_sec=tps, tokens_per_sec_per_device=tps / n_devices,
                tflops_per_device=tflops, mfu=tflops * 1e12 / peak if peak else None, peak_mem_gib=mem,
                loss=float(metrics["loss"]), compile_s=compile_s)
  del state, batch, tokens
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", nargs="+", required=True, help="PRESET:DEVICES:MESH")
  parser.add_argument("--ctx_len", type=int, default=4096)
  parser.add_argument("--micro_bsz", type=int, default=8)
  parser.add_argument("--impl", default="auto")
  parser.add_argument("--remat", default="block")
  parser.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                      help="layers under lax.scan (default) or unrolled (--no-scan_layers)")
  parser.add_argument("--l2wrap", action=argparse.BooleanOptionalAction, default=True,
                      help="RWKV-LM's L2Wrap term in the loss (TrainConfig.l2wrap)")
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--append", default=None)
  parser.add_argument("--profile", default="", help="trace 3 steps of each run into PROFILE/PRESET")
  args = parser.parse_args()
  header = ("| model | params | GPUs | mesh | batch | step ms | tokens/s | tokens/s/GPU | TFLOP/s/GPU | MFU | "
            "vs 1 GPU | peak GiB | compile s |")
  out = open(args.append, "a") if args.append else None
  if out:  # rows are appended as they finish, so a run cut short keeps what it measured
    commit = provenance.commit()
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    command = "python benchmarks/train_bench.py " + " ".join(sys.argv[1:])
    out.write(f"\n### Training step throughput, {datetime.date.today()}, {device}, commit {commit}\n"
              f"`{command}` (impl={args.impl}, remat={args.remat}, scan_layers={args.scan_layers}, "
              f"l2wrap={args.l2wrap}, bf16 compute, fp32 master weights, AdamW)\n\n"
              f"{header}\n|" + "---|" * 13 + "\n")
    out.flush()
  print(header, flush=True)
  base: dict[str, float] = {}
  for spec in args.runs:
    preset, n, mesh_name = spec.split(":")
    try:
      r = run_one(preset, int(n), mesh_name, args)
    except Exception as e:  # noqa: BLE001 - an OOM or compile failure is a result to report
      line = f"| {preset} | | {n} | {mesh_name} | | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} |"
    else:
      if r["devices"] == 1:
        base[preset] = r["tokens_per_sec_per_device"]
      eff = f"{r['tokens_per_sec_per_device'] / base[preset]:.1%}" if preset in base and r["devices"] > 1 else ""
      mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
      line = (f"| {preset} | {r['params'] / 1e6:.0f}M | {r['devices']} | {r['mesh']} | {r['batch']} | "
              f"{r['step_ms']:.0f} | {r['tokens_per_sec']:,.0f} | {r['tokens_per_sec_per_device']:,.0f} | "
              f"{r['tflops_per_device']:.1f} | {mfu} | {eff} | {r['peak_mem_gib']:.1f} | {r['compile_s']:.0f} |")
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()
  if out:
    out.close()


if __name__ == "__main__":
  main()
