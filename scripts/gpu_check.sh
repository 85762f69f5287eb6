#!/usr/bin/env bash
# The prepared GPU check: gpu-marked tests, the benches on CUDA, a paper-size search for a fixed
# number of steps; one JSON of results (gpu_check.json) in the given folder, else $OUT, else
# outputs/gpu_check/. Fits in 8 minutes on one CUDA GPU. Without a GPU it says so and exits 0.
#
#   scripts/gpu_check.sh [OUT_DIR]
#   scripts/gpu_check.sh --smoke /tmp/g     # every part on the CPU at toy sizes (tests the script)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=(--smoke); shift; fi
OUT_DIR="${1:-${OUT:-outputs/gpu_check}}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's enas_rnn, not an installed one
exec python scripts/gpu_check.py --out "$OUT_DIR" "${SMOKE[@]}"
