"""State tuning and PEFT as trainer tasks (see rwkvjax.training.tasks for the Task interface).

`TrainConfig.task = StateTuneConfig(...)` or `PeftConfig(...)`; `build(train_cfg)` returns the Task. The
base model comes from `TrainConfig.load_model` (an RWKV-LM .pth), or the official init when it is empty.
Only the task's trainable tensors get optimizer state; every other parameter is frozen: the loss sees it
through `stop_gradient` (so no gradient is computed for it and the global-norm clip counts only trainable
tensors) and the optimizer leaves it bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.train import TrainConfig
from rwkvjax.convert.rwkv_pth import save_pth
from rwkvjax.convert.torch_zip import save_state_dict
from rwkvjax.models import get_model
from rwkvjax.models.params import ParamSpec, flatten, init_params, unflatten
from rwkvjax.peft import adapters, files, state_tuning
from rwkvjax.training.loss import cross_entropy, lm_loss

EXPORT_MERGED = ("none", "final", "all")
PEFT_METHODS = adapters.METHODS + ("none",)


def _check_export_merged(owner: str, value: str) -> None:
  if value not in EXPORT_MERGED:
    raise ValueError(f"{owner}.export_merged={value!r}: expected one of {EXPORT_MERGED}")


@dataclasses.dataclass(frozen=True)
class StateTuneConfig:
  """State tuning (RWKV-PEFT `--train_type state`): only `blocks.{l}.att.time_state` [H, N, N] trains.

  Attributes:
    load: start from this state file (RWKV-PEFT time_state keys) instead of zeros.
    export_merged: also write `rwkv-{tag}-merged.pth` (base model + time_state keys, as RWKV-PEFT's
      merge_state.py) at "final", at "all" save points, or "none".
  """

  load: str = ""
  export_merged: str = "final"

  def __post_init__(self):
    _check_export_merged("StateTuneConfig", self.export_merged)

  def build(self, train_cfg: TrainConfig) -> "StateTune":
    return StateTune(train_cfg, self)


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Adapters on linear layers (RWKV-PEFT `--peft`), plus fully trained parts.

  Attributes:
    method: "lora", "pissa", "bone" (DiSHA-Bone), "bat" (Bone v1 / DiSHA-BAT) or "none" (only train_parts;
      with no parts nothing trains: the untuned baseline).
    r: rank (LoRA/PiSSA) or block size (Bone/BAT). Equal trainable parameters: Bone r = 2 x LoRA r.
    alpha: LoRA scale alpha / r (PiSSA uses 1).
    targets: regex (re.search) over per-block linear weight names, e.g. "att\\.(key|value)".
    train_parts: parameters whose name contains one of these also train in full (RWKV-PEFT --train_parts:
      "ln", "time", "emb", "head").
    svd_niter: PiSSA randomised-SVD power iterations.
    load: start from this adapter checkpoint (RWKV-PEFT lora_load / pissa_load / disha load).
    pissa_init: PiSSA's init_pissa.pth to go with `load`.
    export_merged: also write `rwkv-{tag}-merged.pth` (adapters folded into an RWKV-LM model).
  """

  method: str = "lora"
  r: int = 32
  alpha: float = 32.0
  targets: str = adapters.DEFAULT_TARGETS
  train_parts: tuple[str, ...] = ("time", "ln")
  svd_niter: int = 4
  load: str = ""
  pissa_init: str = ""
  export_merged: str = "final"

  def __post_init__(self):
    object.__setattr__(self, "train_parts", tuple(self.train_parts))
    if self.method not in PEFT_METHODS:
      raise ValueError(f"PeftConfig.method={self.method!r}: expected one of {PEFT_METHODS}")
    if not isinstance(self.r, int) or self.r < 1:
      raise ValueError(f"PeftConfig.r={self.r!r}: expected a positive int")
    if self.svd_niter < 0:
      raise ValueError(f"PeftConfig.svd_niter={self.svd_niter}: expected >= 0")
    if self.pissa_init and self.method != "pissa":
      raise ValueError(f"PeftConfig.pissa_init is only for method='pissa' (method={self.method!r})")
    if any(not isinstance(p, str) or not p for p in self.train_parts):
      raise ValueError(f"PeftConfig.train_parts={self.train_parts!r}: expected non-empty strings")
    _check_export_merged("PeftConfig", self.export_merged)

  @classmethod
  def from_rwkv_peft(cls, peft: str, config: str = "", train_parts=("time", "ln"), **fields) -> "PeftConfig":
    """From RWKV-PEFT's command-line values: `--peft lora|pissa|disha|bone|none` and its JSON config
    (`--lora_config`, `--pissa_config`, `--disha_config`, the older `--bone_config`)."""
    c = json.loads(config) if config else {}
    if peft == "lora":
      if float(c.get("lora_dropout", 0.0)) != 0.0:
        raise ValueError("lora_dropout is not supported (adapters are merged into the weights); use 0.0")
      kw = dict(method="lora", r=int(c.get("lora_r", 32)), alpha=float(c.get("lora_alpha", 32)),
                load=c.get("lora_load", ""))
    elif peft == "pissa":
      kw = dict(method="pissa", r=int(c.get("pissa_r", 32)), svd_niter=int(c.get("svd_niter", 4)),
                load=c.get("pissa_load", ""), pissa_init=c.get("pissa_init", ""))
    elif peft == "disha":
      kw = dict(method=c.get("mode", "bone"), r=int(c.get("r", 64)), load=c.get("load", ""))
    elif peft == "bone":
      kw = dict(method=c.get("bone_mode", "bone"), r=int(c.get("bone_r", 64)), load=c.get("bone_load", ""))
    elif peft == "none":
      kw = dict(method="none")
    else:
      raise ValueError(f"peft={peft!r}: expected lora, pissa, disha, bone or none")
    return cls(**{**kw, "train_parts": tuple(train_parts), **fields})

  def build(self, train_cfg: TrainConfig) -> "Peft":
    return Peft(train_cfg, self)


