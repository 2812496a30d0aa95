from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autowarm.probe._state import ModelSnapshot, RngState, preserved, rng_state, set_rng_state


class _Net(nn.Module):
    """BatchNorm, Dropout, a frozen layer, tied weights, buffers of every kind."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(5, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_buffer("maybe", None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.scratch.add_(1.0)
        return self.head(self.drop(self.bn(self.frozen(self.embed(ids)))))


def _mixed_model() -> _Net:
    model = _Net()
    model.train()
    model.bn.eval()  # mixed train/eval submodules
    model.bn.running_mean.uniform_()  # not the default values
    ids = torch.arange(5)
    F.cross_entropy(model(ids), ids).backward()  # existing .grad on trainable params
    return model


def _state(model: nn.Module) -> dict[str, Any]:
    """Clones of everything the snapshot promises to restore (never a bare state_dict())."""
    named = [*model.named_parameters(remove_duplicate=False)]
    return {
        "params": {n: p.detach().clone() for n, p in named},
        "buffers": {n: b.clone() for n, b in model.named_buffers(remove_duplicate=False)},
        "ids": {n: id(p) for n, p in named},
        "storage": {n: t.data_ptr() for n, t in [*named, *model.named_buffers()]},
        "requires_grad": {n: p.requires_grad for n, p in named},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in named},
        "training": {n: m.training for n, m in model.named_modules()},
        "maybe": model._buffers["maybe"],
    }


def _assert_same(before: dict[str, Any], model: nn.Module, *, in_place: bool = True) -> None:
    after = _state(model)
    assert after["ids"] == before["ids"]
    if in_place:  # copied into the same memory, not swapped for new tensors
        assert after["storage"] == before["storage"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["maybe"] is before["maybe"]
    for kind in ("params", "buffers"):
        assert after[kind].keys() == before[kind].keys()
        for name, tensor in before[kind].items():
            assert after[kind][name].dtype == tensor.dtype, name
            assert torch.equal(after[kind][name], tensor), name
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(after["grads"][name], grad), name


def _mess_up(model: _Net) -> None:
    """Everything a probe burst could do to a model."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        ids = torch.randint(0, 5, (5,))
        F.cross_entropy(model(ids), ids).backward()
        optimizer.step()
    model.frozen.requires_grad_(True)
    model.embed.weight.requires_grad_(False)
    model.head.weight.grad = None
    model.frozen.weight.grad = torch.ones_like(model.frozen.weight)
    model.maybe = torch.ones(1)
    with torch.no_grad():
        model.bn.running_var.mul_(3.0)
    random.random()
    np.random.rand(3)


def test_restores_everything_after_success() -> None:
    model = _mixed_model()
    before = _state(model)
    with preserved(model):
        _mess_up(model)
        assert not torch.equal(model.embed.weight, before["params"]["embed.weight"])
    _assert_same(before, model)
    assert model.head.weight is model.embed.weight  # still tied


def test_gradients_come_back_into_their_own_tensors() -> None:
    # Gradients that are views into one flat buffer (gradient buckets) stay views of it, with
    # their values, also when the probe's backward wrote into the buffer through them.
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    params = list(model.parameters())
    flat = torch.randn(sum(p.numel() for p in params))
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    grads, values = [p.grad for p in params], flat.clone()
    with preserved(model):
        model(torch.randn(5, 3)).sum().backward()  # accumulates into the views
        for p in params:
            p.grad = None
        model(torch.randn(5, 3)).sum().backward()
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))
    assert torch.equal(flat, values)


def test_a_gradient_moved_with_its_model_comes_back_as_the_same_tensor() -> None:
    # suggest(device=...) moves the model, and Module.to moves a gradient by its .data: the
    # kept tensor then lives where the model went, and comes back to where it was.
    model = nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in model.parameters()]
    values = [g.clone() for g in grads]
    with preserved(model):
        model.double()  # as a move to another device, through .data
        model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    for p, g, v in zip(model.parameters(), grads, values, strict=True):
        assert p.grad is g and p.grad.dtype == torch.float32 and torch.equal(p.grad, v)


