"""suggest() on inputs of less common shapes: masks, numpy seeds, loaders with workers,
packed sequences; and what its errors and warnings say."""

from __future__ import annotations

import dataclasses
import inspect
import math
import traceback
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autowarm
from autowarm._train import BatchStream, nan_in_batch
from tests._tiny import (
    ClsDataset,
    one_thread,  # noqa: F401 (autouse)
)
from tests._tiny import cls_batches as _cls_batches
from tests._tiny import mlp as _mlp

TOTAL = 500
BUDGET = 50


def _run(model: nn.Module, data: Any, *args: Any, **kwargs: Any) -> autowarm.Suggestion:
    kwargs.setdefault("total_steps", TOTAL)
    kwargs.setdefault("budget_steps", BUDGET)
    kwargs.setdefault("progress", False)
    return autowarm.suggest(model, data, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# An inf in a batch is a mask; a NaN is bad data
# --------------------------------------------------------------------------------------------


class _MaskedAttention(nn.Module):
    """Attention pooling under an additive mask; its loss turns NaN once a weight has moved by
    more than 1 (what a transformer does at a too-high LR)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.h = nn.Linear(8, 2)
        self.init = [p.detach().clone() for p in self.parameters()]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
        w = (self.q(x).sum(-1) + mask).softmax(-1).unsqueeze(-1)
        loss = F.cross_entropy(self.h((w * x).sum(1)), labels)
        with torch.no_grad():
            moved = max(
                float((p - q).abs().max())
                for p, q in zip(self.parameters(), self.init, strict=True)
            )
        return {"loss": loss * math.nan if moved > 1.0 else loss}


def _masked_batches(masked_value: float) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(6):
        x = torch.randn(16, 5, 8, generator=g)
        mask = torch.zeros(16, 5)
        mask[:, 3:] = masked_value
        out.append({"x": x, "mask": mask, "labels": (x[:, 0, 0] > 0).long()})
    return out


def test_a_minus_inf_mask_in_the_batch_is_not_blamed_for_divergence() -> None:
    # The probe's high LRs blow the loss up to NaN; the batches are fine. A -inf mask used to
    # turn that into "the batch ... holds a nan or inf: clean the data".
    answers = []
    for masked_value in (-1e9, -math.inf):
        torch.manual_seed(0)
        s = _run(_MaskedAttention(), _masked_batches(masked_value), total_steps=600)
        answers.append((s.warmup_steps, s.peak_lr))
        assert (~s.trace["finite"].astype(bool)).any()  # it did diverge somewhere
    assert answers[0] == answers[1]


def test_only_a_nan_marks_a_batch_as_bad_data() -> None:
    mask = torch.nn.Transformer.generate_square_subsequent_mask(4)
    assert torch.isinf(mask).any()
    assert not nan_in_batch({"x": torch.ones(2), "mask": mask})
    assert not nan_in_batch((torch.tensor([math.inf, -math.inf]), torch.arange(3)))
    assert nan_in_batch({"inputs": [torch.ones(2), torch.tensor([1.0, math.nan])]})
    assert nan_in_batch(torch.tensor([complex(math.nan, 0.0)]))

    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor

    assert nan_in_batch([Batch(torch.tensor([math.nan]))])
    assert not nan_in_batch(Batch(torch.ones(1)))


def test_a_nan_in_the_first_batch_is_blamed_on_the_data() -> None:
    data = _cls_batches()
    data[0][0][0, 0] = math.nan
    with pytest.raises(ValueError, match=r"first batch \(batch 0 .*holds a NaN: clean the data"):
        _run(_mlp(), data, criterion=F.cross_entropy)


def test_the_stream_says_which_batch_of_cycled_data_it_served() -> None:
    for data in (_cls_batches(n_batches=3), iter(_cls_batches(n_batches=3))):
        stream = BatchStream(data, torch.device("cpu"))
        assert stream.last_position is None
        stream.first()
        positions = []
        for _ in range(8):
            stream.next()
            positions.append(stream.last_position)
        assert positions == [0, 1, 2, 0, 1, 2, 0, 1]
        stream.restart()
        stream.next()
        assert stream.last_position == 0
        assert [stream.position_of_step(i) for i in (0, 2, 3, 7, 14)] == [0, 2, 0, 1, 2]


def test_a_position_not_yet_seen_is_not_claimed() -> None:
    stream = BatchStream(_cls_batches(n_batches=10), torch.device("cpu"))
    for _ in range(4):
        stream.next()
    # Four batches drawn, none past the end of the data: step 3 is batch 3; step 12 could be
    # batch 12 or (were the data 6 long) batch 0, so it is not claimed.
    assert stream.position_of_step(3) == 3
    assert stream.position_of_step(12) is None


def test_a_loss_failing_on_one_batch_of_cycled_data_names_its_position() -> None:
    # Six batches, cycled. The loss is non-finite on batch 2 from its second visit in a burst on
    # (step 8), so the error names step 8 and batch 2 of the data, not "batch 8" of six.
    batches = _cls_batches(n_batches=6)
    marker = batches[2][0]
    model = _mlp()
    init = [p.detach().clone() for p in model.parameters()]
    calls = [0]  # forward passes with gradients since the weights were last the initial ones

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        if all(torch.equal(p, q) for p, q in zip(m.parameters(), init, strict=True)):
            calls[0] = 0  # a burst starts from the initial weights
        calls[0] += 1
        loss = F.cross_entropy(m(batch[0]), batch[1])
        revisit = torch.equal(batch[0], marker) and calls[0] > 6
        return loss * math.inf if revisit else loss

    with pytest.raises(
        autowarm.ProbeDivergedError,
        match=r"non-finite at step 8 whatever its LR.*batch 2 of the data as it is yielded",
    ):
        _run(model, batches, loss_fn=loss_fn)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def test_a_numpy_integer_seed_is_taken_as_that_int() -> None:
    a = _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, seed=np.int64(3))
    b = _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, seed=3)
    assert (a.peak_lr, a.warmup_steps) == (b.peak_lr, b.warmup_steps)


def test_suggest_refuses_inference_tensors_and_a_meta_snapshot_before_training() -> None:
    with torch.inference_mode():
        frozen = _mlp()
    with pytest.raises(ValueError, match="inference tensors"):
        _run(frozen, _cls_batches(), criterion=F.cross_entropy)
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="snapshot_device='meta'"):
        _run(model, _cls_batches(), criterion=F.cross_entropy, snapshot_device="meta")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


# --------------------------------------------------------------------------------------------
# What errors and warnings say
# --------------------------------------------------------------------------------------------


class _Shared(nn.Module):
    """One Linear applied twice: a slow starter that a 16-step sweep cannot see fall."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(8, 8)
        self.h = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.l(torch.relu(self.l(x))))


