#!/usr/bin/env bash
# One device call's worth of GPU checks and timings, in priority order, each under its own time limit, output
# in $OUT (or out/gpu_checks): first correctness of the Mosaic GPU kernels against float64 recurrences (the
# tests skip without a Hopper GPU, hence JAX_PLATFORMS=cuda), then the WKV benchmarks against fla and
# jax-linear-attention in one process, then training-step MFU with the remat policies.
#
#   bash benchmarks/gpu_checks.sh [STEPS...]   # STEPS: kernels wkv7 wkv6 train profile (default: the first four)
#
# Needs the wheels of WORKSPACE.md's GPU section importable (grain, fiddle, fla, jax-linear-attention, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_checks}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
PYTHON=${PYTHON:-python3}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(kernels wkv7 wkv6 train)

for step in "${steps[@]}"; do
  echo "== $step ($(date -u +%H:%M:%S))"
  case $step in
    kernels)  # pallas_gpu (wkv7, wkv5, wkv6) vs float64, bf16 inputs, resets, N 64/128
      # one process per file: a kernel that faults poisons the CUDA context for the rest of its process
      for f in wkv7 wkv56; do
        JAX_PLATFORMS=cuda timeout 200 "$PYTHON" -m pytest -q -s -p no:cacheprovider \
            "tests/ops/${f}_pallas_test.py" -k float64 2>&1 | tee -a "$OUT/kernels.log"
      done ;;
    wkv7|wkv6)  # fla first (its first call took > 300 s for wkv7 on a fresh machine), then ours and jla
      timeout 420 "$PYTHON" benchmarks/wkv_bench.py --op "$step" --shapes K1,K3 --repeats 30 --pieces K1 \
          --budget-s 360 2>&1 | tee "$OUT/bench_$step.log" ;;
    train)
      timeout 300 "$PYTHON" benchmarks/train_bench.py --micro_bsz 8 --ctx_len 2048 --steps 3 --warmup 1 \
          --remat block_save_dots --runs llama-1.3b:1:data llama-0.4b:1:data 2>&1 | tee "$OUT/train.log"
      timeout 200 "$PYTHON" benchmarks/train_bench.py --micro_bsz 8 --ctx_len 4096 --steps 3 --warmup 1 \
          --remat block --runs rwkv7-L12-D768:1:data rwkv7-1.5b:1:data 2>&1 | tee -a "$OUT/train.log" ;;
    profile)  # ptxas register / spill report of every Mosaic GPU kernel, then Nsight Compute on the backward's
              # chunk-parallel gradient kernels (wkv7, then wkv6)
      for op in wkv7 wkv6; do
        MOSAIC_GPU_DUMP_PTXAS=1 timeout 120 "$PYTHON" benchmarks/wkv_bench.py --op $op --shapes S0 --impls pallas_gpu \
            --repeats 1 > "$OUT/ptxas_$op.txt" 2>&1
        grep -i "ptxas info\|spill" "$OUT/ptxas_$op.txt" | head -40
      done
      OUT=$OUT timeout 240 bash benchmarks/kernel_profile.sh wkv7_chunk_grads 2>&1 | tail -60
      OUT=$OUT timeout 240 bash benchmarks/kernel_profile.sh wkv6_chunk_grads --op wkv6 --shapes K1 --impls pallas_gpu \
          --repeats 1 2>&1 | tail -60 ;;
    *) echo "unknown step $step (expected kernels, wkv7, wkv6, train, profile)"; exit 2 ;;
  esac
done
