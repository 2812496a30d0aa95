#!/usr/bin/env bash
# The held-out embedding recommender check: run timing, oracle grid, suggest() and the
# baselines, regret, and the probe's rationale on seed 0. Resumable; about 4 minutes on one
# CPU thread (a full run is ~1.8 s). Run from this folder.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
autowarm bench time --tasks emb_task.py:task
autowarm bench grid --tasks emb_task.py:task --seeds 2 --workers 1 --out . \
    --lrs 0.001,0.002,0.004,0.008,0.016,0.032,0.064
autowarm bench table oracle_grid.csv --task emb_task.py:task --pivot > oracle_pivot.csv
autowarm bench eval --tasks emb_task.py:task --seeds 2 --workers 1 --out .
autowarm bench regret --out .
autowarm probe emb_task.py:task --seed 0 --no-progress -o probe_seed0/suggestion.json
autowarm probe emb_task.py:task --seed 1 --no-progress -o probe_seed1/suggestion.json
