"""Frozen dataclass schemas for models, data, optimisation and training."""

from rwkvjax.config.model import ModelConfig

__all__ = ["ModelConfig"]
