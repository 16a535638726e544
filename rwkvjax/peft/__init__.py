"""Parameter-efficient fine-tuning: state tuning (learned initial WKV states) and weight adapters (LoRA,
PiSSA, DiSHA-Bone, BAT), with RWKV-PEFT-compatible files and merging. See docs/peft.md."""

from rwkvjax.peft.tasks import Peft, PeftConfig, StateTune, StateTuneConfig

__all__ = ["Peft", "PeftConfig", "StateTune", "StateTuneConfig"]
