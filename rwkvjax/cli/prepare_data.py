r"""Tokenise text, jsonl and parquet/arrow files into RWKV-LM binidx.

  python -m rwkvjax.cli.prepare_data --input data/chat.jsonl --input docs/ \
      --output_prefix out/mydata --ctx_len 512 --val_fraction 0.01

writes out/mydata.bin/.idx (and out/mydata_val.bin/.idx when --val_fraction > 0) and prints the
documents, tokens and magic_prime for --ctx_len. See docs/data.md.
"""

import sys

from absl import app, flags

from rwkvjax.data.errors import DataError
from rwkvjax.data.prepare import DEFAULT_SUFFIXES, SPLITS, prepare_binidx

_INPUT = flags.DEFINE_multi_string(
    "input", None, "A .jsonl, .parquet, .arrow or text file, or a directory of them (repeatable).")
_OUTPUT = flags.DEFINE_string("output_prefix", None, "Train binidx prefix (writes .bin and .idx).")
_VAL_PREFIX = flags.DEFINE_string("val_prefix", None, "Held-out prefix (default {output}_val).")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "jsonl key / arrow column with the text.")
_SUFFIXES = flags.DEFINE_list("suffixes", list(DEFAULT_SUFFIXES),
                              "File endings taken from directories.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.0, "Share held out for validation.")
_SPLIT_BY = flags.DEFINE_enum("split_by", "file", SPLITS, "Hold out whole files or documents.")
_CTX_LEN = flags.DEFINE_integer("ctx_len", None, "Report the magic_prime for this ctx_len.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None,
                                    "Tokeniser processes (0: in-process; default min(cpus, 8)).")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_documents", False,
                              "Skip and count empty/invalid documents instead of failing.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
flags.mark_flags_as_required(["input", "output_prefix"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = prepare_binidx(
        _INPUT.value, _OUTPUT.value, suffixes=tuple(_SUFFIXES.value),
        val_prefix=_VAL_PREFIX.value, text_field=_TEXT_FIELD.value,
        val_fraction=_VAL_FRACTION.value, split_by=_SPLIT_BY.value, ctx_len=_CTX_LEN.value,
        num_workers=_NUM_WORKERS.value, skip_bad_documents=_SKIP_BAD.value,
        progress=_PROGRESS.value)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print("\n".join(summary.lines()))
  return 0


if __name__ == "__main__":
  app.run(main)