def test_restores_after_exception() -> None:
    model = _mixed_model()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), preserved(model):
        _mess_up(model)
        raise RuntimeError("boom")
    _assert_same(before, model)


def test_restores_after_keyboard_interrupt() -> None:
    model = _mixed_model()
    before = _state(model)
    interrupted = False
    try:
        with preserved(model):
            _mess_up(model)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    assert interrupted
    _assert_same(before, model)


def test_restore_weights_between_bursts_keeps_optimizer_valid() -> None:
    model = _mixed_model()
    before = _state(model)
    snapshot = ModelSnapshot(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0)
    results = []
    for _ in range(2):
        snapshot.restore_weights()
        torch.manual_seed(7)
        optimizer.zero_grad(set_to_none=True)
        ids = torch.arange(5)
        F.cross_entropy(model(ids), ids).backward()
        optimizer.step()  # would not move the model if restore had swapped its tensors
        results.append(model.embed.weight.detach().clone())
    assert not torch.equal(results[0], before["params"]["embed.weight"])
    assert torch.equal(results[0], results[1])
    snapshot.restore_all()
    _assert_same(before, model)


def test_restore_weights_leaves_modes_and_grads_alone() -> None:
    model = _mixed_model()
    snapshot = ModelSnapshot(model)
    model.eval()
    model.frozen.requires_grad_(True)
    snapshot.restore_weights()
    assert not model.training
    assert model.frozen.weight.requires_grad


def test_rebound_and_converted_tensors_come_back() -> None:
    model = _mixed_model()
    before = _state(model)
    with preserved(model):
        model.double()  # changes the dtype of every tensor in place (same Parameter objects)
        model.frozen.weight = nn.Parameter(torch.zeros(4, 4))  # rebinds a slot
        model.bn.num_batches_tracked = torch.tensor(99)
    _assert_same(before, model, in_place=False)


def test_converted_model_stays_converted_between_bursts() -> None:
    model = _mixed_model()
    before = _state(model)
    with preserved(model) as snapshot:
        # model.double() converts like model.cuda() does: same Parameter objects, new .data
        model.double()
        with torch.no_grad():
            model.frozen.weight.add_(1.0)
        snapshot.restore_weights()
        assert model.frozen.weight.dtype == torch.float64
        assert torch.equal(model.frozen.weight, before["params"]["frozen.weight"].double())
        # Module.to gives every buffer a new tensor: the buffers stay converted too, with
        # the saved values, and the converted model still runs
        for name, buf in model.named_buffers():
            saved = before["buffers"][name]
            assert buf.dtype == (torch.float64 if saved.is_floating_point() else saved.dtype)
            assert torch.equal(buf, before["buffers"][name].to(buf.dtype)), name
        assert model.bn.running_mean.dtype == torch.float64
        model(torch.arange(5))
    _assert_same(before, model, in_place=False)  # restore_all: float32 again, bitwise


def test_snapshot_costs_one_copy_of_weights() -> None:
    model = _mixed_model()
    assert len([*model.named_parameters(remove_duplicate=False)]) > len(
        [*model.parameters()]
    )  # tied
    snapshot = ModelSnapshot(model)
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # tied weight once
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    expected = sum(t.numel() * t.element_size() for t in [*unique.values(), *grads])
    assert snapshot.nbytes == expected


def test_preserved_releases_the_copy() -> None:
    model = _mixed_model()
    with preserved(model) as snapshot:
        assert snapshot.nbytes > 0
    assert snapshot.nbytes == 0
    with pytest.raises(RuntimeError, match="released"):
        snapshot.restore_weights()


