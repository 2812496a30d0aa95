#!/usr/bin/env bash
# The dense-kappa probe variant (SearchSettings.dense_kappa, off by default) on the benchmark's
# five tasks over seeds 0-2 (against three_seeds/oracle_grid.csv) and on the held-out embedding
# recommender (against heldout_embeddings/oracle_grid.csv). Run from the repository root.
set -euo pipefail
here=reports/benchmark/probe_variants/dense_kappa
export OMP_NUM_THREADS=1
cp reports/benchmark/three_seeds/oracle_grid.csv "$here/"
autowarm bench eval --methods autowarm --probe-setting dense_kappa=true --seeds 3 --workers 2 \
    --out "$here"
autowarm bench regret --out "$here"
rm "$here/oracle_grid.csv"
emb=reports/benchmark/heldout_embeddings
cp "$emb"/emb_task.py "$emb"/oracle_grid.csv* "$here/heldout_embeddings/"
(cd "$here/heldout_embeddings" && autowarm bench eval --tasks emb_task.py:task \
    --methods autowarm --probe-setting dense_kappa=true --seeds 2 --workers 2 --out . \
    && autowarm bench regret --out .)
rm "$here/heldout_embeddings/emb_task.py" "$here/heldout_embeddings/"oracle_grid.csv*
