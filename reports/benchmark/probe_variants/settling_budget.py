"""suggest() on one benchmark task with several probe budgets: does the settling step move?

Run from the repository root:

    python reports/benchmark/probe_variants/settling_budget.py TASK SEED 200,400,800

Output of the session of 2026-11-27 (fourth): settling_budget.txt.
"""

import sys

import torch

import autowarm.probe._search as search
from autowarm.bench.tasks import get_task
from autowarm.probe import signals

sys.path.insert(0, "reports/benchmark/probe_variants")
from deep_mlp_limits import probe  # the probe as `autowarm bench eval` runs it

torch.set_num_threads(1)

# The probe's own SettlingResult, kept as it is computed (the signals table has only its number).
_seen: list[signals.SettlingResult] = []
_settling_step = signals.settling_step


def _recording_settling_step(frame, **kwargs):
    result = _settling_step(frame, **kwargs)
    _seen.append(result)
    return result


search.sig.settling_step = _recording_settling_step

name, seed, budgets = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")]
task = get_task(name)
for budget in budgets:
    s = probe(task, seed, budget_steps=budget)
    r = _seen[-1]
    print(
        name,
        seed,
        "budget",
        budget,
        f"peak={s.peak_lr:.3g} W={s.warmup_steps}",
        f"settle={r.settling_step:.1f} settled={r.settled} last={r.last_criterion} "
        f"change_step={r.change_step} laststep={r.last_step}",
        flush=True,
    )
