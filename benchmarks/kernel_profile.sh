#!/usr/bin/env bash
# Nsight Compute profile of one Mosaic GPU kernel launch inside a wkv_bench.py run (GPU machine with ncu):
# throughput, warp stall reasons (cycles per issued instruction, by reason), scheduler and occupancy sections as text
# in $OUT (or out/kernel_profile).
#
#   bash benchmarks/kernel_profile.sh [KERNEL_REGEX] [wkv_bench.py args...]
#   e.g. bash benchmarks/kernel_profile.sh chunk_grads --op wkv7 --shapes K1 --impls pallas_gpu --repeats 1
#
# Mosaic GPU names a kernel `<kernel_name>_mosaic_gpu_kernel` (the kernel_name given to plgpu.kernel, e.g.
# wkv7_chunk_grads, wkv7_prep, wkv6_prep); the first matching launch is profiled.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/kernel_profile}
mkdir -p "$OUT"
regex=${1:-chunk_grads}
shift || true
[ $# -eq 0 ] && set -- --op wkv7 --shapes K1 --impls pallas_gpu --repeats 1
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
ncu --kernel-name "regex:$regex" --launch-count 1 --clock-control none \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    "${PYTHON:-python3}" benchmarks/wkv_bench.py "$@" > "$OUT/ncu_$regex.txt" 2>&1
rc=$?
grep -v "^E11\|^===\|^external\|^jaxlib" "$OUT/ncu_$regex.txt" | tail -120
exit $rc
