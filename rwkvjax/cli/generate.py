"""Sample text from an RWKV checkpoint (recurrent generation) or an HF Llama / Qwen2 model (KV cache).

  python -m rwkvjax.cli.generate --checkpoint MODEL.pth --prompt "The" [--max_new_tokens 200]
      [--temperature 1.0] [--top_p 0.85] [--top_k 0] [--seed 0] [--dtype float32|bfloat16]
  python -m rwkvjax.cli.generate --checkpoint HF_MODEL_DIR (--prompt "The" | --tokens 1,2,3) [same options]

RWKV uses the World tokenizer; generation stops early at the end-of-text token 0.
HF models: the prompt is encoded with the model directory's tokenizer.json (needs the `tokenizers` package);
without one, give token ids with --tokens and the new ids are printed. Generation stops at the config's
eos_token_id(s).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from rwkvjax.convert.hf import is_hf_model_dir, load_hf
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
_TOKENS = flags.DEFINE_string("tokens", None, "HF models: comma-separated prompt token ids (instead of --prompt "
                              "and the directory's tokenizer.json).")


def sample_text(params, cfg, prompt: str, *, max_new_tokens: int, temperature: float, top_p: float,
                top_k: int = 0, seed: int = 0, state=None) -> str:
  """Continues `prompt` (World tokenizer) from recurrent `state` (None: a fresh sequence); the text is cut
  at the first end-of-text token (id 0)."""
  tokenizer = default_tokenizer()
  ids = tokenizer.encode(prompt)
  if not ids:
    raise ValueError("the prompt is empty after tokenisation; give at least one character")
  if max(ids) >= cfg.vocab_size:
    raise ValueError(f"the prompt has token id {max(ids)} >= the model's vocab_size {cfg.vocab_size}")
  tokens, _ = generate(params, cfg, jnp.asarray([ids], jnp.int32), jax.random.key(seed),
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                       state=state)
  new = np.asarray(tokens[0])
  if (new == tokenizer.eod_id).any():
    new = new[: int(np.argmax(new == tokenizer.eod_id))]
  return tokenizer.decode_bytes(new).decode("utf-8", errors="replace")


def _eos_ids(model_dir: str) -> set[int]:
  """eos_token_id(s) of an HF model directory (config.json, then generation_config.json)."""
  ids: set[int] = set()
  for name in ("config.json", "generation_config.json"):
    path = os.path.join(model_dir, name)
    if os.path.isfile(path):
      with open(path) as f:
        eos = json.load(f).get("eos_token_id")
      ids.update([eos] if isinstance(eos, int) else (eos or []))
  return ids


def hf_tokenizer(model_dir: str):
  """The `tokenizers.Tokenizer` of model_dir/tokenizer.json, or None when there is none (or no package)."""
  path = os.path.join(model_dir, "tokenizer.json")
  if not os.path.isfile(path):
    return None
  try:
    import tokenizers  # optional: not a core requirement
  except ImportError:
    return None
  return tokenizers.Tokenizer.from_file(path)


def sample_hf(model_dir: str, *, prompt: str | None, token_ids: list[int] | None, max_new_tokens: int,
              temperature: float, top_p: float, top_k: int = 0, seed: int = 0, dtype: str = "float32"
              ) -> tuple[list[int], str | None]:
  """Continues a prompt with an HF Llama / Qwen2 model through the KV cache. Returns the new ids (cut at the
  first eos) and their text (None without a tokenizer)."""
  params, cfg = load_hf(model_dir, compute_dtype=dtype)
  tokenizer = hf_tokenizer(model_dir)
  if token_ids is None:
    if tokenizer is None:
      raise ValueError(f"{model_dir} has no tokenizer.json (or the `tokenizers` package is not installed): "
                       "give the prompt as token ids with --tokens")
    token_ids = tokenizer.encode(prompt).ids
  if not token_ids:
    raise ValueError("the prompt is empty; give at least one token")
  if min(token_ids) < 0 or max(token_ids) >= cfg.vocab_size:
    raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size}), got [{min(token_ids)}, {max(token_ids)}]")
  tokens, _ = generate(params, cfg, jnp.asarray([token_ids], jnp.int32), jax.random.key(seed),
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
  new = [int(t) for t in np.asarray(tokens[0])]
  eos = _eos_ids(model_dir)
  cut = next((i for i, t in enumerate(new) if t in eos), len(new))
  new = new[:cut]
  return new, (tokenizer.decode(new) if tokenizer is not None else None)


def main(argv):
  del argv
  if is_hf_model_dir(_CHECKPOINT.value):
    ids = [int(t) for t in _TOKENS.value.replace(" ", "").split(",") if t] if _TOKENS.value else None
    new, text = sample_hf(_CHECKPOINT.value, prompt=_PROMPT.value, token_ids=ids, max_new_tokens=_MAX_NEW.value,
                          temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value, seed=_SEED.value,
                          dtype=_DTYPE.value)
    print(" ".join(map(str, new)) if text is None else (_PROMPT.value if ids is None else "") + text)
    return
  params, cfg = load_pth(_CHECKPOINT.value)
  cfg = cfg.__class__(**{**cfg.__dict__, "compute_dtype": _DTYPE.value})
  text = sample_text(params, cfg, _PROMPT.value, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                     top_p=_TOP_P.value, top_k=_TOP_K.value, seed=_SEED.value)
  print(_PROMPT.value + text)


if __name__ == "__main__":
  app.run(main)
