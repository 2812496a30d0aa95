"""suggest() on the 15 benchmark (task, seed) pairs, compared with the autowarm rows of an
evaluation CSV (default three_seeds/evaluation.csv). Run from the repository root:

    python reports/benchmark/probe_variants/picks_unchanged.py
    python reports/benchmark/probe_variants/picks_unchanged.py \\
        reports/benchmark/probe_variants/dense_kappa/evaluation.csv dense_kappa=true

The second form plans the probe with the given settings (as ``bench eval --probe-setting``)
and compares with that CSV's rows of the variant.
"""

import sys

import pandas as pd
import torch

from autowarm.bench._evaluate import method_label
from autowarm.bench.tasks import get_task
from autowarm.probe._search import SearchSettings, parse_settings, use_settings

sys.path.insert(0, "reports/benchmark/probe_variants")
from deep_mlp_limits import probe

torch.set_num_threads(1)

csv = sys.argv[1] if len(sys.argv) > 1 else "reports/benchmark/three_seeds/evaluation.csv"
overrides = parse_settings(sys.argv[2:])
ev = pd.read_csv(csv)
ev = ev[ev.method == method_label("autowarm", overrides)]
same = 0
for r in ev.itertuples():
    with use_settings(SearchSettings(**overrides)):
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
