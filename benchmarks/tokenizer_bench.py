"""World tokenizer speed on one core: ours (Rust and Python matchers) against the official one.

Usage: python benchmarks/tokenizer_bench.py [--repeats 5] [--device "CPU (2-core dev machine)"]
       [--no-record]

Texts: English prose (the Python docs' topic pages, `pydoc_data.topics`, shipped with CPython;
0.5 MB, 4 copies) and Python source (the first 2 MB of the stdlib). The process is pinned to one core. For each
tokenizer the table gives MB/s of UTF-8 input, from the best of `repeats` runs by wall time and
by process CPU time (CPU time is less disturbed by other load), and whether its ids equal the
official `rwkv` TRIE_TOKENIZER's. A dated row goes to docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

from rwkvjax.data.corpus import stdlib_source_files
from rwkvjax.data.tokenizer import WorldTokenizer
import provenance  # benchmarks/, the script's folder

REPO = Path(__file__).resolve().parents[1]


def english_text(copies: int = 4) -> str:
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  topics = pydoc_data.topics.topics
  return "".join(topics[k] for k in sorted(topics)) * copies


def code_text(limit: int = 2_000_000) -> str:
  out, size = [], 0
  for path in stdlib_source_files(limit)[1]:
    try:
      out.append(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
      continue
    size += len(out[-1])
  return "".join(out)


def best_rates(encode, text: str, repeats: int) -> tuple[float, float, list[int]]:
  """(MB/s by best wall time, MB/s by best CPU time, ids)."""
  nbytes = len(text.encode("utf-8"))
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    ids = encode(text)
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return nbytes / min(walls) / 1e6, nbytes / max(min(cpus), 1e-9) / 1e6, ids


def official_tokenizer():
  try:
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # pylint: disable=import-outside-toplevel
    import rwkv  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))


def append_row(device: str, command: str, numbers: str) -> None:
  path = REPO / "docs" / "benchmarks.md"
  commit = provenance.commit()
  numbers += f" (1-min load average {os.getloadavg()[0]:.1f})"
  if not path.exists():
    path.write_text("# Benchmarks\n\n| date | device | command | commit | numbers |\n"
                    "|---|---|---|---|---|\n")
  with open(path, "a") as f:
    f.write(f"| {datetime.date.today().isoformat()} | {device} | `{command}` | {commit} | "
            f"{numbers} |\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--device", default="CPU (2-core dev machine)")
  parser.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
  args = parser.parse_args()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  texts = {"English (pydoc topics)": english_text(), "Python (stdlib source)": code_text()}
  tokenizers = {"ours: rust": WorldTokenizer(backend="rust").encode,
                "ours: python": WorldTokenizer(backend="python").encode}
  official = official_tokenizer()
  if official is not None:
    tokenizers["official rwkv 0.8.32"] = official.encode

  print(f"{'tokenizer':<22} {'text':<24} {'MB':>6} {'MB/s wall':>10} {'MB/s cpu':>9} identical")
  summary = []
  for text_name, text in texts.items():
    reference = official.encode(text) if official is not None else None
    for name, encode in tokenizers.items():
      repeats = args.repeats if name == "ours: rust" else 1
      wall, cpu, ids = best_rates(encode, text, repeats)
      same = "n/a" if reference is None else str(ids == reference)
      print(f"{name:<22} {text_name:<24} {len(text.encode()) / 1e6:>6.2f} {wall:>10.1f} "
            f"{cpu:>9.1f} {same}")
      summary.append(f"{name} {text_name.split()[0]} {wall:.1f} (cpu {cpu:.1f}) MB/s")
  if not args.no_record:
    append_row(args.device, "python benchmarks/tokenizer_bench.py",
               "World tokenizer, 1 core: " + "; ".join(summary))


if __name__ == "__main__":
  main()
