"""Experiment configs, addressable from the command line as `--config config:NAME`."""

from experiments.base import pretrain, with_sample
from experiments.demo import demo
from experiments.rwkv7_minipile import minipile

__all__ = ["pretrain", "with_sample", "demo", "minipile"]
