#!/usr/bin/env bash
# The held-out vision-transformer check: oracle grid, suggest() and the baselines, regret.
# Resumable; about an hour on two CPU threads (a full run is ~50 s). Run from this folder.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
autowarm bench grid --tasks vit_task.py:task --seeds 2 --workers 2 --out . \
    --lrs 0.00025,0.0005,0.001,0.002,0.004,0.008,0.016
# the first grid's best cell was at its highest peak and longest warmup: extended there
autowarm bench grid --tasks vit_task.py:task --seeds 2 --workers 2 --out . --lrs 0.032,0.064
autowarm bench grid --tasks vit_task.py:task --seeds 2 --workers 2 --out . \
    --lrs 0.004,0.008,0.016,0.032 --warmups 1600
autowarm bench table oracle_grid.csv --task vit_task.py:task --pivot > oracle_pivot.csv
autowarm bench eval --tasks vit_task.py:task --seeds 2 --workers 2 --out .
autowarm bench regret --out .
