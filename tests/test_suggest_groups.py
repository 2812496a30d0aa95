"""suggest(param_groups=...): the probe trains the real run's parameter groups, each at its
lr_scale times the LR it tries, and refuses groups it could not honour."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autowarm
from autowarm._groups import resolve_param_groups, second_moment_beta
from tests._tiny import cls_batches, mlp, one_thread  # noqa: F401 (one_thread: autouse)

TOTAL = 500
BUDGET = 50
_batches = cls_batches
_mlp = mlp


def _run(model: nn.Module, **kwargs: Any) -> autowarm.Suggestion:
    kwargs.setdefault("criterion", F.cross_entropy)
    kwargs.setdefault("total_steps", TOTAL)
    kwargs.setdefault("budget_steps", BUDGET)
    kwargs.setdefault("progress", False)
    return autowarm.suggest(model, _batches(), **kwargs)


class _Recording(torch.optim.AdamW):
    """AdamW that records, at every step, each group's lr, weight_decay and parameter count."""

    log: ClassVar[list[list[tuple[float, float, int]]]] = []

    def step(self, closure: Any = None) -> Any:
        _Recording.log.append(
            [(g["lr"], g["weight_decay"], len(g["params"])) for g in self.param_groups]
        )
        return super().step(closure)


def _backbone_head(model: nn.Sequential) -> list[dict[str, Any]]:
    return [
        {"params": model[0].parameters(), "lr_scale": 0.1},
        {"params": [model[2].weight], "weight_decay": 0.0},
        {"params": [model[2].bias], "weight_decay": 0.0, "lr_scale": 2.0},
    ]


def test_each_group_trains_at_its_scale_with_its_own_settings() -> None:
    model = _mlp()
    _Recording.log = []
    s = _run(model, optimizer_cls=_Recording, param_groups=_backbone_head)
    assert _Recording.log, "the probe took no step"
    for groups in _Recording.log:
        (lr0, wd0, n0), (lr1, wd1, n1), (lr2, wd2, n2) = groups
        assert (n0, n1, n2) == (2, 1, 1)
        assert wd0 == 0.01 and wd1 == 0.0 and wd2 == 0.0  # AdamW's default, then the groups'
        assert lr0 == pytest.approx(0.1 * lr1, rel=1e-12)
        assert lr2 == pytest.approx(2.0 * lr1, rel=1e-12)
    # The trace's LR is that of a group at scale 1, and the rationale says so.
    assert s.trace["lr"].max() == pytest.approx(max(g[1][0] for g in _Recording.log))
    assert "3 parameter groups at 0.1, 1, 2 times" in s.rationale


def test_one_group_of_every_parameter_is_the_default() -> None:
    plain = _run(_mlp())
    grouped = _run(_mlp(), param_groups=lambda m: [{"params": m.parameters()}])
    assert (grouped.peak_lr, grouped.warmup_steps) == (plain.peak_lr, plain.warmup_steps)
    assert grouped.trace["loss"].tolist() == plain.trace["loss"].tolist()


class _SplitsItsOwn(torch.optim.AdamW):
    """AdamW that groups the parameters it is given itself, as many codebases' optimizers do:
    matrices with weight decay; vectors without, at half the LR (an ``lr_scale`` key, which
    ``ScheduleConfig.lambda_lr`` honours in the real run)."""

    log: ClassVar[list[list[float]]] = []

    def __init__(self, params: Any, lr: float = 1e-3, **kwargs: Any) -> None:
        params = [q for p in params for q in (p["params"] if isinstance(p, dict) else [p])]
        groups = [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr_scale": 0.5},
        ]
        super().__init__(groups, lr=lr, **kwargs)

    def step(self, closure: Any = None) -> Any:
        _SplitsItsOwn.log.append([g["lr"] for g in self.param_groups])
        return super().step(closure)


