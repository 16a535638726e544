#!/usr/bin/env bash
# Checks and times kernel versions side by side in one device call: git branches are exported into source trees
# here, carried to the GPU machine, tested against float64 there and timed alternately on the same GPU (an unchanged
# kernel moved by up to 9% between two calls in the seventh session, so only same-machine, alternating timings
# compare versions).
#
#   bash benchmarks/compare_trees.sh export BRANCH...     # here: .trees/<branch with / as ->, e.g. .trees/wip-x
#   bash benchmarks/compare_trees.sh run OP TREE...       # on the GPU machine (carry .trees), OP wkv7 or wkv6
#
# `run` first runs each tree's `tests/ops/<file>_pallas_test.py -k float64` (wkv7, or wkv56 for wkv6) in its own
# process, then `wkv_bench.py --op OP --shapes K1 --impls pallas_gpu --pieces K1` in each tree, ROUNDS times
# (default 2) in turn; TESTS=0 skips the tests, ROUNDS=0 the timings, SHAPE=K2 (any wkv_bench shape) times another
# shape than K1, STATE_BV=32,64 also times the state passes at those V-tile widths. Output in $OUT (or
# out/compare_trees):
# tests_<tree>.log (each case's relative errors, then the summary) and bench.log, whose lines start with the tree.
# "." is the working tree itself (main).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: compare_trees.sh export BRANCH... | run OP TREE...}
shift
case $mode in
  export)
    for branch in "$@"; do
      dir=.trees/${branch//\//-}
      rm -rf "$dir" && mkdir -p "$dir" && git archive "$branch" | tar -x -C "$dir" || exit 1
      echo "$branch -> $dir"
    done ;;
  run)
    op=${1:?OP (wkv7 or wkv6)}
    shift
    file=$op; [ "$op" = wkv6 ] && file=wkv56
    OUT=${OUT:-out/compare_trees}
    shape=${SHAPE:-K1}
    mkdir -p "$OUT"
    export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
    site=${PYTHONPATH:-}
    [ "${TESTS:-1}" = 0 ] || for tree in "$@"; do
      echo "== float64 tests: $tree ($(date -u +%H:%M:%S))"
      (cd "$tree" && PYTHONPATH=$PWD:$site JAX_PLATFORMS=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider \
          "tests/ops/${file}_pallas_test.py" -k float64 -s 2>&1 | grep -E "vs float64|passed|failed|Error" | tail -20) \
          | tee "$OUT/tests_${tree//\//-}.log"
    done
    for round in $(seq "${ROUNDS:-2}"); do
      for tree in "$@"; do
        echo "== round $round: $tree ($(date -u +%H:%M:%S))"
        (cd "$tree" && PYTHONPATH=$PWD:$site timeout 150 python3 benchmarks/wkv_bench.py --op "$op" \
            --shapes "$shape" --impls pallas_gpu --repeats 20 --pieces "$shape" ${STATE_BV:+--state-bv "$STATE_BV"} 2>&1 \
            | grep "pieces\|pallas_gpu |" \
            | sed "s|^|$tree: |") | tee -a "$OUT/bench.log"
      done
    done ;;
  *) echo "unknown mode $mode (expected export or run)"; exit 2 ;;
esac
