"""Sample text from an RWKV checkpoint with recurrent generation.

  python -m rwkvjax.cli.generate --checkpoint MODEL.pth --prompt "The" [--max_new_tokens 200]
      [--temperature 1.0] [--top_p 0.85] [--top_k 0] [--seed 0] [--dtype float32|bfloat16]

Uses the RWKV World tokenizer; generation stops early at the end-of-text token 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from rwkvjax.convert.rwkv_pth import load_pth
from rwkvjax.data.tokenizer import default_tokenizer
from rwkvjax.inference.generate import generate

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "RWKV-LM .pth checkpoint.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "\n", "Prompt text (World tokenizer).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Number of tokens to sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
_TOP_P = flags.DEFINE_float("top_p", 0.85, "Nucleus sampling threshold.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep at most k tokens (0: no limit).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def sample_text(params, cfg, prompt: str, *, max_new_tokens: int, temperature: float, top_p: float,
                top_k: int = 0, seed: int = 0) -> str:
  """Continues `prompt`; the text is cut at the first end-of-text token (id 0)."""
  tokenizer = default_tokenizer()
  ids = tokenizer.encode(prompt)
  if not ids:
    raise ValueError("the prompt is empty after tokenisation; give at least one character")
  if max(ids) >= cfg.vocab_size:
    raise ValueError(f"the prompt has token id {max(ids)} >= the model's vocab_size {cfg.vocab_size}")
  tokens, _ = generate(params, cfg, jnp.asarray([ids], jnp.int32), jax.random.key(seed),
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
  new = np.asarray(tokens[0])
  if (new == tokenizer.eod_id).any():
    new = new[: int(np.argmax(new == tokenizer.eod_id))]
  return tokenizer.decode_bytes(new).decode("utf-8", errors="replace")


def main(argv):
  del argv
  params, cfg = load_pth(_CHECKPOINT.value)
  cfg = cfg.__class__(**{**cfg.__dict__, "compute_dtype": _DTYPE.value})
  text = sample_text(params, cfg, _PROMPT.value, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                     top_p=_TOP_P.value, top_k=_TOP_K.value, seed=_SEED.value)
  print(_PROMPT.value + text)


if __name__ == "__main__":
  app.run(main)
