"""suggest() on the 15 benchmark (task, seed) pairs, compared with three_seeds/evaluation.csv.
Run from the repository root: python reports/benchmark/probe_variants/picks_unchanged.py"""

import sys

import pandas as pd
import torch

from autowarm.bench.tasks import get_task

sys.path.insert(0, "reports/benchmark/probe_variants")
from deep_mlp_limits import probe

torch.set_num_threads(1)

ev = pd.read_csv("reports/benchmark/three_seeds/evaluation.csv")
ev = ev[ev.method == "autowarm"]
same = 0
for r in ev.itertuples():
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
