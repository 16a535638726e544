"""Experiment configs, addressable from the command line as `--config config:NAME` (fiddlers as
`--config fiddler:NAME`)."""

from experiments.base import pretrain, with_sample
from experiments.demo import demo
from experiments.rwkv7_minipile import minipile

CONFIGS = ("pretrain", "demo", "minipile")
FIDDLERS = ("with_sample",)

__all__ = [*CONFIGS, *FIDDLERS]