def test_an_optimizer_that_groups_the_parameters_itself_keeps_its_groups_lr_scales() -> None:
    # It used to fail with "zip() argument 2 is shorter than argument 1".
    _SplitsItsOwn.log = []
    s = _run(_mlp(), optimizer_cls=_SplitsItsOwn)
    assert s.probe_steps > 0 and _SplitsItsOwn.log
    for lr_matrices, lr_vectors in _SplitsItsOwn.log:
        assert lr_vectors == pytest.approx(lr_matrices / 2, rel=1e-12)
    # ... as the suggested schedule drives them in the real run
    model = _mlp()
    optimizer = _SplitsItsOwn(model.parameters())
    scheduler = s.schedule.lambda_lr(optimizer)
    for _ in range(s.warmup_steps + 1):
        optimizer.step()
        scheduler.step()
    lr_matrices, lr_vectors = scheduler.get_last_lr()
    assert lr_matrices > 0 and lr_vectors == pytest.approx(lr_matrices / 2, rel=1e-12)


def test_an_optimizer_that_regroups_the_given_param_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="made 2 parameter groups from the 1 passed"):
        _run(
            _mlp(),
            optimizer_cls=_SplitsItsOwn,
            param_groups=lambda m: [{"params": m.parameters()}],
        )


def test_a_parameter_left_out_of_the_groups_does_not_train() -> None:
    model = _mlp()
    _Recording.log = []
    seen: list[torch.Tensor] = []

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(m[0].weight.detach().clone())
        return F.cross_entropy(m(batch[0]), batch[1])

    before = [p.detach().clone() for p in model.parameters()]
    _run(model, criterion=None, loss_fn=loss, optimizer_cls=_Recording,
         param_groups=[{"params": list(model[2].parameters())}])  # fmt: skip
    assert all(len(g) == 1 and g[0][2] == 2 for g in _Recording.log)
    assert all(torch.equal(w, before[0]) for w in seen)  # the first layer never moved
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_model_comes_back_with_groups() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    _run(model, param_groups=_backbone_head)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        (lambda m: [{"params": m.parameters(), "lr": 1e-3}], ValueError, "lr_scale"),
        (lambda m: [{"params": m.parameters(), "initial_lr": 1e-3}], ValueError, "lr_scale"),
        (lambda m: [{"params": m.parameters(), "weight_decya": 0.0}], ValueError,
         r"\['weight_decya'\], which AdamW does not read: not in"),
        (lambda m: [{"params": [torch.nn.Parameter(torch.zeros(3))]}], ValueError,
         r"tensor of shape \(3,\), which is not a parameter of the model"),
        (lambda m: [{"params": [m[0].weight]}, {"params": m.parameters()}], ValueError,
         r"'0.weight' is in param_groups\[0\] and param_groups\[1\]"),
        (lambda m: [{"params": m.parameters(), "maximize": True}], ValueError,
         r"param_groups\[0\] sets maximize=True"),
        (lambda m: [{"params": m.parameters(), "lr_scale": 0.0}], ValueError, "finite float > 0"),
        (lambda m: [{"params": m.parameters(), "lr_scale": float("nan")}], ValueError, "> 0"),
        (lambda m: [{"params": m.parameters(), "lr_scale": "0.1"}], ValueError, "a float"),
        (lambda m: {"params": m.parameters()}, TypeError, "a list of dicts"),
        (lambda m: [m.parameters()], TypeError, r"param_groups\[0\] must be a dict"),
        (lambda m: [{"weight_decay": 0.0}], TypeError, r"with keys \['weight_decay'\]"),
        (lambda m: [{"params": [m[0].weight]}], ValueError, "no parameter with requires_grad"),
        (lambda m: [{"params": m[0]}], TypeError,
         r"\['params'\] is a Linear module, not its parameters: pass module.parameters\(\)"),
        (lambda m: [{"params": 3}], TypeError, r"\['params'\] must be a parameter or an iterable"),
    ],
)  # fmt: skip
def test_groups_the_probe_cannot_honour_are_refused_before_training(
    groups: Any, error: type[Exception], match: str
) -> None:
    model = _mlp()
    if match == "no parameter with requires_grad":
        model[0].weight.requires_grad_(False)
    calls: list[int] = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(error, match=match):
        _run(model, param_groups=groups)
    assert not calls  # refused before the first forward pass


