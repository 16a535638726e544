# Sourced by the report chains (distill_chain.sh, peft_chain.sh): one resumable training step of a chain.
#
#   train_step WORKDIR MARKER TRAINER_FLAGS...
#
# Skips the step if WORKDIR/MARKER exists (the export that marks it done); otherwise runs
# `$PYTHON -m launch.train TRAINER_FLAGS... --workdir WORKDIR`, which resumes from WORKDIR's checkpoints, under
# what is left of `$deadline` seconds (0: none; the trainer saves and exits on SIGTERM). Exits the chain with
# status 3 when the deadline stops it or the step ends without its marker.

train_step() {
  local dir=$1 marker=$1/$2
  shift 2
  if [ -e "$marker" ]; then echo "== $dir: done ($marker)"; return 0; fi
  local limit=()
  if [ "${deadline:-0}" -gt 0 ]; then
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 60 ]; then echo "== $dir: not started, deadline reached; run again to go on"; exit 3; fi
    limit=(timeout --signal=TERM --kill-after=120 "$left")
  fi
  echo "== $dir ($(date -u +%H:%M:%S))"
  "${limit[@]}" "$PYTHON" -m launch.train "$@" --workdir "$dir" || true
  if [ ! -e "$marker" ]; then echo "== $dir: stopped before $marker; run again to resume"; exit 3; fi
}