class _FineTune:
  """What state tuning and PEFT share: the base model, frozen parameters, loading."""

  task_cfg: Any

  def __init__(self, cfg: TrainConfig, task_cfg: Any, own_specs: list[ParamSpec], trainable: set[str]):
    self.cfg = cfg
    self.task_cfg = task_cfg
    self.model = get_model(cfg.model.version)
    self.model_specs = self.model.param_specs(cfg.model)
    self.own_specs = own_specs
    self.specs = self.model_specs + own_specs
    self.trainable_names = frozenset(trainable)

  @staticmethod
  def _check_model(cfg: TrainConfig, what: str) -> None:
    if not isinstance(cfg.model, ModelConfig):
      raise ValueError(f"{what} needs an RWKV model (ModelConfig); got {type(cfg.model).__name__}")

  # ---- the Task interface
  def trainable(self):
    return unflatten({s.name: s.name in self.trainable_names for s in self.specs})

  def from_loaded(self, loaded, loaded_cfg, key):
    shapes = lambda c: [(s.name, s.shape) for s in get_model(c.version).param_specs(c)]
    run = self.cfg.model
    same = (loaded_cfg.version == run.version and loaded_cfg.n_layer == run.n_layer
            and loaded_cfg.head_size == run.head_size and shapes(loaded_cfg) == shapes(run))
    if not same:
      raise ValueError(f"load_model {self.cfg.load_model} holds {loaded_cfg}, but the run's model is {run}")
    return jax.jit(self._add_own)(loaded, key)

  def init_params(self, key):
    k_model, k_own = jax.random.split(key)
    return self._add_own(self.model.init(self.cfg.model, k_model), k_own)

  def eval_loss(self, params, batch):
    logits = self._logits(params, batch, "none")
    return cross_entropy(logits, batch["targets"], batch["loss_mask"])

  def loss(self, params, batch):
    logits = self._logits(self._freeze(params), batch, self.cfg.remat)
    return lm_loss(logits, batch["targets"], batch["loss_mask"], l2wrap=self.cfg.l2wrap)

  # ---- helpers
  def _freeze(self, params):
    flat = flatten(params)
    return unflatten({k: v if k in self.trainable_names else jax.lax.stop_gradient(v) for k, v in flat.items()})

  def _forward(self, model_params, batch, state, remat, reset_state=None):
    logits, _ = self.model.forward(model_params, self.cfg.model, batch["input_ids"], state,
                                   segment_ids=batch.get("segment_ids"), reset_state=reset_state,
                                   impl=self.cfg.impl, remat=remat, scan_layers=self.cfg.scan_layers)
    return logits

  def _trainable_entries(self, flat) -> dict[str, np.ndarray]:
    specs = [s for s in self.specs if s.name in self.trainable_names]
    return files.to_pth_entries(flat, specs)

  def _export_merged(self, tag: str) -> bool:
    return self.task_cfg.export_merged == "all" or (self.task_cfg.export_merged == "final" and tag == "final")


