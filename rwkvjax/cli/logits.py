"""Logits of any RWKV checkpoint or HF Llama / Qwen2 model, for checking it against other implementations.

  python -m rwkvjax.cli.logits --checkpoint MODEL.pth --tokens TOKENS.npy --out OUT.npz [--mode parallel|recurrent]
  python -m rwkvjax.cli.logits --checkpoint HF_MODEL_DIR --tokens TOKENS.npy --out OUT.npz [--mode ...]

RWKV: writes `logits` [T, vocab] float32 and the final recurrent state in the official `rwkv` package's layout:
`state_att_x_prev` [L, C], `state_wkv` [L, H, N, N] (x070: [layer, head, value, key]), `state_ffn_x_prev` [L, C].
The version is detected from the checkpoint's keys.
HF (a directory with config.json and safetensors): writes `logits` [T, vocab] float32 only; recurrent mode
decodes one token at a time through the KV cache.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from rwkvjax.convert.hf import is_hf_model_dir, load_hf
from rwkvjax.convert.rwkv_pth import load_pth
from rwkvjax.fileio import save_npz_atomic
from rwkvjax.models import get_model, transformer

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "RWKV-LM .pth checkpoint (fp32, bf16 or fp16), or an HF "
                                  "Llama / Qwen2 model directory (config.json + safetensors).", required=True)
_TOKENS = flags.DEFINE_string("tokens", None, ".npy file of token ids, shape [T].", required=True)
_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_MODE = flags.DEFINE_enum("mode", "parallel", ["parallel", "recurrent"],
                          "parallel: one forward over the sequence; recurrent: one token at a time.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_IMPL = flags.DEFINE_string("impl", "auto", "WKV backend (see rwkvjax.ops.wkv7); for HF models the attention "
                            "backend: auto, xla or cudnn.")


def load_tokens(path: str, vocab_size: int) -> np.ndarray:
  """Reads a 1-D integer .npy of token ids and checks them against the vocabulary."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--tokens {path} does not exist")
  tokens = np.load(path)
  if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"--tokens {path}: expected a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
  if tokens.size == 0:
    raise ValueError(f"--tokens {path}: is empty")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(f"--tokens {path}: ids must be in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
  return tokens.astype(np.int32)


def run(params, cfg, tokens: np.ndarray, mode: str, impl: str = "auto"):
  """Returns (logits [T, V] float32, state dict in the official layout) for one sequence."""
  model = get_model(cfg.version)
  toks = jnp.asarray(tokens)[None]
  if mode == "parallel":
    logits, state = jax.jit(lambda p, t: model.forward(p, cfg, t, impl=impl))(params, toks)
    logits = logits[0]
  else:
    def scan_tokens(p, t):
      def body(state, tok):
        logits, state = model.step(p, cfg, tok[None], state, impl=impl)
        return state, logits[0]
      state, logits = jax.lax.scan(body, model.init_state(cfg, 1), t[0])
      return logits, state
    logits, state = jax.jit(scan_tokens)(params, toks)
  return np.asarray(logits, np.float32), {k: np.asarray(v, np.float32) for k, v in model.official_state(state).items()}


def run_transformer(params, cfg, tokens: np.ndarray, mode: str, impl: str = "auto") -> np.ndarray:
  """Logits [T, V] float32 of an HF-family model for one sequence (recurrent: through the KV cache)."""
  toks = jnp.asarray(tokens)[None]
  # float32 means float32 matmuls: on GPU the default precision is TF32 (measured on an H100: 1e-2 from
  # transformers' logits on the fixtures, against 5e-6 with "highest").
  precision = "highest" if cfg.compute_dtype == "float32" else "default"
  with jax.default_matmul_precision(precision):
    if mode == "parallel":
      logits, _ = jax.jit(lambda p, t: transformer.forward(p, cfg, t, impl=impl))(params, toks)
    else:
      def scan_tokens(p, t):
        def body(cache, tok):
          logits, cache = transformer.step(p, cfg, tok[None], cache)
          return cache, logits[0]
        _, logits = jax.lax.scan(body, transformer.init_cache(cfg, 1, t.shape[1]), t[0])
        return logits[None]
      logits = jax.jit(scan_tokens)(params, toks)
  return np.asarray(logits[0], np.float32)


def main(argv):
  del argv
  if is_hf_model_dir(_CHECKPOINT.value):
    params, cfg = load_hf(_CHECKPOINT.value, compute_dtype=_DTYPE.value)
    tokens = load_tokens(_TOKENS.value, cfg.vocab_size)
    logging.info("%s: %s, %d tokens, mode=%s", _CHECKPOINT.value, cfg, tokens.size, _MODE.value)
    logits = run_transformer(params, cfg, tokens, _MODE.value, _IMPL.value)
    save_npz_atomic(_OUT.value, logits=logits)
    print(f"wrote {_OUT.value}: logits {logits.shape}")
    return
  params, cfg = load_pth(_CHECKPOINT.value)
  cfg = cfg.__class__(**{**cfg.__dict__, "compute_dtype": _DTYPE.value})
  tokens = load_tokens(_TOKENS.value, cfg.vocab_size)
  logging.info("%s: %s, %d tokens, mode=%s", _CHECKPOINT.value, cfg, tokens.size, _MODE.value)
  logits, state = run(params, cfg, tokens, _MODE.value, _IMPL.value)
  save_npz_atomic(_OUT.value, logits=logits, **state)
  print(f"wrote {_OUT.value}: logits {logits.shape}, state_wkv {state['state_wkv'].shape}")


if __name__ == "__main__":
  app.run(main)
