"""A narrow-format fine-tuning task made from Python sources (for the PEFT / state-tuning comparisons).

Every top-level or method `def` with 3 to 40 lines becomes one prompt/response record:

  prompt:   "<the function's source>\\n\\nSummary:"
  response: " name=<name>; args=<a,b,...>; returns=<yes|no>; lines=<n>\\n"

The response is a fixed format that a base language model does not produce on its own and that a small
number of trained parameters can learn (copy the name and arguments, check for `return <value>`, count
lines), so the held-out loss on responses shows how well a method adapts. Records are split into train and
held-out by file (a hash of the path), so held-out functions come from unseen files.

  python -m rwkvjax.peft.demo_data --src /usr/lib/python3/dist-packages --out data/pyfunc [--max_records 20000]

writes data/pyfunc_train.jsonl and data/pyfunc_val.jsonl (use them as DataConfig data_file / val_file with
data_type="packed").
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from typing import Iterator

from absl import app, flags


def function_records(source: str) -> Iterator[dict[str, str]]:
  """The records of one module's source (none if it does not parse)."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return
  lines = source.splitlines()
  functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  for node in sorted(functions, key=lambda n: n.lineno):  # in source order
    if node.end_lineno is None:
      continue
    n = node.end_lineno - node.lineno + 1
    if not 3 <= n <= 40:
      continue
    body = lines[node.lineno - 1:node.end_lineno]
    indent = len(body[0]) - len(body[0].lstrip())
    text = "\n".join(l[indent:] if l[:indent].strip() == "" else l for l in body)
    args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    returns = any(isinstance(x, ast.Return) and x.value is not None for x in ast.walk(node))
    yield {"prompt": f"{text}\n\nSummary:",
           "response": f" name={node.name}; args={','.join(args)}; returns={'yes' if returns else 'no'}; lines={n}\n"}


def held_out(path: str, fraction: float) -> bool:
  return int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def write_task(src: str, out_prefix: str, *, max_records: int = 20000, val_fraction: float = 0.05,
               max_chars: int = 2000) -> tuple[int, int]:
  """Walks `src` for .py files (sorted, deterministic) and writes {out_prefix}_train.jsonl and _val.jsonl.
  Returns (train records, held-out records)."""
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  counts = [0, 0]
  with open(out_prefix + "_train.jsonl", "w") as train, open(out_prefix + "_val.jsonl", "w") as val:
    for root, dirs, names in os.walk(src):
      dirs.sort()
      for name in sorted(names):
        if not name.endswith(".py"):
          continue
        path = os.path.join(root, name)
        try:
          with open(path, encoding="utf-8") as f:
            source = f.read()
        except (UnicodeDecodeError, OSError):
          continue
        is_val = held_out(os.path.relpath(path, src), val_fraction)
        for record in function_records(source):
          if len(record["prompt"]) > max_chars:
            continue
          (val if is_val else train).write(json.dumps(record) + "\n")
          counts[is_val] += 1
          if sum(counts) >= max_records:
            return counts[0], counts[1]
  return counts[0], counts[1]


_SRC = flags.DEFINE_string("src", None, "Directory of Python sources.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output prefix (writes PREFIX_train.jsonl and PREFIX_val.jsonl).",
                           required=True)
_MAX = flags.DEFINE_integer("max_records", 20000, "Stop after this many records.")
_VAL = flags.DEFINE_float("val_fraction", 0.05, "Fraction of files held out.")


def main(argv):
  del argv
  n_train, n_val = write_task(_SRC.value, _OUT.value, max_records=_MAX.value, val_fraction=_VAL.value)
  print(f"wrote {_OUT.value}_train.jsonl ({n_train} records) and {_OUT.value}_val.jsonl ({n_val} records)")


if __name__ == "__main__":
  app.run(main)
