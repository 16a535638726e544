"""Data pipeline throughput: training tokens per second delivered as batches.

Usage: python benchmarks/pipeline_bench.py [--ctx_len 512] [--micro_bsz 16] [--batches 200]
       [--device "CPU (2-core dev machine)"] [--no-record]

Data: the embedded default corpus (stdlib sources, built on first use). Rows:
  pretrain magic_prime / shuffle: binidx windows -> batches (`make_pretrain_dataset`);
  packed jsonl: one record per stdlib file, tokenised on the fly, packed (`make_packed_dataset`).
tokens/s = batches x rows x ctx_len / seconds, timed after 5 warm-up batches. A dated row goes to
docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rwkvjax.data.binidx import BinIdx
from rwkvjax.data.corpus import default_corpus
from rwkvjax.data.pipeline import make_packed_dataset, make_pretrain_dataset
from rwkvjax.data.tokenizer import default_tokenizer

from tokenizer_bench import append_row  # pylint: disable=wrong-import-order


def tokens_per_second(ds, batches: int) -> float:
  it = iter(ds)
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  tokens = 0
  for _ in range(batches):
    tokens += next(it)["input_ids"].size
  return tokens / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ctx_len", type=int, default=512)
  parser.add_argument("--micro_bsz", type=int, default=16)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--device", default="CPU (2-core dev machine)")
  parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
  args = parser.parse_args()
  corpus = default_corpus()
  data = BinIdx(corpus.train)
  common = dict(ctx_len=args.ctx_len, micro_bsz=args.micro_bsz)
  results = {
      "pretrain magic_prime": tokens_per_second(make_pretrain_dataset(data, **common),
                                                args.batches),
      "pretrain shuffle": tokens_per_second(
          make_pretrain_dataset(data, sampler="shuffle", **common), args.batches),
  }
  tokenizer = default_tokenizer()
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "docs.jsonl"
    with open(path, "w") as f:
      for i in range(len(data)):
        f.write(json.dumps({"text": tokenizer.decode(data[i][:-1])}) + "\n")
    results["packed jsonl (tokenising)"] = tokens_per_second(
        make_packed_dataset(path, **common), max(args.batches // 10, 5))

  print(f"corpus: {data.num_tokens:,} tokens; ctx_len {args.ctx_len}, micro_bsz "
        f"{args.micro_bsz}")
  print(f"{'pipeline':<28} {'tokens/s':>12}")
  for name, rate in results.items():
    print(f"{name:<28} {rate:>12,.0f}")
  if not args.no_record:
    append_row(args.device, "python benchmarks/pipeline_bench.py",
               f"ctx_len {args.ctx_len} micro_bsz {args.micro_bsz}: " +
               "; ".join(f"{k} {v / 1e6:.2f} M tokens/s" for k, v in results.items()))


if __name__ == "__main__":
  main()
