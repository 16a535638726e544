"""Tasks: what the train state holds, which parameters train, the loss, and what a run exports.

Pretraining is `Pretrain`. Other tasks (state tuning, PEFT, distillation) implement the same interface
and are selected by `TrainConfig.task`: a task config object with `build(train_cfg) -> Task`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax

from rwkvjax.config.train import TrainConfig
from rwkvjax.convert.checkpoints import export_model
from rwkvjax.models import get_model
from rwkvjax.models.params import ParamSpec, unflatten
from rwkvjax.training.loss import cross_entropy, lm_loss


class Task(Protocol):
  specs: list[ParamSpec]
  """Every tensor of the train state's params (the model's and the task's own), with optimizer tags."""

  def init_params(self, key: jax.Array) -> Any:
    """A fresh params tree (jit-able; the trainer shards it with out_shardings)."""

  def from_loaded(self, loaded: Any, loaded_cfg: Any, key: jax.Array) -> Any:
    """The params tree when the run starts from `TrainConfig.load_model` (host arrays)."""

  def trainable(self) -> Any:
    """Tree of bools shaped like the params: True where the parameter trains (others get no optimizer
    state and stay bit-identical)."""

  def loss(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(training loss, number of loss tokens) for one micro batch of arrays [B, T]."""

  def eval_loss(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(held-out cross-entropy, number of loss tokens)."""

  def export(self, params: Any, workdir: str, tag: str, dtype: str) -> list[str]:
    """Writes the run's model files for save point `tag` ("0", "1", ..., "final") from host params;
    returns the paths."""

  def sample_model(self, params: Any) -> tuple[Any, Any, Any]:
    """(params, model config, initial recurrent state or None) to sample text from."""


def _check_loaded(cfg: TrainConfig, loaded_cfg: Any) -> None:
  if dataclasses.replace(loaded_cfg, compute_dtype=cfg.model.compute_dtype) != cfg.model:
    raise ValueError(f"load_model {cfg.load_model} holds {loaded_cfg}, but the run's model is {cfg.model}")


@dataclasses.dataclass
class Pretrain:
  """Next-token prediction over all of the model's parameters: cross-entropy (+ L2Wrap) under the batch's
  loss mask."""

  cfg: TrainConfig

  def __post_init__(self):
    self.model = get_model(self.cfg.model.version)
    self.specs = self.model.param_specs(self.cfg.model)

  def init_params(self, key):
    return self.model.init(self.cfg.model, key)

  def from_loaded(self, loaded, loaded_cfg, key):
    del key
    _check_loaded(self.cfg, loaded_cfg)
    return loaded

  def trainable(self):
    return unflatten({s.name: True for s in self.specs})

  def logits(self, params, batch, remat):
    logits, _ = self.model.forward(params, self.cfg.model, batch["input_ids"], segment_ids=batch.get("segment_ids"),
                                   impl=self.cfg.impl, remat=remat, scan_layers=self.cfg.scan_layers)
    return logits

  def loss(self, params, batch):
    logits = self.logits(params, batch, self.cfg.remat)
    return lm_loss(logits, batch["targets"], batch["loss_mask"], l2wrap=self.cfg.l2wrap)

  def eval_loss(self, params, batch):
    return cross_entropy(self.logits(params, batch, "none"), batch["targets"], batch["loss_mask"])

  def export(self, params, workdir, tag, dtype):
    return [export_model(params, self.cfg.model, workdir, tag, dtype=dtype)]

  def sample_model(self, params):
    return params, self.cfg.model, None


def make_task(cfg: TrainConfig) -> Task:
  """The run's task: `cfg.task.build(cfg)`, or pretraining when cfg.task is None."""
  return Pretrain(cfg) if cfg.task is None else cfg.task.build(cfg)
