"""Logits of any RWKV checkpoint or HF Llama / Qwen2 model, for checking it against other implementations.

  python -m rwkvjax.cli.logits --checkpoint MODEL.pth --tokens TOKENS.npy --out OUT.npz [--mode parallel|recurrent]
  python -m rwkvjax.cli.logits --checkpoint HF_MODEL_DIR --tokens TOKENS.npy --out OUT.npz [--mode ...]

RWKV: writes `logits` [T, vocab] float32 and the final recurrent state in the official `rwkv` package's layout:
`state_att_x_prev` [L, C], `state_wkv` [L, H, N, N] (x070: [layer, head, value, key]; x052/x060: [layer, head,
key, value]), `state_ffn_x_prev` [L, C].
The version is detected from the checkpoint's keys.
HF (a directory with config.json and safetensors): writes `logits` [T, vocab] float32 only; recurrent mode
decodes one token at a time through the KV cache.
"""

from __future__ import annotations

from absl import app, flags, logging

from rwkvjax.convert.hf import is_hf_model_dir, load_hf
from rwkvjax.convert.rwkv_pth import load_pth
from rwkvjax.fileio import save_npz_atomic
from rwkvjax.inference.scoring import load_tokens, run, run_transformer

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "RWKV-LM .pth checkpoint (fp32, bf16 or fp16), or an HF "
                                  "Llama / Qwen2 model directory (config.json + safetensors).", required=True)
_TOKENS = flags.DEFINE_string("tokens", None, ".npy file of token ids, shape [T].", required=True)
_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_MODE = flags.DEFINE_enum("mode", "parallel", ["parallel", "recurrent"],
                          "parallel: one forward over the sequence; recurrent: one token at a time.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_IMPL = flags.DEFINE_string("impl", "auto", "WKV backend (see rwkvjax.ops.wkv7); for HF models the attention "
                            "backend: auto, xla or cudnn.")


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
