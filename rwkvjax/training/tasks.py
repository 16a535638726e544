"""Tasks: which parameters train and what the loss is. Pretraining here; distillation, state tuning and
PEFT plug in as further Task implementations."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax

from rwkvjax.config.train import TrainConfig
from rwkvjax.models import get_model
from rwkvjax.models.params import ParamSpec, unflatten
from rwkvjax.training.loss import cross_entropy, lm_loss


class Task(Protocol):
  def trainable(self, specs: list[ParamSpec]) -> dict[str, Any]:
    """Tree of bools shaped like the params: True where the parameter trains."""

  def loss(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(training loss, number of loss tokens) for one micro batch of arrays [B, T]."""

  def eval_loss(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(held-out cross-entropy, number of loss tokens)."""


@dataclasses.dataclass(frozen=True)
class Pretrain:
  """Next-token prediction over all parameters: cross-entropy (+ L2Wrap) with the batch's loss mask."""

  cfg: TrainConfig

  def trainable(self, specs):
    return unflatten({s.name: True for s in specs})

  def _logits(self, params, batch, remat):
    model = get_model(self.cfg.model.version)
    logits, _ = model.forward(params, self.cfg.model, batch["input_ids"], segment_ids=batch.get("segment_ids"),
                              impl=self.cfg.impl, remat=remat)
    return logits

  def loss(self, params, batch):
    logits = self._logits(params, batch, self.cfg.remat)
    return lm_loss(logits, batch["targets"], batch["loss_mask"], l2wrap=self.cfg.l2wrap)

  def eval_loss(self, params, batch):
    return cross_entropy(self._logits(params, batch, "none"), batch["targets"], batch["loss_mask"])
