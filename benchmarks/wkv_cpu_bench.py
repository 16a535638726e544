"""CPU timing of the WKV-7 backends: jitted forward and forward+backward, reference vs chunked.

Usage: PYTHONPATH=. python benchmarks/wkv_cpu_bench.py [--repeats 5] [--chunks 16,32,64]
Prints one row per (shape, backend): the median and the best wall time of `repeats` calls after a warm-up call,
the backends' calls interleaved (the best is the steadier number on a shared machine).
Inputs are float32 with the RWKV-7 structure (w = -e^{-0.5} sigmoid(.), a = -kappa, b = kappa * iclr).
"""

from __future__ import annotations

import argparse
import os
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from rwkvjax.ops.chunked import wkv7_chunked
from rwkvjax.ops.reference import wkv7_reference

SHAPES = ((2, 512, 4, 64), (1, 2048, 2, 64))


def make_inputs(key, B, T, H, N):
  ks = jax.random.split(key, 7)
  shape = (B, T, H, N)
  w = -0.6065306597 * jax.nn.sigmoid(jax.random.normal(ks[0], shape))
  r, k, v = (0.5 * jax.random.normal(x, shape) for x in ks[1:4])
  kappa = jax.random.normal(ks[4], shape)
  kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
  b = kappa * jax.nn.sigmoid(jax.random.normal(ks[5], shape))
  s0 = jax.random.normal(ks[6], (B, H, N, N))
  return r, w, k, v, -kappa, b, s0


def fwd_bwd(fn):
  def loss(*args):
    o, s = fn(*args, None)
    return jnp.sum(o) + jnp.sum(s)

  return jax.grad(loss, argnums=tuple(range(7)))


def interleaved_times(fns, args, repeats):
  """{name: (median, best)} seconds of each jitted fn(*args), calls interleaved across fns."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # compile + warm-up
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--chunks", default="16,32,64", help="chunk sizes of the chunked backend")
  args = parser.parse_args()
  backends = [("reference", wkv7_reference)] + [
    (f"chunked L={c}", functools.partial(wkv7_chunked, chunk_size=int(c))) for c in args.chunks.split(",")
  ]
  print(f"device: {jax.devices()[0].device_kind} ({os.cpu_count()} cores), {args.repeats} calls each, ms")
  header = ("B,T,H,N", "backend", "fwd median", "fwd best", "fwd+bwd median", "fwd+bwd best")
  print("{:<14} {:<14} {:>11} {:>9} {:>15} {:>13}".format(*header))
  for shape in SHAPES:
    inputs = make_inputs(jax.random.PRNGKey(0), *shape)
    fwd = {n: jax.jit(lambda *x, fn=fn: fn(*x, None)) for n, fn in backends}
    t_fwd = interleaved_times(fwd, inputs, args.repeats)
    t_bwd = interleaved_times({n: jax.jit(fwd_bwd(fn)) for n, fn in backends}, inputs, args.repeats)
    for name, _ in backends:
      (f_med, f_min), (b_med, b_min) = t_fwd[name], t_bwd[name]
      print(
        f"{','.join(map(str, shape)):<14} {name:<14} {f_med * 1e3:11.2f} {f_min * 1e3:9.2f} {b_med * 1e3:15.2f} "
        f"{b_min * 1e3:13.2f}"
      )


if __name__ == "__main__":
  main()