def test_snapshot_on_cpu() -> None:
    model = _mixed_model()
    before = _state(model)
    with preserved(model, snapshot_device="cpu") as snapshot:
        assert all(c.device.type == "cpu" for c in snapshot._copies)
        _mess_up(model)
    _assert_same(before, model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_snapshot_of_cuda_model() -> None:
    model = _mixed_model().cuda()
    before = _state(model)
    torch.cuda.manual_seed_all(3)
    expected_cuda = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(3)
    with preserved(model, snapshot_device="cpu") as snapshot:
        assert all(c.device.type == "cpu" for c in snapshot._copies)
        ids = torch.arange(5, device="cuda")
        F.cross_entropy(model(ids), ids).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        torch.rand(10, device="cuda")
    _assert_same(before, model)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert torch.equal(torch.rand(4, device="cuda"), expected_cuda)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_model_probed_on_cuda_comes_back_to_cpu() -> None:
    model = _mixed_model()
    before = _state(model)
    with preserved(model, snapshot_device="cpu") as snapshot:
        model.cuda()
        with torch.no_grad():
            model.frozen.weight.add_(1.0)
        snapshot.restore_weights()
        assert model.frozen.weight.device.type == "cuda"
        assert torch.equal(model.frozen.weight.cpu(), before["params"]["frozen.weight"])
        # buffers too (Module.to rebinds them): a burst's forward on CUDA must run
        assert all(b.device.type == "cuda" for b in model.buffers())
        assert torch.equal(model.bn.running_mean.cpu(), before["buffers"]["bn.running_mean"])
        model(torch.arange(5, device="cuda"))
    _assert_same(before, model, in_place=False)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_cuda_generators_are_captured_before_first_use_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CUDA available but not initialised (a CPU model about to be probed on the GPU): with
    # cuda_rng the generators are read before the probe's first CUDA draw and put back after;
    # without it an uninitialised CUDA is never touched.
    calls: list[str] = []
    fresh = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: calls.append("get") or fresh)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: calls.append(f"set {s}"))
    model = nn.Linear(2, 1)
    with preserved(model):
        pass
    assert calls == []
    with preserved(model, cuda_rng=True) as snapshot:
        assert snapshot.rng.torch_cuda == tuple(fresh)
    assert calls == ["get", f"set {tuple(fresh)}"]


