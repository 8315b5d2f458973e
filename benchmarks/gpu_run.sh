#!/usr/bin/env bash
# The full GPU benchmark, split by op and dtype so that each command stays within a 10-minute limit.
# Usage: bash benchmarks/gpu_run.sh [OUT]   (default OUT: benchmarks/results)
# Then: python benchmarks/readme_table.py OUT/bench-<gpu>-*.json > table.md
set -euo pipefail
out="${1:-benchmarks/results}"
python -m fastgp info
status=0
for cases in 'penalty/*/fp32/*' 'penalty/*/bf16/*' 'penalty/*/fp16/*' interpolate 'normalize/*/fp32/*' \
             'normalize/*/bf16/*' 'normalize/*/fp16/*' wgan_step,r1; do
    # A wrong or failing provider makes `fastgp bench` exit 1; run the rest, then report it.
    python -m fastgp bench --device cuda --cases "$cases" --out "$out" || status=1
done
# Host µs per call against the host goals, with real launches (and the autograd floor beside them).
python -m fastgp bench --host --device cuda --out "$out" || status=1
exit "$status"
