"""The probe on deep unnormalised MLPs that are not benchmark tasks (session of 2026-11-26).

Siblings of ``deep_mlp`` with other depths, widths and teachers, to see whether its miss is the
family's or one task's. Three modes, each printing JSON lines (run from the repository root):

    python reports/benchmark/probe_variants/heldout_mlps.py h_d12w48 probe > heldout_probe.txt
    python reports/benchmark/probe_variants/heldout_mlps.py h_d12w48 picks  # full runs of picks
    python reports/benchmark/probe_variants/heldout_mlps.py h_d12w48 grid   # 5 peaks x 3 warmups

``picks`` reads the probe's answers from /tmp/exp/heldout_probe.txt (where they were made; the
copy beside this script holds them). ``heldout_grid.txt`` holds the picks' and the grids' runs
of h_d12w48 and h_d20w24, seeds 0-2; h_d16s1 and h_d10w64 were probed only.
"""
import sys, functools, dataclasses, json, torch, pandas as pd
torch.set_num_threads(1)
from autowarm.bench.tasks import get_task
from autowarm.bench import _models, _data
from autowarm.bench._run import run_schedule
from autowarm.schedules import ScheduleConfig
from autowarm._suggest import suggest
from autowarm.probe import signals as sig
base = get_task("deep_mlp")
def mk(name, depth, width, scale, ws, d_in=16):
    return dataclasses.replace(base, name=name,
        model_factory=functools.partial(_models.deep_mlp, d_in=d_in, width=width, depth=depth, d_out=1),
        chunks=_data.TeacherChunks(kind="mlp", d_in=d_in, d_hidden=32, d_out=1, scale=scale, noise=0.1, batch_size=64, world_seed=ws))
TASKS = {"h_d12w48": mk("h_d12w48", 12, 48, 2.0, 101), "h_d20w24": mk("h_d20w24", 20, 24, 2.0, 202),
         "h_d16s1": mk("h_d16s1", 16, 32, 1.0, 303), "h_d10w64": mk("h_d10w64", 10, 64, 3.0, 404)}
name = sys.argv[1]; task = TASKS[name]; mode = sys.argv[2]
if mode == "probe":
    for seed in (0, 1, 2):
        with torch.random.fork_rng(devices=[]):
            s = suggest(task.make_model(seed), task.train_data(seed), torch.optim.AdamW, optimizer_kwargs=dict(task.optimizer_kwargs),
                        loss_fn=task.resolved_loss_fn(), total_steps=task.total_steps, seed=seed, progress=False)
        d = s.trace
        cands = []
        for b, g in d[d.phase == "peak_ladder"].groupby("burst"):
            r = sig.burst_stability(g.loss.tolist())
            cands.append(dict(peak=float(g.lr.max()), unstable=bool(r.unstable), rise=r.rise_above_start, tail=float(g.loss.values[-10:].mean())))
        print(json.dumps(dict(task=name, seed=seed, peak=s.peak_lr, warmup=s.warmup_steps, conf=s.confidence, cands=cands)), flush=True)
elif mode == "grid":  # grid: peak x warmup frac
    for seed in (0, 1, 2):
        for lr in (0.004, 0.008, 0.016, 0.032, 0.064):
            for wf in (0.0, 0.1, 0.25):
                r = run_schedule(task, ScheduleConfig(peak_lr=lr, total_steps=task.total_steps, warmup_steps=round(wf*task.total_steps)), seed)
                print(json.dumps(dict(task=name, seed=seed, lr=lr, wf=wf, loss=r.final_val_loss)), flush=True)
if mode == "picks":
    for line in open("/tmp/exp/heldout_probe.txt"):
        if not line.startswith("{"): continue
        r = json.loads(line)
        if r["task"] != name: continue
        res = run_schedule(task, ScheduleConfig(peak_lr=r["peak"], total_steps=task.total_steps, warmup_steps=r["warmup"]), r["seed"])
        print(json.dumps(dict(task=name, seed=r["seed"], peak=r["peak"], warmup=r["warmup"], loss=res.final_val_loss)), flush=True)
