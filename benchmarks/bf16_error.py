"""bf16 compute error of RWKV-7 against the same model in float32 (fp32 state and accumulations in both).

  python benchmarks/bf16_error.py [--append docs/numerics.md]

Measures |logits_bf16 - logits_fp32| on (a) the project's official-package fixtures (with the official
package's own 'cpu bf16' error on the same model for comparison) and (b) larger randomly perturbed models.
Prints a markdown table; with --append, appends it with the date, device, command and commit.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rwkvjax.config import ModelConfig  # noqa: E402
from rwkvjax.convert.rwkv_pth import params_from_state_dict  # noqa: E402
from rwkvjax.models import rwkv7  # noqa: E402
import provenance  # noqa: E402 (benchmarks/, the script's folder)


def errors(params, cfg, tokens):
  ref, _ = jax.jit(lambda p, t: rwkv7.forward(p, cfg, t))(params, tokens)
  cfg16 = ModelConfig(**{**cfg.__dict__, "compute_dtype": "bfloat16"})
  out, _ = jax.jit(lambda p, t: rwkv7.forward(p, cfg16, t))(params, tokens)
  err = np.abs(np.asarray(out) - np.asarray(ref))
  agree = float((np.argmax(out, -1) == np.argmax(ref, -1)).mean())
  return err.mean(), err.max(), float(np.asarray(ref).std()), agree


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--append", default=None, help="markdown file to append the table to")
  args = parser.parse_args()
  rows = []
  z = np.load(ROOT / "tests/fixtures/x070_small.npz")
  params, cfg = params_from_state_dict({k[6:]: z[k] for k in z.files if k.startswith("param/")})
  mean, mx, std, agree = errors(params, cfg, jnp.asarray(z["tokens"])[None])
  official = np.abs(z["logits_bf16_official"].astype(np.float32) - z["logits_parallel"])
  rows.append(f"| fixture small (L2 D128, T37) | {mean:.4f} | {mx:.4f} | {std:.2f} | {agree:.3f} | "
              f"official 'cpu bf16': mean {official.mean():.4f}, max {official.max():.4f} |")
  for L, C, T in ((6, 256, 256), (12, 768, 128)):
    cfg = ModelConfig(n_layer=L, n_embd=C, vocab_size=4096)
    key = jax.random.key(L)
    params = rwkv7.init(cfg, key)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    tokens = jax.random.randint(key, (2, T), 0, cfg.vocab_size)
    mean, mx, std, agree = errors(params, cfg, tokens)
    rows.append(f"| init + N(0, 0.02) noise, L{L} D{C} V4096, B2 T{T} | {mean:.4f} | {mx:.4f} | {std:.2f} | {agree:.3f} | |")
  table = "\n".join(["| model | mean abs err | max abs err | logits std | argmax agreement | note |",
                     "|---|---|---|---|---|---|", *rows])
  print(table)
  if args.append:
    commit = provenance.commit()
    device = f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})"
    with open(args.append, "a") as f:
      f.write(f"\n### bf16 compute vs float32, {datetime.date.today()}, {device}, commit {commit}\n"
              f"`python benchmarks/bf16_error.py --append {args.append}`\n\n{table}\n")


if __name__ == "__main__":
  main()