_CUDA_FIRST_DRAW = """
import sys, torch, autowarm
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
data = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(8)]
if sys.argv[1] == "probe":
    autowarm.suggest(model, data, criterion=nn.functional.mse_loss, total_steps=400,
                     device="cuda", progress=False)
    assert next(model.parameters()).device.type == "cpu"
print(torch.rand(4, device="cuda").tolist(), torch.rand(2).tolist())
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cpu_model_probed_on_cuda_leaves_the_first_cuda_draw_as_it_was() -> None:
    # Fresh processes, so CUDA is not initialised before suggest(device="cuda"); dropout on
    # the GPU draws from the CUDA generator during the probe.
    import subprocess
    import sys

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _CUDA_FIRST_DRAW, mode], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert run("probe") == run("plain")


@pytest.mark.parametrize("bad", ["gpu0", 3])
def test_bad_arguments(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"snapshot_device must be None.*snapshot_device="):
        ModelSnapshot(nn.Linear(1, 1), snapshot_device=bad)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn.Module.*got type dict"):
        ModelSnapshot({"w": torch.ones(1)})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state must be an RngState"):
        set_rng_state(None)  # type: ignore[arg-type]


_DRAWS: list[tuple[str, Callable[[], Any]]] = [
    ("torch", lambda: torch.rand(4)),
    ("numpy", lambda: np.random.rand(4)),
    ("python", lambda: [random.random() for _ in range(4)]),
]


def _draw_all() -> list[Any]:
    return [draw() for _, draw in _DRAWS]


def _saved_states() -> tuple[torch.Tensor, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _draw_from(saved: tuple[torch.Tensor, Any, Any]) -> list[Any]:
    torch.set_rng_state(saved[0])
    np.random.set_state(saved[1])
    random.setstate(saved[2])
    return _draw_all()


def _assert_draws_equal(a: list[Any], b: list[Any]) -> None:
    assert torch.equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_preserved_restores_rng_states() -> None:
    model = nn.Linear(2, 2)  # its init draws from torch's RNG: before saving
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    saved = _saved_states()
    with preserved(model):
        torch.manual_seed(123)
        np.random.seed(123)
        random.seed(123)
        _draw_all()
    after = _draw_all()
    _assert_draws_equal(after, _draw_from(saved))


def test_rng_state_pair_roundtrip() -> None:
    state = rng_state()
    assert isinstance(state, RngState)
    first = _draw_all()
    set_rng_state(state)
    second = _draw_all()
    _assert_draws_equal(first, second)
    assert state.torch_cuda is None or len(state.torch_cuda) == torch.cuda.device_count()


def _queued_cuda_seed() -> Any:
    # The seed torch.manual_seed queued for an uninitialised CUDA: the closure of the queued
    # manual_seed_all callback holds it (private torch state, read as torch 2.x keeps it).
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = getattr(tracker, "manual_seed_all_cb", None)
    closure = getattr(queued[0], "__closure__", None) if queued else None
    if closure is None:
        return None
    return [c.cell_contents for c in closure]


def test_a_seed_queued_for_an_uninitialised_cuda_is_put_back() -> None:
    # With CUDA available but not initialised, torch.manual_seed queues the CUDA seed and only
    # the latest one is kept; the probe's own torch.manual_seed(seed) replaced the user's.
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is initialised: seeds apply at once, nothing is queued")
    torch.manual_seed(1234)
    if _queued_cuda_seed() is None:
        pytest.skip("this torch keeps no lazy CUDA seed queue in torch.cuda._lazy_seed_tracker")
    assert 1234 in _queued_cuda_seed()
    with preserved(nn.Linear(2, 2)):
        torch.manual_seed(7)
        assert 7 in _queued_cuda_seed()
    assert 1234 in _queued_cuda_seed()
    state = rng_state()
    torch.manual_seed(9)
    set_rng_state(state)
    assert 1234 in _queued_cuda_seed()


def test_a_ctrl_c_during_the_restore_lets_the_rest_of_it_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A KeyboardInterrupt in one step (putting the train/eval modes back) is kept until every
    # other step has run, then raised: the weights and the RNG state come back all the same.
    model = _mixed_model()
    before = _state(model)
    torch.manual_seed(5)
    saved_rng = torch.get_rng_state()
    snapshot = ModelSnapshot(model)
    _mess_up(model)
    torch.manual_seed(99)

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot, "restore_modes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        snapshot.restore_all()
    assert torch.equal(torch.get_rng_state(), saved_rng)
    after = _state(model)
    for name, tensor in before["params"].items():
        assert torch.equal(after["params"][name], tensor), name


def test_every_part_is_restored_when_one_tensor_copy_fails() -> None:
    # One saved copy cannot be written back (a meta tensor: no data). The other tensors, the
    # modes, requires_grad, .grad and the RNG states are restored all the same, and the one
    # error is raised once, not chained to a second copy of itself.
    model = _mixed_model()
    before = _state(model)
    torch.manual_seed(5)
    saved_rng = torch.get_rng_state()
    snapshot = ModelSnapshot(model)
    index = next(i for i, t in enumerate(snapshot._tensors) if t is model.frozen.weight)
    snapshot._copies[index] = torch.empty_like(snapshot._copies[index], device="meta")
    _mess_up(model)
    torch.manual_seed(99)
    with pytest.raises(NotImplementedError, match="meta") as info:
        snapshot.restore_all()
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert torch.equal(torch.get_rng_state(), saved_rng)
    before["params"].pop("frozen.weight")
    after = _state(model)
    after["params"].pop("frozen.weight")
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, tensor in before["params"].items():
        assert torch.equal(after["params"][name], tensor), name
    for name, tensor in before["buffers"].items():
        assert torch.equal(after["buffers"][name], tensor), name
    for name, grad in before["grads"].items():
        got = after["grads"][name]
        assert (got is None) if grad is None else torch.equal(got, grad), name


def test_a_model_of_inference_tensors_is_refused_up_front() -> None:
    with torch.inference_mode():
        model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"inference tensors \(weight, bias\).*inference_mode"):
        ModelSnapshot(model)


def test_a_meta_snapshot_device_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match=r"snapshot_device='meta' cannot hold.*'cpu'"):
        ModelSnapshot(nn.Linear(2, 2), snapshot_device="meta")


def test_a_buffer_registered_after_the_snapshot_is_taken_away() -> None:
    # a forward that registers a buffer from the first batch it sees (data-dependent init)
    class Lazy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not hasattr(self, "scale"):
                self.register_buffer("scale", x.detach().std(0), persistent=False)
                self.register_parameter("shift", nn.Parameter(torch.zeros(3)))
            return self.linear(x / self.scale + self.shift)

    model = Lazy()
    keys = set(model.state_dict())
    with preserved(model) as snapshot:
        model(torch.randn(4, 3))
        assert hasattr(model, "scale")
        snapshot.restore_weights()  # every burst starts from the model as it was
        assert not hasattr(model, "scale") and not hasattr(model, "shift")
        model(torch.randn(4, 3))
    assert set(model.state_dict()) == keys and not [*model.buffers()]
    assert "scale" not in model._non_persistent_buffers_set
    assert [n for n, _ in model.named_parameters()] == ["linear.weight", "linear.bias"]


def test_an_interrupt_during_the_restore_does_not_leave_it_half_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a second Ctrl-C landing inside the restore (here: inside its no_grad block, which left
    # grad mode off too): the restore runs again, then the interrupt is raised
    model = nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    real = ModelSnapshot._restore_weights
    calls = {"n": 0}

    def interrupted_once(self: ModelSnapshot, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            torch.set_grad_enabled(False)  # as an interrupt inside torch.no_grad() leaves it
            raise KeyboardInterrupt
        return real(self, **kw)

    monkeypatch.setattr(ModelSnapshot, "_restore_weights", interrupted_once)
    with pytest.raises(KeyboardInterrupt), preserved(model), torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert calls["n"] >= 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert torch.is_grad_enabled()


class _Stateful(nn.Module):
    """A forward that keeps Python state on the module: a counter, a cache, a flag it adds."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.calls = 0
        self._steps = 0
        self.last: torch.Tensor | None = None
        self.table = torch.zeros(2)  # a plain tensor, not a buffer
        self.row = self.linear.weight[0]  # a view of a parameter, kept as a plain attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self._steps += 2
        out = self.linear(x)
        self.last = out  # holds the probe's graph
        self.seen_shape = tuple(x.shape)
        self.table = self.table + 1.0  # rebound, not changed in place
        return out


def test_attributes_a_forward_sets_are_put_back() -> None:
    model = _Stateful()
    table, row = model.table, model.row
    with preserved(model):
        model(torch.randn(4, 3)).sum().backward()
        with torch.no_grad():
            model.linear.weight.add_(1.0)
    assert model.calls == 0 and model._steps == 0 and model.last is None
    assert not hasattr(model, "seen_shape")
    assert model.table is table and torch.equal(table, torch.zeros(2))
    assert model.row is row


def test_a_plain_tensor_changed_in_place_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # its values cannot be put back without a copy of every plain tensor: said, not hidden
    model = _Stateful()
    with caplog.at_level("WARNING", logger="autowarm"), preserved(model):
        model(torch.randn(4, 3)).sum().backward()  # rebinds table, trains through row's base
        model.linear.weight.grad = None
    assert not caplog.records  # a rebinding is put back, a view of a weight comes back with it
    with caplog.at_level("WARNING", logger="autowarm"), preserved(model):
        model.table.add_(1.0)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "table" in message and "register_buffer" in message
