#!/usr/bin/env bash
# The PEFT / state-tuning comparisons of docs/peft.md (issue 9, item 7), end to end: an RWKV-7 L12-D768 base
# pretrained on the embedded corpus, the narrow-format task made from Python sources, the runs
# none / state / lora4 / bone64 / pissa32 / lora32 from that base, and benchmarks/peft_report.py (appended to
# docs/peft.md, curves in docs/peft_curves.png). Finished steps are skipped and a stopped run resumes, so a
# chain cut by its deadline goes on where it stopped when run again (on the same machine).
#
#   bash benchmarks/peft_chain.sh [DEADLINE_SECONDS]     # 0 or nothing: no deadline
#
# Environment: SRC (Python sources for the task; default: this Python's site-packages), BASE_TOKENS
# (pretraining tokens, default 32M), RUNS (default "none state lora4 bone64 pissa32 lora32"), PEFT_FLAGS
# (extra trainer flags for every fine-tuning run), PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=out/peft_cmp
PYTHON=${PYTHON:-python}
SRC=${SRC:-$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
BASE_TOKENS=${BASE_TOKENS:-32000000}
RUNS=${RUNS:-none state lora4 bone64 pissa32 lora32}
read -r -a flags <<< "${PEFT_FLAGS:-}"
deadline=${1:-0}

source benchmarks/resumable_train.sh

# 1. the base model: L12-D768 on the embedded corpus (Python's standard library), 16k-token steps
train_step $ROOT/base rwkv-final.pth --config config:pretrain --config set:ctx_len=512 --config set:micro_bsz=32 \
    --config set:world_size=1 --config "set:my_exit_tokens=$BASE_TOKENS" --config set:optim.lr_init=6e-4 \
    --config set:optim.lr_final=6e-5 --config set:optim.warmup_steps=100 --config set:epoch_save=0 \
    --config set:save_every_steps=500 --config set:log_every_steps=50

# 2. the narrow-format task (held out by file)
TASK=$ROOT/data/pyfunc
if [ ! -e "${TASK}_val.jsonl" ]; then
  mkdir -p "$ROOT/data"
  "$PYTHON" -m rwkvjax.peft.demo_data --src "$SRC" --out "$TASK"
fi

# 3. the comparisons (the untuned run only needs its held-out loss: one evaluation interval)
for run in $RUNS; do
  extra=()
  if [ "$run" = none ]; then extra=(--config set:my_exit_tokens=409600); fi
  train_step "$ROOT/$run" sample.txt --config "config:peft_cmp_$run" \
      --config "set:load_model='$ROOT/base/rwkv-final.pth'" --config "set:data.data_file='${TASK}_train.jsonl'" \
      --config "set:data.val_file='${TASK}_val.jsonl'" \
      "${flags[@]}" "${extra[@]}"
done

"$PYTHON" benchmarks/peft_report.py --root "$ROOT" --runs $RUNS --append docs/peft.md --plot docs/peft_curves.png