def test_a_group_list_is_not_changed_by_the_probe() -> None:
    model = _mlp()
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0, "lr_scale": 0.5}]
    _run(model, param_groups=groups)
    assert set(groups[0]) == {"params", "weight_decay", "lr_scale"}  # no defaults written in


def test_a_numpy_lr_scale_is_a_float_to_the_probe_and_the_schedule() -> None:
    import numpy as np

    model = _mlp()

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        return [
            {"params": m[0].parameters(), "lr_scale": np.float32(0.1)},
            {"params": m[2].parameters()},
        ]

    resolved = resolve_param_groups(groups, model, torch.optim.AdamW, {})
    assert [g.lr_scale for g in resolved] == [pytest.approx(0.1), 1.0]
    optimizer = torch.optim.AdamW(groups(model))
    config = autowarm.ScheduleConfig(peak_lr=1.0, total_steps=10, warmup_steps=0)
    scheduler = config.lambda_lr(optimizer)
    backbone, head = scheduler.get_last_lr()
    assert backbone == pytest.approx(0.1 * head)


def test_an_lr_scale_too_large_for_a_float_is_a_bad_value_not_an_overflow() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match=r"\['lr_scale'\] must be a finite float > 0"):
        resolve_param_groups(
            [{"params": model.parameters(), "lr_scale": 10**400}], model, torch.optim.AdamW, {}
        )


def test_resolve_takes_a_single_tensor_as_a_group() -> None:
    model = _mlp()
    specs = resolve_param_groups([{"params": model[0].weight}], model, torch.optim.Adam, {})
    assert specs[0].params == (model[0].weight,) and specs[0].lr_scale == 1.0


def test_resolve_takes_named_parameters() -> None:
    # torch's optimizers take (name, parameter) pairs since 2.6; the probe takes them too.
    model = _mlp()
    named = list(model.named_parameters())
    specs = resolve_param_groups(
        [{"params": named[:2], "lr_scale": 0.5}, {"params": named[2:]}],
        model,
        torch.optim.AdamW,
        {},
    )
    assert [s.params for s in specs] == [
        tuple(p for _, p in named[:2]),
        tuple(p for _, p in named[2:]),
    ]


def test_the_slowest_groups_beta2_is_the_one_read() -> None:
    model = _mlp()
    groups = [
        {"params": list(model[0].parameters()), "betas": (0.9, 0.95)},
        {"params": list(model[2].parameters())},  # takes the optimizer's betas
    ]
    specs = resolve_param_groups(groups, model, torch.optim.AdamW, {"betas": (0.9, 0.99)})
    assert second_moment_beta(torch.optim.AdamW, {"betas": (0.9, 0.99)}, specs) == 0.99
    assert second_moment_beta(torch.optim.AdamW, {}, specs) == 0.999  # AdamW's default
    assert second_moment_beta(torch.optim.AdamW, {}, None) == 0.999
    assert second_moment_beta(torch.optim.SGD, {"momentum": 0.9}) is None  # no betas at all


def test_a_group_list_holding_a_generator_is_refused() -> None:
    # The list is the caller's, who builds the real run's optimizer from it afterwards: the
    # probe reading a generator in it would leave that optimizer's group empty, silently.
    model = _mlp()
    groups = [{"params": model[0].parameters(), "lr_scale": 0.1},
              {"params": list(model[2].parameters())}]  # fmt: skip
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\] is a one-shot generator"):
        _run(model, param_groups=groups)
    assert len(list(groups[0]["params"])) == 2  # left for the caller's optimizer
    with pytest.raises(TypeError, match="param_groups is a one-shot generator"):
        _run(model, param_groups=(g for g in [{"params": list(model.parameters())}]))
    # A function of the model may return generators: it makes fresh ones for each call.
    _run(model, param_groups=lambda m: [{"params": m.parameters()}])


