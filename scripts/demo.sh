#!/usr/bin/env bash
# The main job (installs what it needs into .venv first): train a small RWKV-7 on the embedded corpus (the
# Python standard library's sources, tokenised with the World tokenizer on first use) on the CPU, then sample
# text from it with recurrent generation. Run again in the same directory to resume (or re-sample a finished run).
set -euo pipefail
. "$(dirname "$0")/env.sh" requirements.txt
workdir="${1:-out/demo}"
python -m launch.train --config config:demo --workdir "$workdir"
echo "logs: $workdir/metrics.jsonl, $workdir/train_log.txt; model: $workdir/rwkv-final.pth; sample: $workdir/sample.txt"
