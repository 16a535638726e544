"""Qwen2 -> RWKV-7 distillation (ARWKV / RADLADS, specs/papers.md §2), one experiment per stage, chained by
paths. With the default paths the whole chain runs on the embedded demo corpus (World tokenizer):

  python -m launch.train --config config:distill_teacher --workdir out/distill/teacher   # a Qwen2 teacher
  python -m launch.train --config config:distill_stage1 --workdir out/distill/stage1     # attention alignment
  python -m launch.train --config config:distill_stage2 --workdir out/distill/stage2     # logit KL
  python -m launch.train --config config:distill_stage3 --workdir out/distill/stage3     # SFT / longer context
  python benchmarks/distill_report.py --root out/distill                                  # held-out table

Any Qwen2 / Llama HF checkpoint on disk can be the teacher (its tokenizer's data is then yours to give):
  --config 'config:distill_stage1(teacher="/models/Qwen2.5-0.5B-Instruct")' --config set:data.data_file=...
Stage 2 reads the student architecture from stage 1's export (`student=` its path); RADLADS' copy-init is
`config:distill_stage1(init_mode="teacher")`.
"""

from __future__ import annotations

import dataclasses
import os

import fiddle as fdl

from rwkvjax.config.train import DataConfig, MeshConfig, OptimConfig, SampleConfig, TrainConfig
from rwkvjax.config.transformer import TransformerConfig, from_hf_config
from rwkvjax.convert.hf import read_hf_config
from rwkvjax.distill.export import read_student_config
from rwkvjax.distill.student import StudentConfig
from rwkvjax.distill.tasks import DistillStage1Config, DistillStage2Config, DistillStage3Config

ROOT = "out/distill"
TEACHER_DIR = f"{ROOT}/teacher/hf-final"
STAGE1_DIR = f"{ROOT}/stage1/student-final"
STAGE2_DIR = f"{ROOT}/stage2/student-final"

# The demo teacher: a small Qwen2 (GQA, q/k/v biases, RoPE 1e6, tied embeddings like Qwen2.5-0.5B) on the World
# vocabulary. 6 heads of 64 -> the student has 384 / 64 = 6 RWKV heads.
DEMO_TEACHER = TransformerConfig(model_type="qwen2", vocab_size=65536, hidden_size=384, intermediate_size=1024,
                                 num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                                 attention_bias=True, rope_theta=1e6, tie_word_embeddings=True,
                                 max_position_embeddings=4096, compute_dtype="bfloat16")


def _config_of(value) -> fdl.Config:
  """A frozen config dataclass (TransformerConfig, StudentConfig) as a fdl.Config with every field set."""
  fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
  fields = {k: _config_of(v) if dataclasses.is_dataclass(v) else v for k, v in fields.items()}
  return fdl.Config(type(value), **fields)


def _teacher_arch(teacher: str, compute_dtype: str) -> TransformerConfig:
  """The teacher's architecture from its config.json; the demo teacher's before it has been trained."""
  if os.path.isfile(os.path.join(teacher, "config.json")):
    return from_hf_config(read_hf_config(teacher), compute_dtype=compute_dtype)
  if os.path.normpath(teacher) == os.path.normpath(TEACHER_DIR):
    return DEMO_TEACHER.replace(compute_dtype=compute_dtype)
  raise FileNotFoundError(f"teacher {teacher!r} has no config.json (an HF Llama / Qwen2 directory is expected)")


def _run(model, task, *, ctx_len, micro_bsz, tokens, lr_init, lr_final, warmup_steps=50, data_file="",
         val_file="", data_type="binidx") -> fdl.Config[TrainConfig]:
  return fdl.Config(
      TrainConfig, model=model, task=task,
      data=fdl.Config(DataConfig, data_type=data_type, data_file=data_file, val_file=val_file, sampler="shuffle"),
      # ARWKV's AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices); cosine instead of its
      # exponential decay
      optim=fdl.Config(OptimConfig, lr_init=lr_init, lr_final=lr_final, warmup_steps=warmup_steps, beta1=0.9,
                       beta2=0.95, adam_eps=1e-8, weight_decay=0.1, grad_clip=1.0),
      mesh=fdl.Config(MeshConfig), ctx_len=ctx_len, micro_bsz=micro_bsz, world_size=0, my_exit_tokens=tokens,
      epoch_samples=micro_bsz * 200, epoch_save=0, save_every_steps=500, log_every_steps=20, eval_batches=32,
      remat="block", export_dtype="float32", l2wrap=False,
      sample=fdl.Config(SampleConfig, prompt="def ", max_new_tokens=120, temperature=0.8, top_p=0.8))


