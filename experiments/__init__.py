"""Experiment configs, addressable from the command line as `--config config:NAME` (fiddlers as
`--config fiddler:NAME`)."""

from experiments.base import pretrain, with_sample
from experiments.demo import demo
from experiments.llama import llama_demo, llama_pretrain
from experiments.distill import distill_stage1, distill_stage2, distill_stage3, distill_teacher
from experiments.rwkv7_minipile import minipile
from experiments.peft import (peft_bat, peft_bone, peft_cmp_bone64, peft_cmp_lora4, peft_cmp_lora32,
                              peft_cmp_none, peft_cmp_pissa32, peft_cmp_state, peft_lora, peft_none, peft_pissa,
                              peft_state, rwkv_peft)

CONFIGS = ("pretrain", "demo", "minipile", "llama_pretrain", "llama_demo")
CONFIGS += ("distill_teacher", "distill_stage1", "distill_stage2", "distill_stage3")
CONFIGS += ("peft_state", "peft_lora", "peft_pissa", "peft_bone", "peft_bat", "peft_none", "peft_cmp_none",
            "peft_cmp_state", "peft_cmp_lora4", "peft_cmp_bone64", "peft_cmp_pissa32", "peft_cmp_lora32")
FIDDLERS = ("with_sample",)
FIDDLERS += ("rwkv_peft",)

__all__ = [*CONFIGS, *FIDDLERS]
