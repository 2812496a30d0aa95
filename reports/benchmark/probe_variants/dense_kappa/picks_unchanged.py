"""suggest() with dense_kappa=True on the 15 benchmark (task, seed) pairs, compared with this
folder's evaluation.csv (its picks). Run from the repository root:
python reports/benchmark/probe_variants/dense_kappa/picks_unchanged.py"""

import sys

import pandas as pd
import torch

from autowarm.bench.tasks import get_task
from autowarm.probe._search import SearchSettings, use_settings

sys.path.insert(0, "reports/benchmark/probe_variants")
from deep_mlp_limits import probe

torch.set_num_threads(1)
ev = pd.read_csv("reports/benchmark/probe_variants/dense_kappa/evaluation.csv")
same = 0
for r in ev.itertuples():
    with use_settings(SearchSettings(dense_kappa=True)):
        s = probe(get_task(r.task), int(r.seed))
    ok = abs(s.peak_lr - r.peak_lr) <= 1e-12 * r.peak_lr and s.warmup_steps == r.warmup_steps
    same += ok
    print(
        r.task,
        r.seed,
        s.peak_lr,
        s.warmup_steps,
        r.peak_lr,
        r.warmup_steps,
        "same" if ok else "DIFF",
        flush=True,
    )
print(f"{same}/{len(ev)} equal")
