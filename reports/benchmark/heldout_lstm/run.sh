#!/usr/bin/env bash
# The held-out LSTM check: oracle grid, suggest() and the baselines, regret. Resumable; about
# 40 minutes on one CPU thread (a full run is ~25 s). Run from this folder.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
autowarm bench grid --tasks lstm_task.py:task --seeds 2 --workers 1 --out . \
    --lrs 0.001,0.002,0.004,0.008,0.016,0.032,0.064
autowarm bench table oracle_grid.csv --task lstm_task.py:task --pivot > oracle_pivot.csv
autowarm bench eval --tasks lstm_task.py:task --seeds 2 --workers 1 --out .
autowarm bench regret --out .
