#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: the same command on every worker (one process per host);
# jax.distributed discovers the TPU pod topology by itself, so no coordinator flags are needed.
#
#   launch/tpu_pod.sh TPU_NAME ZONE config:minipile gs://bucket/runs/L12-D768 --config "set:data.data_file='/data/minipile'"
#
# The repository must be at the same path on every worker (e.g. cloned by a startup script). The workdir
# should be on storage every worker sees (a GCS path that orbax/tensorstore can write, or a shared mount).
set -euo pipefail
TPU_NAME="$1"; ZONE="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
REPO_DIR="${REPO_DIR:-\$HOME/rwkvjax}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e; cd $REPO_DIR
  . scripts/env.sh requirements.txt
  pip install -q 'jax[tpu]==0.11.2'
  python -m launch.train --config '$CONFIG' --workdir '$WORKDIR' $*
"
