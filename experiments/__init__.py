"""Experiment configs, addressable from the command line as `--config config:NAME` (fiddlers as
`--config fiddler:NAME`)."""

from experiments.base import pretrain, with_sample
from experiments.demo import demo
from experiments.distill import distill_stage1, distill_stage2, distill_stage3, distill_teacher
from experiments.rwkv7_minipile import minipile

CONFIGS = ("pretrain", "demo", "minipile")
CONFIGS += ("distill_teacher", "distill_stage1", "distill_stage2", "distill_stage3")
FIDDLERS = ("with_sample",)

__all__ = [*CONFIGS, *FIDDLERS]