class StateTune(_FineTune):
  """Trains `blocks.att.time_state` (RWKV-PEFT layout [H, value, key] per layer), the WKV state every row and
  every packed document starts from; the model is frozen."""

  def __init__(self, cfg: TrainConfig, task_cfg: StateTuneConfig):
    self._check_model(cfg, "state tuning")
    super().__init__(cfg, task_cfg, [state_tuning.state_spec(cfg.model)], {state_tuning.STATE_NAME})
    self._loaded_state = None
    if task_cfg.load:
      ts = files.load_state_file(task_cfg.load)
      want = (cfg.model.n_layer, cfg.model.n_head, cfg.model.head_size, cfg.model.head_size)
      if ts.shape != want:
        raise ValueError(f"StateTuneConfig.load={task_cfg.load}: time_state {ts.shape}; the model needs {want}")
      self._loaded_state = ts

  def _add_own(self, model_params, key):
    del key
    flat = flatten(model_params)
    L = self.cfg.model.n_layer
    shape = (L,) + self.own_specs[0].shape
    flat[state_tuning.STATE_NAME] = (jnp.zeros(shape, jnp.float32) if self._loaded_state is None
                                     else jnp.asarray(self._loaded_state, jnp.float32))
    return unflatten(flat)

  @staticmethod
  def split(params) -> tuple[Any, jax.Array]:
    """(model params, time_state [L, H, N, N])."""
    flat = flatten(params)
    ts = flat.pop(state_tuning.STATE_NAME)
    return unflatten(flat), ts

  def _logits(self, params, batch, remat):
    model_params, ts = self.split(params)
    state = state_tuning.initial_state(self.model, self.cfg.model, ts, batch["input_ids"].shape[0])
    # Packed documents after a row's first restart from the learned state too (the WKV op's reset_state).
    reset = None if batch.get("segment_ids") is None else state_tuning.wkv_states(ts)
    return self._forward(model_params, batch, state, remat, reset)

  def export(self, params, workdir, tag, dtype):
    model_params, ts = self.split(params)
    path = os.path.join(workdir, f"rwkv-{tag}.pth")
    files.save_state_file(path, np.asarray(ts))
    paths = [path]
    if self._export_merged(tag):
      merged = os.path.join(workdir, f"rwkv-{tag}-merged.pth")
      from rwkvjax.convert.rwkv_pth import state_dict_from_params
      sd = state_dict_from_params(model_params, self.cfg.model, dtype)
      sd.update(files.to_pth_entries(flatten(params), self.own_specs))
      save_state_dict(sd, merged)
      paths.append(merged)
    return paths

  def sample_model(self, params):
    model_params, ts = self.split(params)
    return model_params, self.cfg.model, state_tuning.initial_state(self.model, self.cfg.model, ts, 1)


