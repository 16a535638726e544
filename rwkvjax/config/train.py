"""Training configuration schemas. Field names keep RWKV-LM's argument names where one exists."""

from __future__ import annotations

import dataclasses
from typing import Any

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.transformer import TransformerConfig

SAMPLERS = ("magic_prime", "shuffle")
DATA_TYPES = ("binidx", "packed", "padded")
NAN_POLICIES = ("stop", "skip")
REMAT_POLICIES = ("none", "block", "block_save_dots")


def _bad(owner: str, field: str, value, expected: str):
  raise ValueError(f"{owner}.{field}={value!r}: expected {expected}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where training tokens come from.

  Attributes:
    data_type: "binidx" (a token stream read in windows of ctx_len + 1, RWKV-LM pretraining) or "packed"
      (jsonl / arrow / parquet records tokenised with loss masks and packed into rows, for fine-tuning:
      {"text": ...} records are trained on whole, {"prompt": ..., "response": ...} on the response only), or
      "padded" (the same records, one document per row, cut to ctx_len and padded with EOD under loss mask 0:
      RWKV-PEFT's `--dataload pad`).
    data_file: binidx prefix (`path/name` for name.bin + name.idx) or records path; "" uses the embedded
      default corpus (the Python standard library's sources, built on first use; see docs/data.md).
    val_file: held-out data of the same type for evaluation; "" uses the corpus's held-out split when
      data_file is "", and no evaluation otherwise.
    sampler: binidx order: "magic_prime" (RWKV-LM's exact order) or "shuffle" (grain's permutation).
    magic_prime: RWKV-LM's --magic_prime; 0 computes it from the data and ctx_len.
    seed: shuffle seed.
    corpus_max_bytes: use only this many bytes of the embedded corpus (0: all of it).
  """

  data_type: str = "binidx"
  data_file: str = ""
  val_file: str = ""
  sampler: str = "magic_prime"
  magic_prime: int = 0
  seed: int = 0
  corpus_max_bytes: int = 0

  def __post_init__(self):
    if self.data_type not in DATA_TYPES:
      _bad("data", "data_type", self.data_type, f"one of {DATA_TYPES}")
    if self.data_type in ("packed", "padded") and not self.data_file:
      _bad("data", "data_file", self.data_file, f"a records file for data_type={self.data_type!r}")
    if self.sampler not in SAMPLERS:
      _bad("data", "sampler", self.sampler, f"one of {SAMPLERS}")
    if self.magic_prime < 0 or self.corpus_max_bytes < 0:
      _bad("data", "magic_prime/corpus_max_bytes", (self.magic_prime, self.corpus_max_bytes), ">= 0")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW as RWKV-LM configures it (train_temp defaults)."""

  lr_init: float = 6e-4
  lr_final: float = 6e-5
  warmup_steps: int = 10
  beta1: float = 0.9
  beta2: float = 0.99
  adam_eps: float = 1e-18
  weight_decay: float = 0.001
  grad_clip: float = 1.0

  def __post_init__(self):
    if not self.lr_init > 0 or self.lr_final < 0:
      _bad("optim", "lr_init/lr_final", (self.lr_init, self.lr_final), "lr_init > 0 and lr_final >= 0")
    if self.warmup_steps < 0:
      _bad("optim", "warmup_steps", self.warmup_steps, ">= 0")
    if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
      _bad("optim", "beta1/beta2", (self.beta1, self.beta2), "values in [0, 1)")
    if self.weight_decay < 0 or self.grad_clip < 0:
      _bad("optim", "weight_decay/grad_clip", (self.weight_decay, self.grad_clip), ">= 0 (grad_clip 0: off)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh axes (data, fsdp, tensor, seq); one of them may be -1 (all remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  seq: int = 1

  def __post_init__(self):
    sizes = (self.data, self.fsdp, self.tensor, self.seq)
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
      _bad("mesh", "(data, fsdp, tensor, seq)", sizes, "positive sizes with at most one -1")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Text sampled from the final model with recurrent generation (printed and saved to the workdir)."""

  prompt: str = "\n"
  max_new_tokens: int = 200
  temperature: float = 1.0
  top_p: float = 0.85
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run.

  Attributes:
    model: an RWKV ModelConfig or a TransformerConfig (Llama / Qwen2 baselines).
    data, optim, mesh: see their classes.
    ctx_len: tokens per training row (RWKV-LM --ctx_len).
    micro_bsz: rows per RWKV-LM rank per step (RWKV-LM --micro_bsz).
    world_size: RWKV-LM ranks (nodes x devices) the global batch is made of; 0 means the number of
      devices on the batch axes (data x fsdp). Global batch = world_size * micro_bsz rows.
    grad_accum: micro steps accumulated per optimizer step (each of world_size * micro_bsz rows).
    my_exit_tokens: the run ends after this many tokens (cosine schedule end; RWKV-LM --my_exit_tokens).
    epoch_samples: samples per mini-epoch (RWKV-LM: 40320); a train_log.txt line per mini-epoch.
    epoch_save: export rwkv-{mini-epoch}.pth every this many mini-epochs (0: only rwkv-final.pth).
    save_every_steps: orbax checkpoint interval; keep_checkpoints: how many to keep.
    log_every_steps: metrics interval; eval_every_steps / eval_batches: held-out loss (0: at the end only).
    remat: "none", "block" (recompute each block in backward) or "block_save_dots" (keep matmul outputs).
    scan_layers: run the layers under lax.scan (True: one compiled block, fast compiles) or unrolled (False:
      no copies of the saved activations into and out of stacked buffers, faster steps on GPU, compile time
      grows with the depth); see `rwkvjax.models.layers.layer_loop`.
    nan_policy: a non-finite loss or gradient is never applied; "stop" ends the run with an error,
      "skip" logs a warning and goes on.
    load_model: start from this RWKV-LM .pth (or HF model directory for transformers) when the workdir has
      no checkpoint yet.
    export_dtype: dtype of exported model files (rwkv-N.pth for RWKV, hf-N/ directories for transformers).
    impl: WKV backend ("auto" picks the fastest for the platform).
    l2wrap: add RWKV-LM's L2Wrap gradient to the loss.
    sample: text to sample from the final model (None: no sample).
    task: None for pretraining, or a task config (state tuning, PEFT, distillation) whose
      `build(train_cfg)` returns the Task (see rwkvjax.training.tasks).
    seed: parameter-init seed.
  """

  model: ModelConfig | TransformerConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  ctx_len: int = 512
  micro_bsz: int = 16
  world_size: int = 0
  grad_accum: int = 1
  my_exit_tokens: int = 0
  epoch_samples: int = 40320
  epoch_save: int = 10
  save_every_steps: int = 1000
  keep_checkpoints: int = 3
  log_every_steps: int = 10
  eval_every_steps: int = 0
  eval_batches: int = 8
  remat: str = "block"
  scan_layers: bool = True
  nan_policy: str = "stop"
  load_model: str = ""
  export_dtype: str = "bfloat16"
  impl: str = "auto"
  l2wrap: bool = True
  sample: SampleConfig | None = None
  task: Any = None
  seed: int = 0

  def __post_init__(self):
    positive = ("ctx_len", "micro_bsz", "grad_accum", "epoch_samples", "save_every_steps", "keep_checkpoints",
                "log_every_steps")
    for field in positive:
      if getattr(self, field) < 1:
        _bad("TrainConfig", field, getattr(self, field), "a positive int")
    for field in ("world_size", "epoch_save", "eval_every_steps", "eval_batches"):
      if getattr(self, field) < 0:
        _bad("TrainConfig", field, getattr(self, field), ">= 0")
    if self.my_exit_tokens < 1:
      _bad("TrainConfig", "my_exit_tokens", self.my_exit_tokens, "a positive number of tokens")
    if self.remat not in REMAT_POLICIES:
      _bad("TrainConfig", "remat", self.remat, f"one of {REMAT_POLICIES}")
    if self.nan_policy not in NAN_POLICIES:
      _bad("TrainConfig", "nan_policy", self.nan_policy, f"one of {NAN_POLICIES}")
    if self.export_dtype not in ("bfloat16", "float32", "float16"):
      _bad("TrainConfig", "export_dtype", self.export_dtype, "bfloat16, float32 or float16")