def distill_teacher(*, tokens: int = 60_000_000) -> fdl.Config[TrainConfig]:
  """The demo teacher: DEMO_TEACHER pretrained on the embedded corpus (~8.7M tokens, so ~7 passes); exports
  out/distill/teacher/hf-final."""
  cfg = _run(_config_of(DEMO_TEACHER), None, ctx_len=512, micro_bsz=32, tokens=tokens, lr_init=1e-3,
             lr_final=1e-4, warmup_steps=100)
  cfg.optim.beta2 = 0.99
  cfg.optim.weight_decay = 0.01
  return cfg


def distill_stage1(teacher: str = TEACHER_DIR, *, init_mode: str = "fresh", head_size: int = 64,
                   rwkv_layers: tuple[int, ...] | None = None, gate: str = "none", group_norm: bool = False,
                   compute_dtype: str = "bfloat16", ctx_len: int = 512, micro_bsz: int = 32,
                   tokens: int = 16_000_000) -> fdl.Config[TrainConfig]:
  """Stage 1: per-layer attention-output alignment; only the time mixers train (RADLADS' LR 1e-3 -> 1e-5)."""
  student = StudentConfig(base=_teacher_arch(teacher, compute_dtype), head_size=head_size, rwkv_layers=rwkv_layers,
                          gate=gate, group_norm=group_norm, init_mode=init_mode)
  return _run(_config_of(student), fdl.Config(DistillStage1Config, teacher_path=teacher), ctx_len=ctx_len,
              micro_bsz=micro_bsz, tokens=tokens, lr_init=1e-3, lr_final=1e-5)


def _student_arch(student: str, teacher: str, compute_dtype: str) -> StudentConfig:
  if os.path.isfile(os.path.join(student, "config.json")):
    return read_student_config(student, compute_dtype)
  if os.path.normpath(student) in (os.path.normpath(STAGE1_DIR), os.path.normpath(STAGE2_DIR)):
    return StudentConfig(base=_teacher_arch(teacher, compute_dtype))  # stage 1's defaults, before it has run
  raise FileNotFoundError(f"student {student!r} has no config.json (a student-* directory of an earlier stage)")


def distill_stage2(teacher: str = TEACHER_DIR, student: str = STAGE1_DIR, *, temperature: float = 1.0,
                   ce_weight: float = 0.0, freeze_mlp: bool = False, compute_dtype: str = "bfloat16",
                   ctx_len: int = 512, micro_bsz: int = 32, tokens: int = 32_000_000) -> fdl.Config[TrainConfig]:
  """Stage 2: forward KL(teacher || student) over the full vocabulary (ARWKV: tau 1, no CE); the whole
  student trains (freeze_mlp=True: ARWKV's default column)."""
  model = _student_arch(student, teacher, compute_dtype)
  task = fdl.Config(DistillStage2Config, teacher_path=teacher, student_path=student, temperature=temperature,
                    ce_weight=ce_weight, freeze_mlp=freeze_mlp)
  return _run(_config_of(model), task, ctx_len=ctx_len, micro_bsz=micro_bsz, tokens=tokens, lr_init=3e-4,
              lr_final=1e-5)


def distill_stage3(student: str = STAGE2_DIR, *, teacher: str = TEACHER_DIR, data_file: str = "",
                   data_type: str = "binidx", compute_dtype: str = "bfloat16", ctx_len: int = 1024,
                   micro_bsz: int = 16, tokens: int = 8_000_000) -> fdl.Config[TrainConfig]:
  """Stage 3: SFT of the student (cross-entropy under the loss mask) at a longer context. data_type="packed"
  with a jsonl of {"prompt", "response"} records trains on responses only; the default continues on the
  demo corpus at 2x the context (ARWKV uses SFT to extend the context)."""
  model = _student_arch(student, teacher, compute_dtype)
  cfg = _run(_config_of(model), fdl.Config(DistillStage3Config, student_path=student), ctx_len=ctx_len,
             micro_bsz=micro_bsz, tokens=tokens, lr_init=3e-5, lr_final=1e-5, data_file=data_file,
             val_file=data_file if data_type == "packed" else "", data_type=data_type)
  return cfg
