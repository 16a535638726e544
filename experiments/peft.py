"""State tuning and parameter-efficient fine-tuning (RWKV-PEFT's methods), launched like pretraining:

  python -m launch.train --config config:peft_state --config "set:load_model='BASE.pth'" \\
      --config "set:data.data_file='data/sft.jsonl'" --config "set:data.val_file='data/sft_val.jsonl'" \\
      --workdir out/state

Data: jsonl (or arrow/parquet) records {"prompt": ..., "response": ...} (loss on responses only) or
{"text": ...}, packed into rows (data_type "packed"). The base model is an RWKV-LM .pth (load_model); the
model shape below must match it (set:model.n_layer=..., set:model.n_embd=...).

Recipes:
* peft_state: RWKV-PEFT's scripts/demo-state-tuning.sh: lr 1 -> 0.01 cosine, no warmup, Adam (0.9, 0.99),
  eps 1e-8, no weight decay; only blocks.N.att.time_state trains.
* peft_lora / peft_pissa / peft_bone / peft_bat: the Bone/DiSHA paper's recipe: lr 2e-5 constant, no warmup,
  Adam (0.9, 0.99), eps 1e-8, no weight decay; LoRA and PiSSA r = 32 (alpha 32), Bone and BAT r = 64 (equal
  trainable parameters to r = 32 LoRA on square matrices); RWKV-PEFT's default train_parts ("time", "ln").
* peft_none: nothing trains (the untuned baseline's held-out loss, through the same pipeline).
* peft_cmp_*: the comparisons of docs/peft.md (issue 9, item 7) on the narrow-format task of
  rwkvjax.peft.demo_data, from a demo L12-D768 model; every method is scored on all tokens of the packed rows
  (with state tuning every packed document starts from the learned state).
The fiddler `rwkv_peft` takes RWKV-PEFT's own flags: --config "fiddler:rwkv_peft(peft='lora',
config='{\"lora_r\":8,\"lora_alpha\":16}')".
"""

from __future__ import annotations

import fiddle as fdl

from experiments.base import pretrain, with_sample
from rwkvjax.config.train import DataConfig, TrainConfig
from rwkvjax.peft.tasks import PeftConfig, StateTuneConfig


def finetune(*, n_layer: int = 12, n_embd: int = 768, ctx_len: int = 512, micro_bsz: int = 16,
             my_exit_tokens: int = 16 * 512 * 1000) -> fdl.Config[TrainConfig]:
  """Fine-tuning from `load_model` on packed prompt/response jsonl; held-out loss every 50 steps."""
  cfg = pretrain(n_layer=n_layer, n_embd=n_embd, ctx_len=ctx_len, micro_bsz=micro_bsz, my_exit_tokens=my_exit_tokens)
  cfg.data = fdl.Config(DataConfig, data_type="packed", data_file="data/finetune_train.jsonl",
                        val_file="data/finetune_val.jsonl")
  cfg.load_model = "out/L12-D768-x070/rwkv-final.pth"
  cfg.optim.warmup_steps = 0
  cfg.optim.adam_eps = 1e-8
  cfg.optim.weight_decay = 0.0
  cfg.epoch_save = 0                    # adapter / state files at the end (rwkv-final.pth)
  cfg.save_every_steps = 500
  cfg.log_every_steps = 10
  cfg.eval_every_steps = 50
  cfg.eval_batches = 16
  cfg.remat = "block"
  return cfg


def peft_state() -> fdl.Config[TrainConfig]:
  cfg = finetune()
  cfg.optim.lr_init, cfg.optim.lr_final = 1.0, 0.01
  cfg.task = fdl.Config(StateTuneConfig)
  return cfg


def _adapters(method: str, r: int, alpha: float = 32.0) -> fdl.Config[TrainConfig]:
  cfg = finetune()
  cfg.optim.lr_init = cfg.optim.lr_final = 2e-5
  cfg.task = fdl.Config(PeftConfig, method=method, r=r, alpha=alpha)
  return cfg


def peft_lora() -> fdl.Config[TrainConfig]:
  return _adapters("lora", 32)


def peft_pissa() -> fdl.Config[TrainConfig]:
  return _adapters("pissa", 32)


def peft_bone() -> fdl.Config[TrainConfig]:
  return _adapters("bone", 64)


def peft_bat() -> fdl.Config[TrainConfig]:
  return _adapters("bat", 64)


def peft_none() -> fdl.Config[TrainConfig]:
  cfg = finetune()
  cfg.task = fdl.Config(PeftConfig, method="none", train_parts=())
  return cfg


# ---- issue 9, item 7: the comparisons reported in docs/peft.md --------------------------------------------

CMP_DATA = ("data/pyfunc_train.jsonl", "data/pyfunc_val.jsonl")  # python -m rwkvjax.peft.demo_data --out data/pyfunc
CMP_PROMPT = "def add(a, b):\n    return a + b\n\nSummary:"


def _comparison(cfg: fdl.Config[TrainConfig]) -> fdl.Config[TrainConfig]:
  cfg.data.data_file, cfg.data.val_file = CMP_DATA
  return with_sample(cfg, prompt=CMP_PROMPT, max_new_tokens=40, temperature=0.0, top_p=1.0)


def peft_cmp_none() -> fdl.Config[TrainConfig]:
  """(a) no tuning: the base model's held-out loss on the task."""
  return _comparison(peft_none())


def peft_cmp_state() -> fdl.Config[TrainConfig]:
  """(a) state tuning: 589,824 trainable parameters at L12-D768."""
  return _comparison(peft_state())


def peft_cmp_lora4() -> fdl.Config[TrainConfig]:
  """(a) LoRA r=4 (alpha 8) on the six RWKV-PEFT layers, no extra parts: 663,552 parameters at L12-D768;
  lr 1e-4 -> 1e-5 (cosine), LoRA's usual fine-tuning range (the 2e-5 recipe barely moves r=4)."""
  cfg = _comparison(_adapters("lora", 4, alpha=8.0))
  cfg.task.train_parts = ()
  cfg.optim.lr_init, cfg.optim.lr_final = 1e-4, 1e-5
  return cfg


def _equal_params(method: str, r: int) -> fdl.Config[TrainConfig]:
  """(b) the paper's comparison at equal trainable parameters (442,368 per layer at D768) and its recipe."""
  cfg = _comparison(_adapters(method, r))
  cfg.task.train_parts = ()
  return cfg


def peft_cmp_bone64() -> fdl.Config[TrainConfig]:
  return _equal_params("bone", 64)


def peft_cmp_pissa32() -> fdl.Config[TrainConfig]:
  return _equal_params("pissa", 32)


def peft_cmp_lora32() -> fdl.Config[TrainConfig]:
  return _equal_params("lora", 32)


def rwkv_peft(cfg: fdl.Config[TrainConfig], peft: str = "lora", config: str = "",
              train_parts: str = "time,ln") -> fdl.Config[TrainConfig]:
  """Fiddler: the task from RWKV-PEFT's flags (--peft, its JSON --lora_config / --pissa_config /
  --disha_config / --bone_config, --train_parts as a comma list)."""
  parts = tuple(p for p in train_parts.replace(" ", ",").split(",") if p)
  built = PeftConfig.from_rwkv_peft(peft, config, train_parts=parts)
  cfg.task = fdl.Config(PeftConfig, **{f: getattr(built, f) for f in PeftConfig.__dataclass_fields__})
  return cfg
