#!/usr/bin/env bash
# The whole distillation chain of docs/distill.md on the demo corpus: the Qwen2 teacher, stages 1-3 and the
# held-out report (appended to docs/distill.md). Each stage resumes from its workdir and a stage whose export
# already exists is skipped, so a chain stopped by its deadline (SIGTERM: the trainer saves and exits) goes on
# where it stopped when run again.
#
#   bash benchmarks/distill_chain.sh [DEADLINE_SECONDS]     # 0 or nothing: no deadline
#
# Extra trainer flags for every stage: DISTILL_FLAGS="--config set:micro_bsz=8 ..."; PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=out/distill
PYTHON=${PYTHON:-python}
deadline=${1:-0}
read -r -a flags <<< "${DISTILL_FLAGS:-}"

source benchmarks/resumable_train.sh

train_step $ROOT/teacher hf-final/config.json --config config:distill_teacher "${flags[@]}"
train_step $ROOT/stage1 student-final/config.json --config config:distill_stage1 "${flags[@]}"
train_step $ROOT/stage2 student-final/config.json --config config:distill_stage2 "${flags[@]}"
train_step $ROOT/stage3 student-final/config.json --config config:distill_stage3 "${flags[@]}"
"$PYTHON" benchmarks/distill_report.py --root "$ROOT" --append docs/distill.md
