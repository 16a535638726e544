"""Sample text from an RWKV checkpoint (recurrent generation) or an HF Llama / Qwen2 model (KV cache).

  python -m rwkvjax.cli.generate --checkpoint MODEL.pth --prompt "The" [--max_new_tokens 200]
      [--temperature 1.0] [--top_p 0.85] [--top_k 0] [--seed 0] [--dtype float32|bfloat16]
      [--state_file STATE.pth]
  python -m rwkvjax.cli.generate --checkpoint HF_MODEL_DIR (--prompt "The" | --tokens 1,2,3) [same options]

RWKV uses the World tokenizer; generation stops early at the end-of-text token 0. The sequence starts from
the learned initial state of --state_file (RWKV-PEFT's blocks.N.att.time_state keys), or from the time_state
keys merged into the checkpoint, else from zeros.
HF models: the prompt is encoded with the model directory's tokenizer.json (needs the `tokenizers` package);
without one, give token ids with --tokens and the new ids are printed. Generation stops at the config's
eos_token_id(s).
"""

from __future__ import annotations

from absl import app, flags

from rwkvjax.convert.hf import is_hf_model_dir
from rwkvjax.inference.text import sample_hf, sample_text
from rwkvjax.models import get_model
from rwkvjax.peft.files import load_model_and_state
from rwkvjax.peft.state_tuning import initial_state

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "RWKV-LM .pth checkpoint.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "\n", "Prompt text (World tokenizer).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Number of tokens to sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
_TOP_P = flags.DEFINE_float("top_p", 0.85, "Nucleus sampling threshold.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep at most k tokens (0: no limit).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STATE_FILE = flags.DEFINE_string("state_file", None, "RWKV: start from this learned state (state-tuning file).")
_TOKENS = flags.DEFINE_string("tokens", None, "HF models: comma-separated prompt token ids (instead of --prompt "
                              "and the directory's tokenizer.json).")


def main(argv):
  del argv
  if is_hf_model_dir(_CHECKPOINT.value):
    ids = [int(t) for t in _TOKENS.value.replace(" ", "").split(",") if t] if _TOKENS.value else None
    new, text = sample_hf(_CHECKPOINT.value, prompt=_PROMPT.value, token_ids=ids, max_new_tokens=_MAX_NEW.value,
                          temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value, seed=_SEED.value,
                          dtype=_DTYPE.value)
    print(" ".join(map(str, new)) if text is None else (_PROMPT.value if ids is None else "") + text)
    return
  params, cfg, time_state = load_model_and_state(_CHECKPOINT.value, _STATE_FILE.value)
  cfg = cfg.__class__(**{**cfg.__dict__, "compute_dtype": _DTYPE.value})
  state = None if time_state is None else initial_state(get_model(cfg.version), cfg, time_state, 1)
  text = sample_text(params, cfg, _PROMPT.value, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                     top_p=_TOP_P.value, top_k=_TOP_K.value, seed=_SEED.value, state=state)
  print(_PROMPT.value + text)


if __name__ == "__main__":
  app.run(main)