def test_a_sweep_too_short_to_see_the_loss_fall_asks_for_a_larger_budget() -> None:
    # Only the sweep's last two LRs blew up; it used to say "every LR the probe tried
    # diverged". The default budget of a 600-step run (60) gives the sweep 16 steps.
    torch.manual_seed(0)
    with pytest.raises(autowarm.ProbeDivergedError) as info:
        autowarm.suggest(
            _Shared(), _cls_batches(), criterion=F.cross_entropy, total_steps=600, progress=False
        )
    message = str(info.value)
    assert "every LR" not in message
    assert "no LR before it lowered the loss" in message
    assert "in 16 steps (of a budget of 60)" in message
    assert "pass a larger budget_steps (e.g. budget_steps=120" in message
    torch.manual_seed(0)
    s = autowarm.suggest(
        _Shared(),
        _cls_batches(),
        criterion=F.cross_entropy,
        total_steps=600,
        budget_steps=120,
        progress=False,
    )
    assert s.peak_lr > 0


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _persistent_loader() -> torch.utils.data.DataLoader:
    batches = _cls_batches(n_batches=6)
    dataset = torch.utils.data.TensorDataset(
        torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=16,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(5),
    )


def _epoch(loader: torch.utils.data.DataLoader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


def test_a_loader_with_persistent_workers_starts_the_next_epoch_as_without_the_probe() -> None:
    # The probe's iter() made the loader's persistent iterator (two worker processes), which
    # the user's next epoch then reused, in another order.
    expected = _epoch(_persistent_loader())
    loader = _persistent_loader()
    _run(_mlp(), loader, criterion=F.cross_entropy, budget_steps=40)
    assert loader._iterator is None
    got = _epoch(loader)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


class _Augmented(ClsDataset):
    """Random augmentation in __getitem__, drawn in the loader's workers (a transform's way)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.5 * torch.randn(self.x.shape[1]), self.y[i]


def _augmenting_loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _Augmented(), batch_size=16, shuffle=True, num_workers=2, persistent_workers=True
    )


def test_persistent_workers_that_augment_give_every_burst_the_same_batches() -> None:
    # The probe's bursts reused one persistent iterator, whose workers were seeded once from
    # the caller's RNG and never again: every burst saw other augmentations, and the answer
    # moved with the caller's RNG state instead of with `seed`. The user's own iterator (one
    # epoch begun) was restarted by the probe and its workers' generators advanced.
    picks = []
    for caller_seed in (1, 2):
        torch.manual_seed(7)
        loader = _augmenting_loader()
        users = iter(loader)
        next(users)
        torch.manual_seed(caller_seed)
        s = _run(_mlp(), loader, criterion=F.cross_entropy, budget_steps=60)
        assert loader._iterator is users  # the user's iterator, its workers untouched
        first = s.trace[s.trace["step"] == 0]
        assert first["loss"].nunique() == 1, first  # every burst starts on the same batch
        picks.append((s.warmup_steps, s.peak_lr, s.trace["loss"].tolist()))
        # the user's epoch goes on as it would have without the probe
        torch.manual_seed(7)
        twin = iter(_augmenting_loader())
        expected = [next(twin) for _ in range(2)][1]
        got = next(users)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        twin._shutdown_workers()  # type: ignore[attr-defined]
        users._shutdown_workers()  # type: ignore[attr-defined]
    assert picks[0] == picks[1]


def test_the_no_second_moment_warning_points_at_the_suggest_call() -> None:
    # It pointed at the caller of suggest()'s caller (here pytest's own code).
    kwargs: dict[str, Any] = {
        "criterion": F.cross_entropy,
        "total_steps": TOTAL,
        "progress": False,
    }
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        autowarm.suggest(_mlp(), _cls_batches(), torch.optim.SGD, budget_steps=BUDGET, **kwargs)
    ours = [w for w in got if "second moment" in str(w.message)]
    assert len(ours) == 1
    assert (ours[0].filename, ours[0].lineno) == (__file__, line)


def test_a_loss_that_fails_on_the_first_batch_raises_its_error_once() -> None:
    # The first-batch check retries a RuntimeError with gradients on (for losses that take
    # gradients inside); a real error used to come back chained to its own first occurrence.
    def broken(model: nn.Module, batch: Any) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        _run(_mlp(), _cls_batches(), loss_fn=broken)
    text = "".join(traceback.format_exception(info.value))
    assert text.count("RuntimeError: mat1 and mat2") == 1
    assert "During handling of the above exception" not in text


needs_notes = pytest.mark.skipif(
    not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11"
)


@needs_notes
def test_an_error_on_the_first_batch_says_what_the_batch_held_and_how_it_was_scored() -> None:
    # float labels where cross_entropy wants class indices: torch's own error, kept as it is
    # (same type, same message), with a note that shows the float32 targets
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    data = [(x, y.float()) for x, y in _cls_batches()]
    with pytest.raises(RuntimeError) as info:
        _run(model, data, criterion=F.cross_entropy)
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert "criterion(model(inputs), targets) on the first batch" in notes[0]
    assert "(float32[16, 8] cpu, float32[16] cpu)" in notes[0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    def broken(model: nn.Module, batch: Any) -> torch.Tensor:
        raise KeyError("input_ids")

    with pytest.raises(KeyError) as info:
        _run(_mlp(), [{"x": x, "labels": y} for x, y in _cls_batches()], loss_fn=broken)
    (note,) = getattr(info.value, "__notes__", [])
    assert "your loss_fn(model, batch)" in note and "{x: float32[16, 8] cpu, labels: int64" in note


def test_describe_batch_follows_nesting_and_stops() -> None:
    from autowarm._train import MicroBatches, describe_batch

    x = torch.zeros(2, 3, dtype=torch.float16)
    assert (
        describe_batch([x, {"a": (x, 7)}]) == "[float16[2, 3] cpu, {a: (float16[2, 3] cpu, int)}]"
    )
    assert describe_batch(((((x,),),),)) == "(((...)))"  # three levels shown
    assert describe_batch(list(range(10)), items=2) == "[int, int, ...]"
    assert describe_batch(MicroBatches(batches=(x, x), positions=(0, 1))).startswith(
        "2 micro-batches, the first float16[2, 3]"
    )


class _FailsOnThirdStep(torch.optim.AdamW):
    calls = 0

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("the optimizer broke on purpose")
        return super().step(closure)


@needs_notes
def test_an_error_in_a_probe_step_says_where_in_the_probe_it_was_raised() -> None:
    _FailsOnThirdStep.calls = 0
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="broke on purpose") as info:
        _run(model, _cls_batches(), _FailsOnThirdStep, criterion=F.cross_entropy)
    (note,) = getattr(info.value, "__notes__", [])
    assert "(range_test burst 0, step 2, lr " in note and "_FailsOnThirdStep)" in note
    assert "the batch was (float32[16, 8] cpu, int64[16] cpu)" in note
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class _NoLength(dict):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise TypeError("this mapping has no length")


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_batch_the_note_cannot_describe_never_hides_the_error() -> None:
    from autowarm._train import add_note, describe_batch

    nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    assert describe_batch(nested) == "Tensor"  # its sizes raise: the type name instead
    assert describe_batch(_NoLength(a=1)) == "_NoLength"

    def broken(model: nn.Module, batch: Any) -> torch.Tensor:
        raise ValueError("the user's own error")

    with pytest.raises(ValueError, match="the user's own error") as info:
        _run(_mlp(), [(nested, 1)] * 3, loss_fn=broken)
    assert info.value.__context__ is None
    err = ValueError("x")

    def failing() -> str:
        raise RuntimeError("while describing")

    add_note(err, failing)  # the note is dropped, nothing raised
    assert getattr(err, "__notes__", []) == []


@needs_notes
def test_the_note_says_when_a_pair_had_no_criterion() -> None:
    with pytest.raises(TypeError, match="needs a criterion") as info:
        _run(_mlp(), _cls_batches())
    (note,) = getattr(info.value, "__notes__", [])
    assert "an (inputs, targets) pair, with no criterion" in note


@pytest.mark.parametrize("one_shot", [False, True])
def test_a_model_that_writes_into_its_inputs_changes_neither_the_data_nor_the_replays(
    one_shot: bool,
) -> None:
    # An in-place input dropout zeroes and rescales the batch it is given. In a real run each
    # batch passes through once; the probe replays its batches in every burst, and used to
    # hand out the cached (or the user's own) tensors, which then drifted from burst to burst.
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Dropout(0.2, inplace=True), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)
        )

    data = _cls_batches(8)
    before = [(x.clone(), y.clone()) for x, y in data]
    s = _run(model(), (b for b in data) if one_shot else data, criterion=F.cross_entropy)
    for (x, y), (x0, y0) in zip(data, before, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    first = s.trace[s.trace["step"] == 0]["loss"]
    assert len(first) >= 3 and first.nunique() == 1  # same weights, batch and dropout draw
    plain = nn.Sequential(nn.Dropout(0.2), *list(model())[1:])
    other = _run(plain, (b for b in data) if one_shot else data, criterion=F.cross_entropy)
    assert (s.peak_lr, s.warmup_steps) == (other.peak_lr, other.warmup_steps)


def test_a_loss_that_writes_into_a_dataclass_batch_changes_neither_the_data_nor_the_answer() -> (
    None
):
    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor
        y: torch.Tensor

    def loss_fn(model: nn.Module, b: Batch) -> torch.Tensor:
        b.x.sub_(b.x.mean(0)).div_(2.0)  # an in-place normalisation of the inputs
        return F.cross_entropy(model(b.x), b.y)

    data = [Batch(x.clone(), y) for x, y in _cls_batches(8)]
    before = [b.x.clone() for b in data]
    first = _run(_mlp(), data, loss_fn=loss_fn)
    assert all(torch.equal(b.x, x0) for b, x0 in zip(data, before, strict=True))
    again = _run(_mlp(), data, loss_fn=loss_fn)
    assert (first.peak_lr, first.warmup_steps) == (again.peak_lr, again.warmup_steps)


def test_meta_tensors_are_named_before_training() -> None:
    # meta tensors hold no values: torch's own errors ("Cannot copy out of meta tensor",
    # "Tensor.item() cannot be called on meta tensors") said nothing of the batch or model
    meta = [(x.to("meta"), y.to("meta")) for x, y in _cls_batches()]
    with pytest.raises(ValueError, match="a tensor of the batch is on the meta device"):
        _run(_mlp(), meta, criterion=F.cross_entropy)
    with torch.device("meta"):
        unmaterialised = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"weights are on the meta device.*model\.to_empty"):
        _run(unmaterialised, _cls_batches(), criterion=F.cross_entropy)
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, device="meta")


def test_a_scripted_or_lazy_model_is_refused_with_what_to_pass() -> None:
    with pytest.raises(TypeError, match=r"TorchScript module.*pass the eager nn\.Module"):
        _run(torch.jit.script(_mlp()), _cls_batches(), criterion=F.cross_entropy)
    lazy = nn.Sequential(nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"lazy parameters .*0\.weight.*run one forward pass"):
        _run(lazy, _cls_batches(), criterion=F.cross_entropy)


def test_one_batch_passed_as_the_data_gets_the_wrap_it_hint() -> None:
    # Iterating an (inputs, targets) tuple yields its tensors, each read as a batch.
    with pytest.raises(TypeError, match=r"one \(inputs, targets\) batch.*wrap it in a list"):
        _run(_mlp(), _cls_batches()[0], criterion=F.cross_entropy)


def test_a_loss_without_gradient_is_a_clear_error_not_a_tiny_peak() -> None:
    # it returned a "peak" of 1.3e-7 (the sweep's start) at low confidence
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="the gradient was 0 for every parameter at all"):
        _run(model, _cls_batches(), loss_fn=lambda m, b: (m(b[0]) * 0).sum() + 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_dataset_of_examples_is_refused_with_the_loader_to_pass() -> None:
    # Iterated, a TensorDataset yields single (x, y) examples; cross_entropy takes them
    # unbatched, so the probe ran at batch size 1 and returned a peak 5000x too small, at
    # high confidence (and, without total_steps, the number of examples as the run's steps).
    batches = _cls_batches()
    dataset = torch.utils.data.TensorDataset(
        torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    )
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    want = r"dataloader is a dataset \(TensorDataset\), which yields single examples.*DataLoader"
    for total in (TOTAL, None):
        with pytest.raises(TypeError, match=want):
            _run(model, dataset, criterion=F.cross_entropy, total_steps=total)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # a dataset whose items are whole batches, behind batch_size=None, is taken as it is
    already = torch.utils.data.DataLoader(batches, batch_size=None)
    assert _run(model, already, criterion=F.cross_entropy).peak_lr > 0
    with pytest.raises(TypeError, match=r"train_data is a dataset \(TensorDataset\)"):
        autowarm.Task(make_model=lambda seed: _mlp(), train_data=dataset, total_steps=100)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"weight_decya": 0.1},
            r"unexpected keyword argument 'weight_decya'.*did you mean "
            r"'weight_decay'",
        ),
        ({"betas": 0.9}, r"refused its settings \(optimizer_kwargs \{'betas': 0\.9\}\)"),
    ],
)
def test_settings_the_optimizer_refuses_are_said_before_any_forward_pass(
    settings: dict[str, Any], said: str
) -> None:
    calls = []

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(ValueError, match=said):
        _run(_mlp(), _cls_batches(), optimizer_kwargs=settings, loss_fn=loss_fn)
    assert calls == []


def test_a_criterion_with_mapping_batches_is_refused_not_ignored() -> None:
    batches = [{"x": x, "y": y} for x, y in _cls_batches()]
    with pytest.raises(TypeError, match=r"criterion scores \(inputs, targets\) pairs.*'x', 'y'"):
        _run(_mlp(), batches, criterion=F.cross_entropy)


def test_a_model_whose_forward_returns_its_loss_is_scored_by_it() -> None:
    # "the model output (type Tensor) has no loss, though the batch has 'labels'": it had
    class LossModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.net(x), labels)

    batches = [{"x": x, "labels": y} for x, y in _cls_batches()]
    s = _run(LossModel(), batches)
    assert s.peak_lr > 0 and math.isfinite(s.peak_lr)


def test_a_device_name_torch_does_not_know_says_what_to_pass() -> None:
    said = (
        r"device must be None, a device name such as 'cpu', 'cuda', 'cuda:1' or 'mps', an "
        r"accelerator's index, or a torch.device, but got device='gpu'"
    )
    with pytest.raises(ValueError, match=said):
        _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, device="gpu")
    with pytest.raises(ValueError, match=r"but got device='gpu'"):
        autowarm.Task(
            make_model=lambda seed: _mlp(), train_data=_cls_batches(), total_steps=100,
            device="gpu",
        )  # fmt: skip


def test_only_the_hugging_face_dataset_classes_are_taken_for_datasets() -> None:
    # a research code base's own datasets.py is no Hugging Face module
    import types

    from autowarm._train import check_batched

    own = types.ModuleType("datasets")
    exec("class Batches:\n    def __iter__(self):\n        return iter([])\n", own.__dict__)
    check_batched(own.Batches())
    fake_hf = types.ModuleType("datasets.arrow_dataset")
    exec("class Dataset:\n    def __getitem__(self, i):\n        return i\n", fake_hf.__dict__)
    with pytest.raises(TypeError, match=r"is a dataset \(Dataset\)"):
        check_batched(fake_hf.Dataset())


# --------------------------------------------------------------------------------------------
# Set-ups that would make the probe measure something else, refused before any training
# --------------------------------------------------------------------------------------------


def _params_state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def test_a_call_inside_an_autocast_block_is_refused() -> None:
    # autocast keeps its cast copies of the weights until its outermost block ends, so every
    # forward of the probe saw the initial weights: the model "never trained", peak 1e-8
    model = _mlp()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(RuntimeError, match=r"inside a torch\.autocast block .*precision="),
    ):
        _run(model, _cls_batches(), criterion=F.cross_entropy)
    with torch.autocast("cpu", enabled=False):  # a block that turns it off is fine
        _run(model, _cls_batches(), criterion=F.cross_entropy, budget_steps=40)


def test_an_optimizer_stepped_in_backward_is_refused() -> None:
    # PyTorch's "optimizer step in backward" recipe: the hooks stepped the user's optimizers
    # on every probe backward and took the gradients, and the probe said "the gradient was 0"
    model = _mlp()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = {p: torch.optim.AdamW([p]) for p in params}

    def step(p: torch.Tensor) -> None:
        optimizers[p].step()
        optimizers[p].zero_grad()

    handles = [p.register_post_accumulate_grad_hook(step) for p in params]
    before = _params_state(model)
    with pytest.raises(ValueError, match=r"post-accumulate-grad hooks .*handle\.remove\(\)"):
        _run(model, _cls_batches(), criterion=F.cross_entropy)
    assert all(not o.state for o in optimizers.values())
    assert all(torch.equal(a, b) for a, b in zip(before, _params_state(model), strict=True))
    for h in handles:
        h.remove()
    _run(model, _cls_batches(), criterion=F.cross_entropy, budget_steps=40)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            lambda m: torch.optim.AdamW(m.parameters(), betas=(0.9, 0.95)),
            r"optimizer_cls must be an optimizer class, not an optimizer: pass "
            r"optimizer_cls=torch\.optim\.AdamW and its settings as optimizer_kwargs",
        ),
        (
            lambda m: __import__("functools").partial(torch.optim.AdamW, betas=(0.9, 0.95)),
            r"optimizer_cls must be an optimizer class, not a functools\.partial: pass "
            r"optimizer_cls=torch\.optim\.AdamW, optimizer_kwargs=\{'betas': \(0\.9, 0\.95\)\}",
        ),
        (  # the advice must not lead to the next error (lr in optimizer_kwargs is refused)
            lambda m: __import__("functools").partial(torch.optim.AdamW, lr=1e-3, eps=1e-6),
            r"optimizer_kwargs=\{'eps': 1e-06\} \(no lr: the probe chooses it\)$",
        ),
        ("adamw", r"optimizer_cls must be a torch\.optim\.Optimizer subclass .* got 'adamw'"),
    ],
    ids=["instance", "partial", "partial_with_lr", "name"],
)
def test_an_optimizer_given_other_than_as_its_class_says_what_to_pass(
    given: Any, expected: str
) -> None:
    model = _mlp()
    optimizer_cls = given(model) if callable(given) else given
    with pytest.raises(TypeError, match=expected):
        _run(model, _cls_batches(), optimizer_cls, criterion=F.cross_entropy)


_TEMPERATURE = nn.Parameter(torch.tensor(2.0))  # a learned scale held by no module


def _scaled_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x) * _TEMPERATURE, y)


@pytest.mark.parametrize("had_grad", [False, True])
def test_a_trainable_tensor_the_loss_fn_uses_gets_its_grad_back(had_grad: bool) -> None:
    # a CLIP-style logit scale in the loss_fn: the probe's backward passes summed 52 steps of
    # gradient into its .grad, which the user's first update would then have added in
    _TEMPERATURE.grad = torch.full((), 0.25) if had_grad else None
    grad = _TEMPERATURE.grad
    before = _TEMPERATURE.detach().clone()
    _run(_mlp(), _cls_batches(), loss_fn=_scaled_loss)
    if had_grad:
        assert _TEMPERATURE.grad is grad and float(grad) == 0.25
    else:
        assert _TEMPERATURE.grad is None
    assert torch.equal(_TEMPERATURE.detach(), before)  # never trained by the probe


def test_the_autocast_check_works_on_a_torch_whose_check_takes_no_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch before 2.4: is_autocast_enabled() is CUDA's and takes no argument (a TypeError
    # with one); CPU autocast has its own is_autocast_cpu_enabled()
    from autowarm import _suggest

    def old(*args: Any) -> bool:
        if args:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments but 1 was given")
        return False

    monkeypatch.setattr(torch, "is_autocast_enabled", old)
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: True, raising=False)
    with pytest.raises(RuntimeError, match=r"inside a torch\.autocast block \(cpu\)"):
        _suggest._refuse_ambient_autocast()
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: False, raising=False)
    _suggest._refuse_ambient_autocast()
