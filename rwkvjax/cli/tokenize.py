r"""RWKV World tokenizer on the command line.

  echo -n "Hello" | python -m rwkvjax.cli.tokenize             # prints [33155]
  echo "[33155]" | python -m rwkvjax.cli.tokenize --decode      # prints Hello

Encoding reads UTF-8 text on stdin and prints the ids as a JSON list; `--decode` reads a JSON list
of ids and writes the text (no newline added). Invalid input is reported on stderr with exit code 1.
"""

import json
import sys

from absl import app, flags

from rwkvjax.data.errors import DataError
from rwkvjax.data.tokenizer import WorldTokenizer

_DECODE = flags.DEFINE_bool("decode", False, "Read a JSON list of ids and print the text.")
_BACKEND = flags.DEFINE_enum("backend", "auto", ["auto", "rust", "python"], "Tokenizer matcher.")


def run(data: bytes, decode: bool, tokenizer: WorldTokenizer) -> bytes:
  """Encodes UTF-8 `data` to a JSON list of ids, or decodes a JSON list of ids to UTF-8 text.

  Raises:
    DataError: for invalid UTF-8 text, malformed JSON or ids that do not decode.
  """
  if decode:
    try:
      ids = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(f"expected a JSON list of token ids: {e}", "<stdin>") from None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):  # pylint: disable=unidiomatic-typecheck
      raise DataError("expected a JSON list of integer token ids", "<stdin>")
    return tokenizer.decode(ids).encode("utf-8")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"input is not UTF-8: {e.reason} at byte {e.start}", "<stdin>") from None
  return json.dumps(tokenizer.encode(text)).encode() + b"\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    out = run(sys.stdin.buffer.read(), _DECODE.value, WorldTokenizer(backend=_BACKEND.value))
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  sys.stdout.buffer.write(out)
  return 0


if __name__ == "__main__":
  app.run(main)
