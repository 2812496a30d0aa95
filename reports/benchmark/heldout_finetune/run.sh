#!/usr/bin/env bash
# The held-out fine-tuning check: oracle grid, suggest() and the baselines, regret. Resumable;
# about 10 minutes on two CPU threads (a full run is ~5 s). Run from this folder.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
autowarm bench grid --tasks finetune_task.py:task --seeds 2 --workers 2 --out . \
    --lrs 0.00001,0.0000316,0.0001,0.000316,0.001,0.00316,0.01
autowarm bench table oracle_grid.csv --task finetune_task.py:task --pivot > oracle_pivot.csv
autowarm bench eval --tasks finetune_task.py:task --seeds 2 --workers 2 --out .
autowarm bench regret --out .
