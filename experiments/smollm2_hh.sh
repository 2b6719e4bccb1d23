#!/usr/bin/env bash
# Baseline vs DPO vs HaF on SmolLM2-135M-Instruct + HH-RLHF harmless (configs/smollm2_hh.py),
# three seeds each, on one accelerator, then a report-only pass that adds chance and the
# training-free mean-log-prob row and writes OUT/results.md, results.json and the plots.
#
#   bash experiments/smollm2_hh.sh [OUT] [SECONDS] [extra flags or --config.* overrides...]
#
# SECONDS (default 0: no limit) bounds the training; the report then covers the runs that
# finished and names the missing ones (rerunning resumes: finished runs are kept). Extra
# arguments go to every run, e.g. a CPU smoke:
#   bash experiments/smollm2_hh.sh /tmp/smoke 0 --config.train.steps=2 \
#       --config.train.batch_size=2 --config.data.max_length=128 --config.data.max_prompt_length=64 --config.train.eval_every=1
#
# The runs go one after another, sharing a persistent compilation cache: each method compiles
# once, later seeds start at once. (Three methods side by side on one H100 did not pay: HaF
# took 221 s a run among three processes with a cold cache, 26 s beside one other run with a
# warm cache; experiments/RESULTS.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-experiments/smollm2_hh}
SECONDS_LIMIT=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
# One sequence shape (no length bucketing): one compile per method instead of one per bucket.
COMMON=(--config=configs/smollm2_hh.py --alphas= --seeds=0,1,2 --noise=0 --out="$OUT"
        --config.data.bucket_batches=1 "$@")
mkdir -p "$OUT"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/hafrm-jax-cache}
limit=()
if [ "$SECONDS_LIMIT" -gt 0 ]; then limit=(timeout "$SECONDS_LIMIT"); fi
status=0
"${limit[@]}" python experiments/compare.py "${COMMON[@]}" --baselines=false \
  >"$OUT/train.log" 2>&1 || status=$?
echo "training done (status $status; 124: stopped at the time limit)"
python experiments/compare.py "${COMMON[@]}" --report_only 2>&1 | tee "$OUT/report.log"
