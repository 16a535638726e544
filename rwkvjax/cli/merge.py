"""Fold an adapter checkpoint and/or a state file into an RWKV-LM `.pth` (RWKV-PEFT's merge scripts).

  python -m rwkvjax.cli.merge --base_model BASE.pth --peft_checkpoint rwkv-final.pth --output MERGED.pth
      [--lora_init init_pissa.pth] [--lora_alpha 32] [--state_checkpoint STATE.pth] [--dtype bfloat16]
  python -m rwkvjax.cli.merge --base_model BASE.pth --state_checkpoint rwkv-final.pth --output MERGED.pth
  python -m rwkvjax.cli.merge --unmerge --base_model MERGED.pth --peft_checkpoint rwkv-final.pth --output BASE.pth

The method is read from the checkpoint's keys (RWKV-PEFT names): `lora_A/lora_B` (LoRA, scale alpha / r;
PiSSA when an init is given or found), `disha` [r, out] (Bone) or [in/r, r, r] (BAT), fully trained
parts by their RWKV-LM keys, and `blocks.N.att.time_state` (added to the output: the `rwkv` package loads it
for RWKV-5/6; for RWKV-7 set the initial state from it, or give the state file to rwkvjax.cli.generate).
lora_alpha and PiSSA's init default to the `peft_config.json` and `init_pissa.pth` beside the checkpoint
(written by rwkvjax runs). RWKV-PEFT's flag names work: --lora_checkpoint, --pissa_init, --type (ignored).
"""

from __future__ import annotations

from absl import app, flags

from rwkvjax.peft import files

_BASE = flags.DEFINE_string("base_model", None, "Base RWKV-LM .pth (the merged model with --unmerge).", required=True)
_PEFT = flags.DEFINE_string("peft_checkpoint", None, "Adapter checkpoint (LoRA / PiSSA / DiSHA tensors, trained "
                            "parts; may also hold time_state).")
_INIT = flags.DEFINE_string("lora_init", None, "PiSSA's init_pissa.pth (default: the one beside the checkpoint).")
_STATE = flags.DEFINE_string("state_checkpoint", None, "State file (blocks.N.att.time_state).")
_ALPHA = flags.DEFINE_float("lora_alpha", None, "LoRA alpha (default: from peft_config.json beside the checkpoint).")
_OUTPUT = flags.DEFINE_string("output", None, "Output .pth.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", None, ["bfloat16", "float32", "float16"], "Output dtype (default: the base's).")
_UNMERGE = flags.DEFINE_bool("unmerge", False, "Take the adapters back out of --base_model instead.")
_TYPE = flags.DEFINE_string("type", None, "Accepted for RWKV-PEFT compatibility; the method comes from the keys.")
flags.DEFINE_alias("lora_checkpoint", "peft_checkpoint")
flags.DEFINE_alias("pissa_init", "lora_init")


def main(argv):
  del argv
  files.merge_files(_BASE.value, _OUTPUT.value, peft_checkpoint=_PEFT.value, lora_init=_INIT.value,
                    state_checkpoint=_STATE.value, lora_alpha=_ALPHA.value, dtype=_DTYPE.value, unmerge=_UNMERGE.value)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
