#!/usr/bin/env python
"""End-to-end check against the official `rwkv` package (not collected by pytest; CI has no torch):

  /work/venv/bin/python tests/peft/official_merge_check.py [--out DIR] [--fixture_python /work/fixture_venv/bin/python]

For x070 and x060 (tiny models: L2, C128, two heads of 64, World vocabulary) it
  1. writes a random base model (float32 .pth) and a narrow-format prompt/response jsonl;
  2. trains a state file (StateTuneConfig, RWKV-PEFT's recipe) and an adapter (x070: LoRA r=8,
     x060: PiSSA r=8) from that base with rwkvjax's trainer;
  3. merges both into one RWKV-LM .pth with rwkvjax.peft.files.merge_files (= python -m rwkvjax.cli.merge);
  4. computes rwkvjax's logits of the merged model started from the merged time_state;
  5. in the fixture venv (torch CPU + rwkv 0.8.32), loads the merged .pth with the official package
     (strategy 'cpu fp32') and runs it: x060 loads time_state itself (`.transpose(1,2)`), x070 gets
     state[3l+1] = time_state[l] set by the caller, as the package expects. The logits must match.
Prints one line per version and exits non-zero on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

VERSIONS = {"x070": "lora", "x060": "pissa"}
TOL = 2e-3


def official(args) -> None:
  """Runs in the fixture venv: load the merged model in the official package, compare logits."""
  if args.version == "x070":
    os.environ["RWKV_V7_ON"] = "1"
  else:
    os.environ.pop("RWKV_V7_ON", None)
  os.environ["RWKV_CUDA_ON"] = "0"
  os.environ.setdefault("RWKV_JIT_ON", "1")
  import torch
  from rwkv.model import RWKV
  d = os.path.join(args.out, args.version)
  want = np.load(os.path.join(d, "expected.npz"))
  tokens = [int(t) for t in want["tokens"]]
  model = RWKV(model=os.path.join(d, "merged"), strategy="cpu fp32")
  if args.version == "x070":
    sd = torch.load(os.path.join(d, "merged.pth"), map_location="cpu", weights_only=True)
    state = model.generate_zero_state()
    for l in range(model.n_layer):
      state[3 * l + 1] = sd[f"blocks.{l}.att.time_state"].float().clone()  # [H, value, key], the v7 layout
    plain, _ = model.forward(tokens, None, full_output=True)
    np.testing.assert_allclose(plain.numpy(), want["logits_no_state"], atol=TOL, rtol=TOL)
  else:
    state = None  # the v5/v6 class initialises its WKV state from the merged time_state keys
  logits, _ = model.forward(tokens, state, full_output=True)
  err = float(np.abs(logits.numpy() - want["logits"]).max())
  print(json.dumps({"version": args.version, "official_load": "ok", "max_abs_logit_diff": err,
                    "logit_scale": float(np.abs(want["logits"]).max())}))
  if err > TOL:
    sys.exit(f"{args.version}: official logits differ from rwkvjax's by {err}")


def ours(args) -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  import jax.numpy as jnp
  from rwkvjax.config.model import ModelConfig
  from rwkvjax.config.train import DataConfig, MeshConfig, OptimConfig, TrainConfig
  from rwkvjax.convert.rwkv_pth import save_pth
  from rwkvjax.data.tokenizer import default_tokenizer
  from rwkvjax.models import get_model
  from rwkvjax.models.params import flatten, param_shapes, unflatten
  from rwkvjax.peft import PeftConfig, StateTuneConfig, files, state_tuning
  from rwkvjax.training import trainer

  os.makedirs(args.out, exist_ok=True)
  records = os.path.join(args.out, "fmt.jsonl")
  with open(records, "w") as f:
    for i in range(200):
      f.write(json.dumps({"prompt": f"Item {i}:", "response": f" <<{i % 7}>> done.\n"}) + "\n")
  failures = []
  for version, method in VERSIONS.items():
    d = os.path.join(args.out, version)
    os.makedirs(d, exist_ok=True)
    cfg = ModelConfig(version=version, n_layer=2, n_embd=128, head_size=64, vocab_size=65536)
    shapes = flatten(param_shapes(get_model(version).param_specs(cfg), cfg))
    rng = np.random.default_rng(0)
    base = unflatten({k: (0.1 * rng.standard_normal(v.shape) + (1.0 if "ln" in k and k.endswith("weight") else 0.0)
                          ).astype(np.float32) for k, v in shapes.items()})
    save_pth(base, cfg, os.path.join(d, "base.pth"), dtype="float32")

    def run(task, workdir, lr):
      tc = TrainConfig(model=cfg, data=DataConfig(data_type="packed", data_file=records, val_file=records),
                       optim=OptimConfig(lr_init=lr[0], lr_final=lr[1], warmup_steps=0, adam_eps=1e-8,
                                         weight_decay=0.0),
                       mesh=MeshConfig(data=1), ctx_len=64, micro_bsz=4, world_size=1, my_exit_tokens=64 * 4 * 20,
                       epoch_samples=16, epoch_save=0, log_every_steps=5, eval_batches=2, remat="none",
                       load_model=os.path.join(d, "base.pth"), export_dtype="float32", task=task)
      result = trainer.train(tc, workdir)
      return result
    st = run(StateTuneConfig(), os.path.join(d, "state"), (1.0, 0.01))
    ad = run(PeftConfig(method=method, r=8, alpha=16.0), os.path.join(d, "adapter"), (1e-3, 1e-3))
    files.merge_files(os.path.join(d, "base.pth"), os.path.join(d, "merged.pth"),
                      peft_checkpoint=os.path.join(d, "adapter", "rwkv-final.pth"),
                      state_checkpoint=os.path.join(d, "state", "rwkv-final.pth"), dtype="float32")
    params, mcfg, ts = files.load_model_and_state(os.path.join(d, "merged.pth"))
    model = get_model(version)
    tokens = np.asarray(default_tokenizer().encode("Item 12: <<5>> done.\nItem 13:"), np.int32)
    logits, _ = model.forward(params, mcfg, jnp.asarray(tokens[None]), state_tuning.initial_state(model, mcfg, ts, 1))
    plain, _ = model.forward(params, mcfg, jnp.asarray(tokens[None]))
    np.savez(os.path.join(d, "expected.npz"), tokens=tokens, logits=np.asarray(logits[0]),
             logits_no_state=np.asarray(plain[0]))
    print(f"{version}: state run loss {st.last_loss:.3f} (held-out {st.eval_loss:.3f}); {method} run loss "
          f"{ad.last_loss:.3f}; state changes the logits by {float(jnp.abs(logits - plain).max()):.3f}", flush=True)
    proc = subprocess.run([args.fixture_python, os.path.abspath(__file__), "--official", "--version", version,
                           "--out", args.out], capture_output=True, text=True)
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-3000:], flush=True)
    if proc.returncode:
      failures.append(version)
      print(proc.stderr[-3000:])
  if failures:
    sys.exit(f"official package check failed for {failures}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", default="/tmp/rwkvjax_peft_official_check")
  p.add_argument("--fixture_python", default="/work/fixture_venv/bin/python")
  p.add_argument("--official", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--version", default="x070", help=argparse.SUPPRESS)
  args = p.parse_args()
  official(args) if args.official else ours(args)


if __name__ == "__main__":
  main()
