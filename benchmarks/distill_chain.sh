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

stage() {  # stage <workdir name> <experiment> <export that marks it done>
  local dir=$ROOT/$1
  if [ -e "$dir/$3" ]; then echo "== $1: done ($dir/$3)"; return 0; fi
  local limit=()
  if [ "$deadline" -gt 0 ]; then
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 60 ]; then echo "== $1: not started, deadline reached; run again to go on"; exit 3; fi
    limit=(timeout --signal=TERM --kill-after=120 "$left")
  fi
  echo "== $1: config:$2 -> $dir ($(date -u +%H:%M:%S))"
  "${limit[@]}" "$PYTHON" -m launch.train --config "config:$2" "${flags[@]}" --workdir "$dir" || true
  if [ ! -e "$dir/$3" ]; then echo "== $1: stopped before its export; run again to resume"; exit 3; fi
}

stage teacher distill_teacher hf-final/config.json
stage stage1 distill_stage1 student-final/config.json
stage stage2 distill_stage2 student-final/config.json
stage stage3 distill_stage3 student-final/config.json
"$PYTHON" benchmarks/distill_report.py --root "$ROOT" --append docs/distill.md
