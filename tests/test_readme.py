"""The README's Python snippets run as written, on tiny models, with the names they assume.

Each snippet is found by a line it holds (not by position), so the README can be reordered.
A snippet that continues code the reader has (``...`` for "your other arguments", a method
written "in MyModule", a checkpoint loaded before the resume line) gets that one thing
supplied here, said beside it; everything else runs exactly as the README prints it. A changed
API name, argument or return value that the README still shows makes these tests fail.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autowarm
from tests._tiny import cls_batches, mlp, one_thread  # noqa: F401 (one_thread: autouse)

README = Path(__file__).resolve().parents[1] / "README.md"
# the snippets run tiny stand-ins for a real run, shorter than the probe likes
pytestmark = pytest.mark.filterwarnings("ignore:the probe takes .* steps")


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def _block(marker: str) -> str:
    found = [b for b in _python_blocks() if marker in b]
    assert len(found) == 1, f"expected one README python block holding {marker!r}, got {found}"
    return found[0]


def _run(code: str, ns: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code, "<README.md python block>", "exec"), ns)
    return ns


def _split(code: str, marker: str) -> tuple[str, str]:
    # The lines before the one holding marker, and the rest.
    lines = code.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if marker in line)
    return "".join(lines[:at]), "".join(lines[at:])


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write suggestion.json, schedule.yaml, out/, ...


def test_the_probe_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    ns = _run(
        _block('s.save("suggestion.json")'),
        {"model": mlp(), "train_loader": cls_batches()},
    )
    s = ns["s"]
    assert isinstance(s, autowarm.Suggestion) and s.schedule.total_steps == 20_000
    assert isinstance(ns["scheduler"], torch.optim.lr_scheduler.LambdaLR)
    assert ns["optimizer"].param_groups[0]["lr"] == s.schedule.lr_at(0)
    assert s.to_trainer_args()["adam_beta2"] == 0.95  # the betas the README passed were probed
    assert Path("suggestion.json").is_file()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{s.warmup_steps} {s.peak_lr} {s.confidence}"


class _BackboneHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_the_param_groups_snippet() -> None:
    code = _block('"lr_scale": 0.1}')
    assert code.count(", ...)") == 1
    # "..." stands for the reader's other arguments
    code = code.replace(", ...)", ", criterion=F.cross_entropy, total_steps=400, progress=False)")
    ns = _run(
        code,
        {
            "autowarm": autowarm,
            "torch": torch,
            "F": F,
            "model": _BackboneHead(),
            "train_loader": cls_batches(),
        },
    )
    s, optimizer = ns["s"], ns["optimizer"]
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == [0.1 * s.schedule.lr_at(0), s.schedule.lr_at(0)]
    ns["optimizer"].step()
    ns["scheduler"].step()
    assert [g["lr"] for g in optimizer.param_groups] == [
        pytest.approx(0.1 * s.schedule.lr_at(1)),
        pytest.approx(s.schedule.lr_at(1)),
    ]


def test_the_plain_pytorch_snippet_checkpoints_and_resumes(tmp_path: Path) -> None:
    code = _block('scheduler.load_state_dict(ckpt["scheduler"])')
    before, resume = _split(code, "load_state_dict")
    model = mlp()
    ns = _run(
        before,
        {
            "autowarm": autowarm,
            "torch": torch,
            "F": F,
            "model": model,
            "loader": cls_batches(),
            "steps": 400,
            "path": tmp_path / "ckpt.pt",
        },
    )
    for _ in range(3):
        ns["optimizer"].step()
        ns["scheduler"].step()
    _run(before.splitlines(keepends=True)[-1], ns)  # the checkpoint after three updates
    lr_saved = ns["optimizer"].param_groups[0]["lr"]
    # a fresh optimizer and scheduler, as a resumed process builds them, then the README's line
    ns["optimizer"] = torch.optim.AdamW(model.parameters())
    ns["scheduler"] = ns["s"].schedule.lambda_lr(ns["optimizer"])
    ns["ckpt"] = torch.load(ns["path"], weights_only=True)  # the reader's load of `path`
    _run(resume, ns)
    assert ns["scheduler"].last_epoch == 3
    assert ns["optimizer"].param_groups[0]["lr"] == lr_saved == ns["s"].schedule.lr_at(3)


def _tiny_gpt2() -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=11,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (64, 8), generator=g)
    return transformers.GPT2LMHeadModel(config), [{"input_ids": r, "labels": r} for r in ids]


def test_the_hf_trainer_snippet_trains_on_the_suggested_schedule() -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, train_ds = _tiny_gpt2()
    ns = {
        "autowarm": autowarm,
        "torch": torch,
        "model": model,
        "train_ds": train_ds,
        "steps": 60,
        "DataLoader": torch.utils.data.DataLoader,
        "TrainingArguments": transformers.TrainingArguments,
        "Trainer": transformers.Trainer,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Trainer's own notes on a CPU run
        _run(_block("Trainer(model=model, args=args, train_dataset=train_ds).train()"), ns)
    s, args = ns["s"], ns["args"]
    assert (args.learning_rate, args.warmup_steps, args.max_steps) == (
        s.peak_lr,
        s.warmup_steps,
        60,
    )
    assert (args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.95, 0.1, 1.0)
    assert Path("out").is_dir()


def test_the_lightning_snippet_fits_on_the_suggested_schedule() -> None:
    L = pytest.importorskip("lightning")

    class MyModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.loss(batch)

    module = MyModule()
    x, y = (torch.cat(t) for t in zip(*cls_batches(), strict=True))
    # a DataLoader: Lightning reads a plain list as a list of loaders
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    code = _block("module.schedule = s.schedule")
    before, fit = _split(code, "L.Trainer(")
    ns = _run(
        before,
        {
            "autowarm": autowarm,
            "torch": torch,
            "module": module,
            "MyModule": MyModule,
            "loader": loader,
            "steps": 50,
        },
    )
    MyModule.configure_optimizers = ns["configure_optimizers"]  # "# in MyModule"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few loader workers, no logger installed
        _run(fit, {**ns, "L": L})
    optimizer = module.trainer.optimizers[0]
    assert module.trainer.global_step == 50
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ns["s"].schedule.lr_at(50))


def test_the_schedule_config_snippets() -> None:
    code = _block("cfg = ScheduleConfig(")
    line = next(x for x in code.splitlines() if x.startswith("cfg.lr_at(0), cfg.lr_at(500)"))
    expr, shown = line.split("#")
    ns = _run(code, {})
    assert eval(expr, ns) == eval(shown, {})  # the values the comment shows
    assert autowarm.ScheduleConfig.load("schedule.yaml") == ns["cfg"]

    model = mlp()
    loop = _run(
        _block("scheduler = cfg.lambda_lr(optimizer)"),
        {"torch": torch, "model": model, "loader": cls_batches(), "cfg": ns["cfg"]},
    )
    assert loop["scheduler"].last_epoch == 4  # one step per batch of the 4
    assert loop["optimizer"].param_groups[0]["lr"] == ns["cfg"].lr_at(4)

    lightning = _run(_block("return cfg.to_lightning(optimizer)"), {"torch": torch, **ns})
    out = lightning["configure_optimizers"](model)
    assert out["lr_scheduler"]["interval"] == "step"


def test_the_schedule_config_trainer_snippet() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import get_scheduler

    cfg = autowarm.ScheduleConfig(peak_lr=3e-4, total_steps=100, warmup_steps=10, min_lr=3e-5)
    model, train_ds = _tiny_gpt2()
    ns = _run(
        _block('args = TrainingArguments(output_dir="out", **cfg.to_trainer_args())'),
        {"cfg": cfg, "model": model, "train_ds": train_ds},
    )
    assert ns["args"].warmup_steps == 10 and ns["args"].max_steps == 100
    # the line the README leaves as a comment
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr)
    sched = get_scheduler(optimizer=opt, **cfg.to_transformers())
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr_at(0))
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr_at(10))


def test_the_task_snippet_builds_a_task() -> None:
    batches = cls_batches()

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": list(model.parameters())}]

    ns = _run(
        _block("task = autowarm.Task("),
        {
            "autowarm": autowarm,
            "MyModel": mlp,
            "train_loader": batches,
            "val_batches": batches,
            "my_loss": lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
            "groups": groups,
        },
    )
    task = ns["task"]
    assert isinstance(task, autowarm.Task) and task.total_steps == 20_000
    assert task.optimizer_kwargs == {"betas": (0.9, 0.95), "weight_decay": 0.1}


def _documented_columns(code: str, table: str) -> list[str]:
    # The columns the comment of rep.tables[table] (and its continuation lines) lists: asides
    # in parentheses and anything after a ";" left out, "x_low/high" read as x_low, x_high.
    lines = code.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith(f'rep.tables["{table}"]'))
    text = lines[at].split("#", 1)[1]
    for x in lines[at + 1 :]:
        if not x.lstrip().startswith("#"):
            break
        text += " " + x.split("#", 1)[1]
    while "(" in text:
        text = re.sub(r"\([^()]*\)", "", text)
    text = text.split(";")[0]
    text = text.split(":", 1)[-1]  # "one row: source, ..."
    names = []
    for item in (x.strip() for x in text.split(",")):
        assert re.fullmatch(r"[a-z][a-z0-9_]*(/[a-z]+)?", item), f"not a column name: {item!r}"
        head, _, alt = item.partition("/")
        names += [head, head.rsplit("_", 1)[0] + "_" + alt] if alt else [head]
    return names


def test_the_report_snippet_names_real_columns() -> None:
    pytest.importorskip("matplotlib")
    suggestion = autowarm.suggest(
        mlp(), cls_batches(), criterion=F.cross_entropy, total_steps=400, progress=False
    )
    code = _block("rep = suggestion.report()")
    # a probe's report: the lines of a study's and a benchmark's tables are left out
    lines = [x for x in code.splitlines() if not re.match(r'rep.tables\["(trials|regret)"\]', x)]
    ns = _run("\n".join(lines), {"suggestion": suggestion, "autowarm": autowarm})
    rep = ns["rep"]
    for table in ("summary", "comparison"):
        documented = _documented_columns(code, table)
        assert documented, table
        missing = set(documented) - set(rep.tables[table].columns)
        assert not missing, f"README names {sorted(missing)} in {table}, not in the table"
        unnamed = [c for c in rep.tables[table].columns if c not in documented]
        assert all(c in code for c in unnamed), f"README's {table} leaves out {unnamed}"
    assert Path("reports/probe").is_dir()