class Peft(_FineTune):
  """LoRA / PiSSA / Bone / BAT adapters merged into their weights in the forward (W + ΔW, cast to the
  compute dtype), plus fully trained `train_parts`; everything else frozen."""

  def __init__(self, cfg: TrainConfig, task_cfg: PeftConfig):
    self._check_model(cfg, "PEFT")
    model_specs = get_model(cfg.model.version).param_specs(cfg.model)
    method = task_cfg.method
    self.targets = [] if method == "none" else adapters.find_targets(model_specs, task_cfg.targets)
    own = [] if method == "none" else adapters.adapter_specs(method, task_cfg.r, self.targets)
    train_suffixes = () if method == "none" else adapters.ADAPTER_TENSORS[method][0]
    trainable = {s.name for s in own if s.name.rsplit(".", 1)[-1] in train_suffixes}
    trainable |= {s.name for s in model_specs if any(p in s.name for p in task_cfg.train_parts)}
    super().__init__(cfg, task_cfg, own, trainable)
    self.method = method
    self._loaded = self._read_load_files()

  @property
  def alpha(self) -> float | None:
    return self.task_cfg.alpha if self.method == "lora" else None

  def _read_load_files(self) -> dict[str, np.ndarray]:
    c, n_layer = self.task_cfg, self.cfg.model.n_layer
    loaded: dict[str, np.ndarray] = {}
    if c.load:
      sd = files.load_peft_file(c.load)
      loaded.update(files.from_pth_entries(sd, self.specs, n_layer, source=c.load))
      if not any(s.name in loaded for s in self.own_specs if s.name in self.trainable_names) and self.own_specs:
        raise ValueError(f"PeftConfig.load={c.load}: holds no {self.method} tensors for the targets")
    if c.pissa_init:
      sd = files.load_peft_file(c.pissa_init)
      init_specs = [s for s in self.own_specs if s.name.rsplit(".", 1)[-1].startswith("init_")]
      got = files.from_pth_entries(sd, init_specs, n_layer, source=c.pissa_init)
      if len(got) != len(init_specs):
        raise ValueError(f"PeftConfig.pissa_init={c.pissa_init}: lacks init_lora_A/B of some targets")
      loaded.update(got)
    if self.method == "pissa" and c.load and not c.pissa_init and not any("init_lora" in k for k in loaded):
      raise ValueError("PeftConfig: method='pissa' with `load` needs `pissa_init` (the init_pissa.pth of that run)")
    return loaded

  def _add_own(self, model_params, key):
    flat = flatten(model_params)
    k_init, k_svd = jax.random.split(key)
    own = flatten(init_params(self.own_specs, self.cfg.model, k_init)) if self.own_specs else {}
    if self.method == "pissa" and not self._loaded:
      keys = jax.random.split(k_svd, len(self.targets))
      for t, k in zip(self.targets, keys):
        A, B = adapters.pissa_init(flat[t.weight], self.task_cfg.r, self.task_cfg.svd_niter, k)
        own.update({t.name("lora_A"): A, t.name("lora_B"): B, t.name("init_lora_A"): A, t.name("init_lora_B"): B})
    flat.update(own)
    flat.update({k: jnp.asarray(v, jnp.float32) for k, v in self._loaded.items()})
    return unflatten(flat)

  def merged_params(self, params, dtype=None):
    """The model's params with every adapter folded into its weight (float32, or cast to dtype)."""
    flat = adapters.merged_weights(flatten(params), self.method, self.targets, alpha=self.alpha, dtype=dtype)
    return unflatten(flat)

  def _logits(self, params, batch, remat):
    model_params = self.merged_params(params, dtype=jnp.dtype(self.cfg.model.compute_dtype))
    return self._forward(model_params, batch, None, remat)

  def peft_config_record(self) -> dict[str, Any]:
    c = self.task_cfg
    return {"peft": self.method, "r": c.r, "lora_alpha": self.alpha, "targets": c.targets,
            "train_parts": list(c.train_parts), "version": self.cfg.model.version,
            "targets_matched": [t.weight for t in self.targets]}

  def export(self, params, workdir, tag, dtype):
    flat = flatten(params)
    path = os.path.join(workdir, f"rwkv-{tag}.pth")
    save_state_dict(self._trainable_entries(flat), path)
    paths = [path, files.write_peft_config(workdir, self.peft_config_record())]
    if self.method == "pissa":
      init_path = os.path.join(workdir, files.PISSA_INIT_FILE)
      init_specs = [s for s in self.own_specs if s.name.rsplit(".", 1)[-1].startswith("init_")]
      if not os.path.exists(init_path):
        save_state_dict(files.to_pth_entries(flat, init_specs), init_path)
      paths.append(init_path)
    if self._export_merged(tag):
      merged = os.path.join(workdir, f"rwkv-{tag}-merged.pth")
      save_pth(jax.tree.map(np.asarray, self.merged_params(params)), self.cfg.model, merged, dtype=dtype)
      paths.append(merged)
    return paths

  def sample_model(self, params):
    return self.merged_params(params), self.cfg.model, None
