#!/usr/bin/env bash
# deep_mlp with eight seeds: the oracle grid and every method, seeds 0-7. Seeds 0-2 are the
# rows of ../three_seeds/ (copied here), so only seeds 3-7 are run. Resumable.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=reports/benchmark/deep_mlp_eight_seeds
autowarm -v bench grid --tasks deep_mlp --seeds 8 --workers "${WORKERS:-2}" --out "$out"
autowarm -v bench eval --tasks deep_mlp --seeds 8 --workers "${WORKERS:-2}" --out "$out"
autowarm bench regret --out "$out"
