"""The probe on deep unnormalised MLPs that are not benchmark tasks (session of 2026-11-26).

Siblings of ``deep_mlp`` with other depths, widths and teachers, to see whether its miss is the
family's or one task's. Three modes, each printing JSON lines (run from the repository root):

    python reports/benchmark/probe_variants/heldout_mlps.py h_d12w48 probe > heldout_probe.txt
    python reports/benchmark/probe_variants/heldout_mlps.py h_d12w48 picks  # full runs of picks
    python reports/benchmark/probe_variants/heldout_mlps.py h_d12w48 grid   # 5 peaks x 3 warmups

``picks`` reads the probe's answers from ``heldout_probe.txt`` beside this script (or from the
file named as a third argument). ``heldout_grid.txt`` holds the picks' and the grids' runs
of h_d12w48 and h_d20w24, seeds 0-2; h_d16s1 and h_d10w64 were probed only.
"""

import dataclasses
import functools
import json
import sys
from pathlib import Path

import torch

from autowarm.bench import _data, _models
from autowarm.bench._run import run_schedule
from autowarm.bench.tasks import get_task
from autowarm.probe import signals as sig
from autowarm.schedules import ScheduleConfig

sys.path.insert(0, str(Path(__file__).parent))
from deep_mlp_limits import probe  # the probe as `autowarm bench eval` runs it

torch.set_num_threads(1)
PROBED = "heldout_probe.txt"
base = get_task("deep_mlp")


def mk(name, depth, width, scale, ws, d_in=16):
    return dataclasses.replace(
        base,
        name=name,
        model_factory=functools.partial(
            _models.deep_mlp, d_in=d_in, width=width, depth=depth, d_out=1
        ),
        chunks=_data.TeacherChunks(
            kind="mlp",
            d_in=d_in,
            d_hidden=32,
            d_out=1,
            scale=scale,
            noise=0.1,
            batch_size=64,
            world_seed=ws,
        ),
    )


TASKS = {
    "h_d12w48": mk("h_d12w48", 12, 48, 2.0, 101),
    "h_d20w24": mk("h_d20w24", 20, 24, 2.0, 202),
    "h_d16s1": mk("h_d16s1", 16, 32, 1.0, 303),
    "h_d10w64": mk("h_d10w64", 10, 64, 3.0, 404),
}
name = sys.argv[1]
task = TASKS[name]
mode = sys.argv[2]
if mode == "probe":
    for seed in (0, 1, 2):
        s = probe(task, seed)
        d = s.trace
        cands = []
        for _, g in d[d.phase == "peak_ladder"].groupby("burst"):
            r = sig.burst_stability(g.loss.tolist())
            cands.append(
                dict(
                    peak=float(g.lr.max()),
                    unstable=bool(r.unstable),
                    rise=r.rise_above_start,
                    tail=float(g.loss.values[-10:].mean()),
                )
            )
        print(
            json.dumps(
                dict(
                    task=name,
                    seed=seed,
                    peak=s.peak_lr,
                    warmup=s.warmup_steps,
                    conf=s.confidence,
                    cands=cands,
                )
            ),
            flush=True,
        )
elif mode == "grid":  # grid: peak x warmup frac
    for seed in (0, 1, 2):
        for lr in (0.004, 0.008, 0.016, 0.032, 0.064):
            for wf in (0.0, 0.1, 0.25):
                r = run_schedule(
                    task,
                    ScheduleConfig(
                        peak_lr=lr,
                        total_steps=task.total_steps,
                        warmup_steps=round(wf * task.total_steps),
                    ),
                    seed,
                )
                print(
                    json.dumps(dict(task=name, seed=seed, lr=lr, wf=wf, loss=r.final_val_loss)),
                    flush=True,
                )
if mode == "picks":
    answers = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).with_name(PROBED)
    for line in answers.read_text().splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r["task"] != name:
            continue
        res = run_schedule(
            task,
            ScheduleConfig(
                peak_lr=r["peak"], total_steps=task.total_steps, warmup_steps=r["warmup"]
            ),
            r["seed"],
        )
        print(
            json.dumps(
                dict(
                    task=name,
                    seed=r["seed"],
                    peak=r["peak"],
                    warmup=r["warmup"],
                    loss=res.final_val_loss,
                )
            ),
            flush=True,
        )