class _StrictKeys(torch.optim.AdamW):
    """An optimizer that refuses group keys it does not read (as some third-party ones do)."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        params = list(params)
        for group in params:
            extra = set(group) - {"params", "lr", "weight_decay", "betas", "eps"}
            if extra:
                raise ValueError(f"unknown group keys {sorted(extra)}")
        super().__init__(params, **kwargs)


def test_a_task_trial_builds_an_optimizer_that_refuses_unknown_group_keys() -> None:
    from autowarm.schedules import ScheduleConfig
    from autowarm.study._trial import train_trial

    task = autowarm.Task(make_model=lambda s: _mlp(), train_data=_batches(),
                         criterion=F.cross_entropy, total_steps=6, optimizer_cls=_StrictKeys,
                         param_groups=_backbone_head)  # fmt: skip
    _run(_mlp(), optimizer_cls=_StrictKeys, param_groups=_backbone_head)  # the probe takes it
    optimizer = task.make_optimizer(_mlp(), 1e-3)
    assert [g.get("lr_scale", 1.0) for g in optimizer.param_groups] == [0.1, 1.0, 2.0]
    out = train_trial(task, ScheduleConfig(peak_lr=1e-3, total_steps=6, warmup_steps=2), seed=0)
    assert out.steps == 6


class _Tied(nn.Module):
    """An output layer sharing the input layer's weight, as a decoder shares the embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 8, bias=False)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8, bias=False)
        self.head.weight = self.embed.weight
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.head(self.mid(self.embed(x)))))


def test_a_tied_parameter_named_twice_is_refused_with_both_names() -> None:
    model = _Tied()
    tied = r"'embed.weight' \(tied: the same tensor as 'head.weight'\) is "
    with pytest.raises(ValueError, match=tied + r"twice in param_groups\[0\]: list it once"):
        resolve_param_groups([{"params": [model.embed.weight, model.head.weight]}], model,
                             torch.optim.AdamW, {})  # fmt: skip
    with pytest.raises(ValueError, match=tied + r"in param_groups\[0\] and param_groups\[1\]"):
        resolve_param_groups([{"params": list(model.embed.parameters())},
                              {"params": list(model.head.parameters()), "lr_scale": 0.5}],
                             model, torch.optim.AdamW, {})  # fmt: skip
    # model.parameters() lists it once: fine
    _run(model, param_groups=lambda m: [{"params": m.parameters()}])


class _OwnGroupKey(torch.optim.AdamW):
    """A third-party optimizer (not in torch.optim) that reads a group key of its own."""

    def step(self, closure: Any = None) -> Any:
        assert all("use_fast_path" in g for g in self.param_groups)
        return super().step(closure)


_OwnGroupKey.__module__ = "thirdparty.optim"


def test_a_third_party_optimizers_own_group_key_is_passed_on_with_a_warning() -> None:
    model = _mlp()
    with pytest.warns(UserWarning, match=r"sets \['use_fast_path'\].*passed on as given"):
        s = _run(
            model,
            optimizer_cls=_OwnGroupKey,
            param_groups=lambda m: [{"params": m.parameters(), "use_fast_path": True}],
        )
    assert s.probe_steps > 0


def test_a_group_name_is_accepted_and_a_misspelt_optimizer_setting_is_named_as_such() -> None:
    model = _mlp()
    specs = resolve_param_groups(
        [{"params": list(model.parameters()), "name": "all"}], model, torch.optim.AdamW, {}
    )
    assert specs[0].options == {"name": "all"}  # Lightning's LearningRateMonitor reads it
    with pytest.raises(ValueError, match=r"AdamW refused its settings \(optimizer_kwargs "):
        resolve_param_groups(
            [{"params": list(model.parameters())}], model, torch.optim.AdamW, {"weight_decya": 0.1}
        )


