#!/usr/bin/env bash
# Numerical noise of a full run: each cell is run four times with its peak LR moved by 0, 1, 2 and
# 3 parts in 10^9 (a change no schedule decision could ever make), on the seeds of the oracle grid.
# Resumable: rows already in grid.csv are skipped. Summarise with summary.py beside it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
csv=reports/benchmark/numerical_noise/grid.csv
jitter() { python - "$@" <<'PY'
import sys
print(",".join(repr(float(lr) * (1 + k * 1e-9)) for lr in sys.argv[1].split(",") for k in range(4)))
PY
}
autowarm -v bench grid --tasks deep_mlp --lrs "$(jitter 0.016,0.024,0.032)" --warmups 200,500 \
    --seeds 3 --workers "${WORKERS:-1}" --csv "$csv"
autowarm -v bench grid --tasks convnet --lrs "$(jitter 0.008)" --warmups 20 \
    --seeds 3 --workers "${WORKERS:-1}" --csv "$csv"
autowarm -v bench grid --tasks postln_lm --lrs "$(jitter 0.008)" --warmups 60 \
    --seeds 3 --workers "${WORKERS:-1}" --csv "$csv"
