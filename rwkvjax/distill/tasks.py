"""The three distillation stages as trainer tasks (`TrainConfig.task = DistillStage{1,2,3}Config(...)`,
`TrainConfig.model = StudentConfig(...)`); specs/papers.md §2.3-2.6.

Params tree (one tree, one train state, one jitted step; frozen leaves get no optimizer state and stay
bit-identical):
  stage 1: {"teacher": <the whole teacher>,            frozen
            "student": {"model": {"layers": {"time_mixer": ...}}}}   trains (the rest of the student is the
            teacher's own embeddings / norms / MLPs / head, frozen, so it is not duplicated)
  stage 2: {"teacher": <the whole teacher>, "student": <the whole student>}   the student trains (all of it, or
            all but the MLPs with freeze_mlp); the teacher is frozen
  stage 3: {"student": <the whole student>}
Every leaf carries the logical axes of its ParamSpec (vocab, embed, heads, kv_heads, att, mlp, ...), so teacher
and student are sharded by the same rules over the same mesh (FSDP on embed, tensor parallel on
heads/att/mlp/vocab) and run in the same jitted step: the teacher's forward is part of `loss`, under
stop_gradient.

Where the weights come from (stage chaining by paths):
  teacher_path: an HF Llama / Qwen2 directory (config.json + safetensors), e.g. `WORKDIR/hf-final` of a
    transformer trained with this framework; "" makes a random teacher (HF init; for tests).
  student_path (stages 2, 3): a student directory exported by the previous stage (`WORKDIR/student-final`);
    "" builds the student from the teacher (stage 2) or from scratch (stage 3).
The files are read on the host and brought into the jitted, sharded init through host callbacks, so
TrainConfig.load_model is not needed; if it is set, stages 1 and 2 take it as the teacher directory.
Resuming within a stage is the trainer's: a workdir with checkpoints restores the whole tree.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rwkvjax.config.train import TrainConfig
from rwkvjax.config.transformer import TransformerConfig, from_hf_config
from rwkvjax.convert.hf import load_hf, read_hf_config
from rwkvjax.distill import export, losses, student
from rwkvjax.distill import teacher as tch
from rwkvjax.models import transformer
from rwkvjax.models.params import unflatten


def _as_student_config(cfg: TrainConfig) -> student.StudentConfig:
  if not isinstance(cfg.model, student.StudentConfig):
    raise ValueError(f"distillation: TrainConfig.model must be a rwkvjax.distill.student.StudentConfig (the "
                     f"student), not {type(cfg.model).__name__}")
  return cfg.model


def teacher_config(path: str, compute_dtype: str) -> TransformerConfig:
  """The architecture of the HF directory at `path`, computing in `compute_dtype`."""
  return from_hf_config(read_hf_config(path), compute_dtype=compute_dtype)


def _same_arch(a: TransformerConfig, b: TransformerConfig) -> bool:
  return a.replace(compute_dtype="float32") == b.replace(compute_dtype="float32")


def _in_jit(host_tree: Any) -> Any:
  """Host numpy arrays as values inside a jitted init (one host callback per leaf; the jit's out_shardings
  then place them), so big weights never become compile-time constants."""
  def leaf(a):
    a = np.asarray(a, np.float32)
    return jax.pure_callback(lambda: a, jax.ShapeDtypeStruct(a.shape, np.float32))
  return jax.tree.map(leaf, host_tree)


def _valid_tokens(batch) -> jax.Array:
  """1 where the input token is real (not row padding of packed data)."""
  seg = batch.get("segment_ids")
  return jnp.ones(batch["input_ids"].shape, jnp.float32) if seg is None else (seg > 0).astype(jnp.float32)


def _trainable(specs, freeze_mlp: bool = False) -> Any:
  """True for the student's parameters (but its MLPs with freeze_mlp), False for the teacher's."""
  return unflatten({s.name: s.name.startswith("student.") and not (freeze_mlp and ".mlp." in s.name)
                    for s in specs})


class _Base:
  """What every stage shares: configs, the teacher's and student's sources, evaluation, export, sampling."""

  def __init__(self, cfg: TrainConfig, teacher_path: str = "", teacher_arch: TransformerConfig | None = None,
               student_path: str = ""):
    self.cfg = cfg
    self.scfg = _as_student_config(cfg)
    if cfg.load_model:
      if teacher_path and teacher_path != cfg.load_model:
        raise ValueError(f"TrainConfig.load_model={cfg.load_model!r} and the task's teacher_path={teacher_path!r} "
                         "differ; set one of them")
      teacher_path = cfg.load_model
    self.teacher_path, self.student_path = teacher_path, student_path
    dtype = self.scfg.compute_dtype
    if teacher_arch is not None:
      self.tcfg = teacher_arch.replace(compute_dtype=dtype)
    elif teacher_path:
      self.tcfg = teacher_config(teacher_path, dtype)
    else:
      self.tcfg = self.scfg.base
    if teacher_path and not _same_arch(teacher_config(teacher_path, dtype), self.tcfg):
      raise ValueError(f"teacher {teacher_path} holds {teacher_config(teacher_path, dtype)}, not {self.tcfg}")
    if self.tcfg.vocab_size < self.scfg.vocab_size:
      raise ValueError(f"the teacher's vocab_size {self.tcfg.vocab_size} is smaller than the student's "
                       f"{self.scfg.vocab_size}")
    if student_path:
      loaded = export.read_student_config(student_path, dtype)
      if loaded != self.scfg:
        raise ValueError(f"student {student_path} holds {loaded}, but the run's model is {self.scfg}")

  # -- sources
  def _host_teacher(self):
    params, _ = load_hf(self.teacher_path)
    return params

  def teacher_init(self, key):
    if self.teacher_path:
      return _in_jit(self._host_teacher())
    return transformer.init(self.tcfg, key)

  def student_host(self):
    params, _ = export.load_student(self.student_path)
    return params

  def _check_loaded_teacher(self, loaded_cfg):
    if not isinstance(loaded_cfg, TransformerConfig) or not _same_arch(loaded_cfg, self.tcfg):
      raise ValueError(f"load_model {self.cfg.load_model} holds {loaded_cfg}, not the teacher {self.tcfg}")

  # -- shared pieces
  def full_student(self, params):
    return params["student"]

  def student_ce(self, student_params, batch, remat="none"):
    h, _ = student.hidden(student_params, self.scfg, batch["input_ids"], segment_ids=batch.get("segment_ids"),
                          impl=self.cfg.impl, remat=remat, scan_layers=self.cfg.scan_layers)
    _, ce = losses.chunked_kl_ce(h, student.head_weight(student_params, self.scfg), None, None, batch["targets"],
                                 token_chunk=self.token_chunk, vocab_chunk=self.vocab_chunk)
    return losses.masked_mean(ce, batch["loss_mask"])

  token_chunk = 1024
  vocab_chunk = 8192

  def eval_loss(self, params, batch):
    return self.student_ce(self.full_student(params), batch)

  def export(self, params, workdir, tag, dtype):
    host = jax.tree.map(np.asarray, self.full_student(params))
    return export.export_student(host, self.scfg, workdir, tag, dtype)

  def sample_model(self, params):
    return jax.tree.map(np.asarray, self.full_student(params)), self.scfg, None


# ----------------------------------------------------------------------------------------------------
# Stage 1: attention-output alignment (teacher forcing; only the time mixers train)
# ----------------------------------------------------------------------------------------------------

class Stage1Task(_Base):
  def __init__(self, cfg: TrainConfig, task_cfg: "DistillStage1Config"):
    super().__init__(cfg, task_cfg.teacher_path)
    self.task_cfg = task_cfg
    if not _same_arch(self.tcfg, self.scfg.base):
      raise ValueError(f"stage 1 aligns each layer with the teacher's own: the teacher {self.tcfg} must be the "
                       f"student's base {self.scfg.base}")
    self.specs = (student.transformer_specs(self.tcfg, "teacher.") + student.time_mixer_specs(self.scfg, "student."))

  def _assemble(self, teacher, key):
    tm = student.init_time_mixers(self.scfg, key, teacher["model"]["layers"]["self_attn"])
    return {"teacher": teacher, "student": {"model": {"layers": {"time_mixer": tm}}}}

  def init_params(self, key):
    kt, ks = jax.random.split(key)
    return self._assemble(self.teacher_init(kt), ks)

  def from_loaded(self, loaded, loaded_cfg, key):
    self._check_loaded_teacher(loaded_cfg)
    return jax.jit(self._assemble)(loaded, jax.random.split(key)[1])

  def trainable(self):
    return _trainable(self.specs)

  def loss(self, params, batch):
    t = jax.lax.stop_gradient(params["teacher"])
    valid = _valid_tokens(batch)
    layer_loss = functools.partial(_align_pair, valid=valid, kind=self.task_cfg.align_loss)
    per_layer = student.alignment_outputs(t, self.scfg, params["student"]["model"]["layers"]["time_mixer"],
                                          batch["input_ids"], layer_loss, segment_ids=batch.get("segment_ids"),
                                          impl=self.cfg.impl, remat=self.cfg.remat, scan_layers=self.cfg.scan_layers)
    return per_layer.mean(), valid.sum()

  def full_student(self, params):
    return student.from_teacher(params["teacher"], self.scfg, None,
                                time_mixers=params["student"]["model"]["layers"]["time_mixer"])


def _align_pair(a_teacher, a_student, *, valid, kind):
  return losses.alignment_loss(a_teacher, a_student, valid, kind)


@dataclasses.dataclass(frozen=True)
class DistillStage1Config:
  """Stage 1 (ARWKV §2.3): per layer, the student time mixer and the frozen teacher attention see the same
  input; loss = mean over replaced layers of alignment_loss; the teacher's output continues the residual
  stream. Only the time mixers train. The student's init (fresh / RADLADS copy) is StudentConfig.init_mode.

  Attributes:
    teacher_path: HF directory of the teacher (architecture = the student's base); "" = random (tests).
    align_loss: "l2" (ARWKV: mean_t ||A_T - A_S||_2 * C^-1/2) or "mse".
  """

  teacher_path: str = ""
  align_loss: str = "l2"

  def __post_init__(self):
    if self.align_loss not in losses.ALIGN_LOSSES:
      raise ValueError(f"DistillStage1Config.align_loss={self.align_loss!r}: expected one of {losses.ALIGN_LOSSES}")

  def build(self, train_cfg: TrainConfig) -> Stage1Task:
    return Stage1Task(train_cfg, self)


# ----------------------------------------------------------------------------------------------------
# Stage 2: logit distillation (forward KL at temperature tau, chunked; optional CE mix, frozen MLP)
# ----------------------------------------------------------------------------------------------------

class Stage2Task(_Base):
  def __init__(self, cfg: TrainConfig, task_cfg: "DistillStage2Config"):
    super().__init__(cfg, task_cfg.teacher_path, task_cfg.teacher, task_cfg.student_path)
    self.task_cfg = task_cfg
    self.token_chunk, self.vocab_chunk = task_cfg.token_chunk, task_cfg.vocab_chunk
    if not task_cfg.student_path and not _same_arch(self.tcfg, self.scfg.base):
      raise ValueError("stage 2 without student_path builds the student from the teacher, so the teacher must "
                       f"be the student's base; the teacher is {self.tcfg}, the base {self.scfg.base}")
    self.teacher_specs = student.transformer_specs(self.tcfg, "teacher.")
    self.student_specs = student.param_specs(self.scfg, "student.")
    self.specs = self.teacher_specs + self.student_specs

  def _assemble(self, teacher, student_params, key):
    if student_params is None:
      student_params = student.from_teacher(teacher, self.scfg, key)
    return {"teacher": teacher, "student": student_params}

  def init_params(self, key):
    kt, ks = jax.random.split(key)
    teacher = self.teacher_init(kt)
    return self._assemble(teacher, _in_jit(self.student_host()) if self.student_path else None, ks)

  def from_loaded(self, loaded, loaded_cfg, key):
    self._check_loaded_teacher(loaded_cfg)
    host_student = self.student_host() if self.student_path else None
    return jax.jit(self._assemble)(loaded, host_student, jax.random.split(key)[1])

  def trainable(self):
    return _trainable(self.specs, self.task_cfg.freeze_mlp)

  def loss(self, params, batch):
    c = self.task_cfg
    t = jax.lax.stop_gradient(params["teacher"])
    seg = batch.get("segment_ids")
    h_t = tch.hidden(t, self.tcfg, batch["input_ids"], segment_ids=seg, scan_layers=self.cfg.scan_layers)
    s = params["student"]
    h_s, _ = student.hidden(s, self.scfg, batch["input_ids"], segment_ids=seg, impl=self.cfg.impl,
                            remat=self.cfg.remat, scan_layers=self.cfg.scan_layers)
    kl, ce = losses.chunked_kl_ce(h_s, student.head_weight(s, self.scfg), h_t, tch.head_weight(t, self.tcfg),
                                  batch["targets"] if c.ce_weight else None, temperature=c.temperature,
                                  token_chunk=c.token_chunk, vocab_chunk=c.vocab_chunk)
    kl_mask = _valid_tokens(batch) if c.kl_all_tokens else batch["loss_mask"]
    kl_mean, count = losses.masked_mean(kl, kl_mask)
    loss = c.kl_weight * (c.temperature ** 2 if c.scale_by_t2 else 1.0) * kl_mean
    if c.ce_weight:
      loss = loss + c.ce_weight * losses.masked_mean(ce, batch["loss_mask"])[0]
    return loss, count


@dataclasses.dataclass(frozen=True)
class DistillStage2Config:
  """Stage 2 (ARWKV §2.4): the student runs as a full model; loss = kl_weight * KL(p_T || p_S) at temperature
  tau (times tau^2 with scale_by_t2; tau = 1 in ARWKV), summed over the full vocabulary and averaged over
  tokens, + ce_weight * CE (0 in ARWKV). Computed in [token_chunk x vocab_chunk] tiles.

  Attributes:
    teacher_path: HF directory of the teacher ("" = random, tests).
    teacher: the teacher's architecture when it is not the student's base (a bigger model with the same
      tokenizer; its logits are truncated to the student's vocabulary); None reads teacher_path's config.json
      (or takes the base).
    student_path: stage 1's export (WORKDIR/student-final); "" builds the student from the teacher.
    temperature, scale_by_t2, kl_weight, ce_weight: see above.
    kl_all_tokens: KL at every real token (ARWKV's is_all_labels_kl); False: only where loss_mask is 1.
    freeze_mlp: the student's MLPs stay frozen (ARWKV's -z, the "ARWKV" column of its Table 1).
    token_chunk, vocab_chunk: tile sizes of the chunked KL.
  """

  teacher_path: str = ""
  teacher: TransformerConfig | None = None
  student_path: str = ""
  temperature: float = 1.0
  scale_by_t2: bool = True
  kl_weight: float = 1.0
  ce_weight: float = 0.0
  kl_all_tokens: bool = True
  freeze_mlp: bool = False
  token_chunk: int = 1024
  vocab_chunk: int = 8192

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"DistillStage2Config.temperature={self.temperature!r}: expected > 0")
    if self.kl_weight < 0 or self.ce_weight < 0 or self.kl_weight + self.ce_weight == 0:
      raise ValueError(f"DistillStage2Config kl_weight={self.kl_weight}, ce_weight={self.ce_weight}: expected "
                       "non-negative weights, not both 0")
    if self.token_chunk < 1 or self.vocab_chunk < 1:
      raise ValueError("DistillStage2Config.token_chunk/vocab_chunk: expected positive ints")

  def build(self, train_cfg: TrainConfig) -> Stage2Task:
    return Stage2Task(train_cfg, self)


# ----------------------------------------------------------------------------------------------------
# Stage 3: fine-tuning (SFT: cross-entropy under the batch's loss mask)
# ----------------------------------------------------------------------------------------------------

class Stage3Task(_Base):
  def __init__(self, cfg: TrainConfig, task_cfg: "DistillStage3Config"):
    if cfg.load_model:
      raise ValueError("stage 3 reads the student from DistillStage3Config.student_path (a student directory), "
                       f"not TrainConfig.load_model={cfg.load_model!r}")
    super().__init__(cfg, student_path=task_cfg.student_path)
    self.task_cfg = task_cfg
    self.token_chunk, self.vocab_chunk = task_cfg.token_chunk, task_cfg.vocab_chunk
    self.specs = student.param_specs(self.scfg, "student.")

  def init_params(self, key):
    if self.student_path:
      return {"student": _in_jit(self.student_host())}
    return {"student": student.init(self.scfg, key)}

  def from_loaded(self, loaded, loaded_cfg, key):
    raise AssertionError("unreachable: Stage3Task rejects load_model")

  def trainable(self):
    return _trainable(self.specs, self.task_cfg.freeze_mlp)

  def loss(self, params, batch):
    return self.student_ce(params["student"], batch, remat=self.cfg.remat)


@dataclasses.dataclass(frozen=True)
class DistillStage3Config:
  """Stage 3 (ARWKV §2.5, SFT): cross-entropy of the student under the batch's loss mask (data_type="packed"
  jsonl trains on responses only; binidx data trains on every token, e.g. to extend the context).

  Attributes:
    student_path: stage 2's export (WORKDIR/student-final); "" = a random student (tests).
    freeze_mlp: keep the MLPs frozen.
    token_chunk, vocab_chunk: tile sizes of the chunked cross-entropy.
  """

  student_path: str = ""
  freeze_mlp: bool = False
  token_chunk: int = 1024
  vocab_chunk: int = 8192

  def build(self, train_cfg: TrainConfig) -> Stage3Task:
    return Stage3Task(train_cfg, self)
