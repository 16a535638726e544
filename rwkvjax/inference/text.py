"""Text in, text out: prompts encoded with the model's tokenizer, continued with recurrent (RWKV) or KV-cache
(transformer) generation, decoded back to text."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from rwkvjax.convert.hf import load_hf
from rwkvjax.data.tokenizer import default_tokenizer
from rwkvjax.inference.generate import generate


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