def test_groups_an_optimizer_was_built_from_say_why_they_hold_lr() -> None:
    model = _mlp()
    groups = [{"params": list(model.parameters()), "lr_scale": 0.5}]
    torch.optim.AdamW(groups, lr=1e-3)  # writes 'lr' and its other defaults into the dicts
    with pytest.raises(ValueError, match=r"an optimizer built from these dicts wrote"):
        resolve_param_groups(groups, model, torch.optim.AdamW, {})
    with pytest.raises(ValueError, match=r"reads it$"):  # set by hand: no such guess
        resolve_param_groups(
            [{"params": list(model.parameters()), "lr": 1e-3}], model, torch.optim.AdamW, {}
        )


def test_the_training_record_holds_the_groups_and_the_trainer_export_warns_of_them(
    tmp_path: Any,
) -> None:
    # TrainingArguments holds one learning_rate and one weight_decay: a backbone probed at
    # 0.1x the peak came out of to_trainer_args() silently trained at 1x
    s = _run(_mlp(), param_groups=_backbone_head)
    assert s.training["param_groups"] == [
        {"lr_scale": 0.1},
        {"lr_scale": 1.0, "weight_decay": 0.0},
        {"lr_scale": 2.0, "weight_decay": 0.0},
    ]
    loaded = autowarm.Suggestion.load(s.save(tmp_path / "s.json"))
    assert loaded.training == s.training
    with pytest.warns(UserWarning) as caught:
        args = loaded.to_trainer_args()
    (message,) = [str(w.message) for w in caught if "parameter group" in str(w.message)]
    assert message.startswith(
        "the schedule was measured on 3 parameter group(s) (lr_scale 0.1, 1, 2; "
        "weight_decay=0.0 in "
        "group 1; weight_decay=0.0 in group 2), which TrainingArguments cannot hold"
    )
    assert "Trainer(optimizers=(optimizer, schedule.lambda_lr(optimizer)))" in message
    assert args["learning_rate"] == s.peak_lr  # a group with lr_scale 1's LR, as documented


def test_one_plain_group_gives_no_group_warning_and_a_bad_record_is_named() -> None:
    import warnings

    s = _run(_mlp(), param_groups=lambda m: [{"params": m.parameters()}])
    assert s.training["param_groups"] == [{"lr_scale": 1.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.to_trainer_args()
    assert "param_groups" not in _run(_mlp()).training  # no groups given: none recorded
    bad = {**s.to_dict(), "training": {**s.training, "param_groups": [{"lr_scale": -1}]}}
    with pytest.raises(ValueError, match=r"field 'training': param_groups\[0\] must be"):
        autowarm.Suggestion.from_dict(bad)


def test_a_group_setting_with_no_json_form_is_left_out_of_the_record_and_a_name_is_no_setting(
    tmp_path: Any,
) -> None:
    import warnings

    # a dtype as a third-party optimizer's group key: save() failed after the probe had run
    with pytest.warns(UserWarning, match="passed on as given"):
        s = _run(
            _mlp(),
            optimizer_cls=_OwnGroupKey,
            param_groups=lambda m: [
                {"params": m[0].parameters(), "use_fast_path": torch.bfloat16, "name": "body"},
                {"params": m[2].parameters(), "use_fast_path": torch.float32, "name": "head"},
            ],
        )
    assert s.training["param_groups"] == [
        {"lr_scale": 1.0, "name": "body"},
        {"lr_scale": 1.0, "name": "head"},
    ]
    assert autowarm.Suggestion.load(s.save(tmp_path / "s.json")).training == s.training
    # named groups at one scale with no settings of their own fit TrainingArguments (the
    # optimizer does not: that warning is another)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.to_trainer_args()
    assert not [w for w in caught if "parameter group" in str(w.message)]
    assert [w for w in caught if "_OwnGroupKey, which TrainingArguments" in str(w.message)]
