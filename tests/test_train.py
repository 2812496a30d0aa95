from __future__ import annotations

import math
import pickle
from collections import OrderedDict, UserDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autowarm._train import (
    BatchStream,
    StepResult,
    batch_samples,
    model_device,
    move_to_device,
    resolve_loss_fn,
    sample_mean,
    seeded_stream,
    train_step,
)

CPU = torch.device("cpu")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _xy(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _clone_params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@dataclass
class _Output:
    loss: torch.Tensor | None
    logits: torch.Tensor


class _DictModel(nn.Module):
    """Takes keyword tensors like a Hugging Face model; returns an object with ``.loss``."""

    def __init__(self, as_mapping: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.as_mapping = as_mapping

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.linear(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        if self.as_mapping:
            return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}
        return _Output(loss=loss, logits=logits)


def _mse_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(batch["inp"]).pow(2).mean()


# --- move_to_device -------------------------------------------------------------------------


class _Pair(NamedTuple):
    a: torch.Tensor
    b: Any


def test_move_to_device_nested_keeps_structure_and_types() -> None:
    meta = torch.device("meta")
    t = torch.ones(2)
    batch = {
        "x": t,
        "pair": _Pair(a=t, b=[t, "text", 3]),
        "ordered": OrderedDict(y=(t, t)),
        "user": UserDict(z=t),
        "none": None,
    }
    moved = move_to_device(batch, meta)
    assert type(moved) is dict
    assert moved["x"].device == meta
    assert isinstance(moved["pair"], _Pair)
    assert moved["pair"].a.device == meta
    assert moved["pair"].b[0].device == meta
    assert moved["pair"].b[1:] == ["text", 3]
    assert type(moved["ordered"]) is OrderedDict
    assert isinstance(moved["ordered"]["y"], tuple)
    assert all(v.device == meta for v in moved["ordered"]["y"])
    assert type(moved["user"]) is UserDict
    assert moved["user"]["z"].device == meta
    assert moved["none"] is None
    assert batch["x"].device == CPU  # the input is not modified


class _StrictMapping(dict):  # type: ignore[type-arg]
    def __init__(self, *, required: int) -> None:
        super().__init__(a=torch.ones(1))


def test_move_to_device_unrebuildable_mapping_becomes_dict() -> None:
    moved = move_to_device(_StrictMapping(required=1), torch.device("meta"))
    assert type(moved) is dict
    assert moved["a"].device.type == "meta"


@dataclass(frozen=True)
class _FrozenBatch:
    x: torch.Tensor
    meta: dict[str, Any]
    label: str = "a"


@dataclass
class _MutableBatch:
    x: torch.Tensor
    extra: list[torch.Tensor]


def test_move_to_device_walks_dataclasses_and_copies_them() -> None:
    frozen = _FrozenBatch(torch.ones(2), {"y": torch.zeros(3)})
    moved = move_to_device(frozen, torch.device("meta"))
    assert type(moved) is _FrozenBatch and moved.label == "a"
    assert moved.x.device.type == "meta" and moved.meta["y"].device.type == "meta"
    assert frozen.x.device == CPU  # the input is not modified
    mutable = _MutableBatch(torch.ones(2), [torch.ones(1)])
    copied = move_to_device(mutable, None, copy=True)
    copied.x.add_(1.0)
    copied.extra[0].add_(1.0)
    assert mutable.x.tolist() == [1.0, 1.0] and mutable.extra[0].tolist() == [1.0]
    assert copied is not mutable and copied.x.tolist() == [2.0, 2.0]


def test_move_to_device_batch_encoding_keeps_type() -> None:
    transformers = pytest.importorskip("transformers")
    enc = transformers.BatchEncoding({"input_ids": torch.ones(1, 3, dtype=torch.long)})
    moved = move_to_device(enc, torch.device("meta"))
    assert isinstance(moved, transformers.BatchEncoding)
    assert moved["input_ids"].device.type == "meta"


def test_model_device() -> None:
    assert model_device(_mlp()) == CPU
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    only_buffer = nn.BatchNorm1d(2, affine=False, device="meta")
    assert model_device(only_buffer) == torch.device("meta")
    assert model_device(nn.ReLU()) == CPU


# --- resolve_loss_fn ------------------------------------------------------------------------


def test_tuple_batch_with_criterion() -> None:
    model = _mlp()
    x, y = _xy()
    loss = resolve_loss_fn(criterion=F.cross_entropy)(model, (x, y))
    assert loss.shape == ()
    assert torch.equal(loss, F.cross_entropy(model(x), y))
    assert torch.equal(resolve_loss_fn(criterion=F.cross_entropy)(model, [x, y]), loss)


@pytest.mark.parametrize("as_mapping", [False, True])
def test_mapping_batch_uses_model_loss(as_mapping: bool) -> None:
    model = _DictModel(as_mapping=as_mapping)
    x, y = _xy()
    loss = resolve_loss_fn()(model, {"x": x, "labels": y})
    assert torch.equal(loss, F.cross_entropy(model.linear(x), y))


@pytest.mark.parametrize("as_mapping", [False, True])
def test_mapping_batch_without_loss_says_pass_labels(as_mapping: bool) -> None:
    x, _ = _xy()
    with pytest.raises(TypeError, match=r"has no loss; pass labels in the batch.*loss_fn="):
        resolve_loss_fn()(_DictModel(as_mapping=as_mapping), {"x": x})


def test_a_model_that_ignores_the_batchs_labels_is_told_to_take_loss_fn() -> None:
    # "pass labels in the batch" was wrong advice: the batch had them
    x, y = _xy()
    plain = torch.nn.Linear(x.shape[1], 3)

    def forward(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return plain(x)

    model = torch.nn.Module()
    model.forward = forward  # type: ignore[method-assign]
    with pytest.raises(TypeError, match=r"though the batch has 'labels'.*loss_fn="):
        resolve_loss_fn()(model, {"x": x, "labels": y})


def test_a_tuple_output_of_a_mapping_batch_names_return_dict() -> None:
    # a Hugging Face model with return_dict=False: (loss, logits), with labels in the batch
    class TupleModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            logits = self.linear(x)
            return F.cross_entropy(logits, labels), logits

    x, y = _xy()
    with pytest.raises(TypeError, match=r"returned a tuple of 2 items.*return_dict=False.*"
                       r"loss_fn=lambda model, batch: model\(\*\*batch\)\[0\]"):  # fmt: skip
        resolve_loss_fn()(TupleModel(), {"x": x, "labels": y})


def test_tuple_batch_without_criterion_says_what_to_pass() -> None:
    with pytest.raises(
        TypeError, match=r"criterion=torch\.nn\.functional\.cross_entropy.*loss_fn="
    ):
        resolve_loss_fn()(_mlp(), _xy())


@pytest.mark.parametrize(
    ("batch", "named"),
    [(torch.ones(2, 4), "Tensor"), ((torch.ones(2, 4),) * 3, "tuple of length 3"), (7, "int")],
)
def test_unknown_batch_names_its_type(batch: Any, named: str) -> None:
    with pytest.raises(
        TypeError, match=rf"batch of type {named}.*loss_fn=callable\(model, batch\)"
    ):
        resolve_loss_fn(criterion=F.cross_entropy)(_mlp(), batch)


def test_custom_loss_fn_is_used_and_checked() -> None:
    model = _mlp()
    batch = {"inp": torch.ones(2, 4)}
    loss = resolve_loss_fn(_mse_loss)(model, batch)
    assert torch.equal(loss, model(batch["inp"]).pow(2).mean())


def test_one_element_loss_is_reshaped_to_scalar() -> None:
    loss = resolve_loss_fn(lambda m, b: m(b).sum().reshape(1, 1))(_mlp(), torch.ones(2, 4))
    assert loss.shape == ()


def test_non_scalar_loss_names_its_shape() -> None:
    x, y = _xy(n=5)
    with pytest.raises(ValueError, match=r"shape=\(5,\).*reduction='none'"):
        resolve_loss_fn(criterion=nn.CrossEntropyLoss(reduction="none"))(_mlp(), (x, y))


def test_non_tensor_loss_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor.*got type float"):
        resolve_loss_fn(lambda m, b: m(b).sum().item())(_mlp(), torch.ones(2, 4))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="either loss_fn= or criterion=, not both"):
        resolve_loss_fn(_mse_loss, F.cross_entropy)
    with pytest.raises(TypeError, match=r"loss_fn must be a callable.*got type str"):
        resolve_loss_fn("mse")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"criterion must be a callable.*got type int"):
        resolve_loss_fn(criterion=3)  # type: ignore[arg-type]


def test_resolved_loss_fns_pickle() -> None:
    model = _mlp()
    x, y = _xy()
    default = resolve_loss_fn(criterion=F.cross_entropy)
    custom = resolve_loss_fn(_mse_loss)
    for fn, batch in ((default, (x, y)), (custom, {"inp": x})):
        clone = pickle.loads(pickle.dumps(fn))
        assert torch.equal(clone(model, batch), fn(model, batch))


def test_gpt2_dict_batches_train() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    loss_fn = resolve_loss_fn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = train_step(model, optimizer, batch, loss_fn)
    for _ in range(4):
        last = train_step(model, optimizer, batch, loss_fn)
    assert first.finite and last.finite
    assert last.loss < first.loss


# --- train_step -----------------------------------------------------------------------------


def test_train_step_updates_and_reports() -> None:
    model = _mlp()
    x, y = _xy()
    before = _clone_params(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = resolve_loss_fn(criterion=F.cross_entropy)
    expected_loss = F.cross_entropy(model(x), y).item()
    result = train_step(model, optimizer, (x, y), loss_fn)
    assert isinstance(result, StepResult)
    assert result.finite
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    after = _clone_params(model)
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_grad_norm_matches_manual_computation() -> None:
    model = _mlp()
    x, y = _xy()
    manual_model = _mlp()
    F.cross_entropy(manual_model(x), y).backward()
    manual = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in manual_model.parameters()))
    result = train_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        (x, y),
        resolve_loss_fn(criterion=F.cross_entropy),
    )
    assert result.grad_norm == pytest.approx(manual, rel=1e-5)
    total = torch.nn.utils.clip_grad_norm_(manual_model.parameters(), float("inf"))
    assert result.grad_norm == pytest.approx(float(total), rel=1e-6)


def test_grad_norm_only_counts_params_with_grads() -> None:
    model = _mlp()
    model[0].requires_grad_(False)
    x, y = _xy()
    result = train_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        (x, y),
        resolve_loss_fn(criterion=F.cross_entropy),
    )
    manual_model = _mlp()
    F.cross_entropy(manual_model(x), y).backward()
    manual = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in manual_model[2].parameters()])
    )
    assert result.grad_norm == pytest.approx(float(manual), rel=1e-5)


def test_grad_clip_matches_clip_grad_norm() -> None:
    x, y = _xy()
    model, reference = _mlp(), _mlp()
    train_step(
        model, torch.optim.SGD(model.parameters(), lr=1.0), (x, y),
        resolve_loss_fn(criterion=F.cross_entropy), grad_clip=0.01,
    )  # fmt: skip
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1.0)
    F.cross_entropy(reference(x), y).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    ref_opt.step()
    for p, r in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, r)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_grad_clip(bad: float) -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="grad_clip must be a positive float or None"):
        train_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            _xy(),
            resolve_loss_fn(),
            grad_clip=bad,
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_skips_step(bad: float) -> None:
    model = _mlp()
    x, y = _xy()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    train_step(model, optimizer, (x, y), resolve_loss_fn(criterion=F.cross_entropy))
    before = _clone_params(model)
    state_before = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state.items()}

    def poisoned(m: nn.Module, b: Any) -> torch.Tensor:
        return m(b[0]).sum() * bad

    backward_calls = []
    model[0].weight.register_hook(lambda grad: backward_calls.append(grad))
    result = train_step(model, optimizer, (x, y), resolve_loss_fn(poisoned))
    assert backward_calls == []  # no backward pass on a non-finite loss
    assert all(p.grad is None for p in model.parameters())
    assert not result.finite
    assert math.isnan(result.grad_norm)
    assert result.loss == bad or (math.isnan(bad) and math.isnan(result.loss))
    for b, a in zip(before, model.parameters(), strict=True):
        assert torch.equal(b, a)
    for key, saved in state_before.items():  # Adam's step count and moments untouched
        for name, tensor in saved.items():
            assert torch.equal(optimizer.state[key][name], tensor)


def test_non_finite_grad_skips_step() -> None:
    model = nn.Linear(1, 1)
    before = _clone_params(model)

    def sqrt_at_zero(m: nn.Module, b: Any) -> torch.Tensor:
        return (m.weight * 0.0).sum().sqrt() + m(b).sum() * 0.0  # finite loss, infinite grad

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_step(model, optimizer, torch.ones(1, 1), resolve_loss_fn(sqrt_at_zero))
    assert result.loss == 0.0
    assert not result.finite
    assert not math.isfinite(result.grad_norm)
    assert all(torch.equal(b, a) for b, a in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_loss_without_grad_is_an_error() -> None:
    model = _mlp().requires_grad_(False)
    x, y = _xy()
    with pytest.raises(ValueError, match="does not require grad"):
        train_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            (x, y),
            resolve_loss_fn(criterion=F.cross_entropy),
        )


# --- BatchStream ----------------------------------------------------------------------------


def test_cycles_a_short_loader() -> None:
    x, y = _xy(n=6)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    stream = BatchStream(loader, CPU)
    assert stream.reiterable
    seen = [stream.next()[0] for _ in range(10)]
    assert stream.batches_drawn == 10
    for i, batch in enumerate(seen):
        assert torch.equal(batch, x[2 * (i % 3) : 2 * (i % 3) + 2])


def test_restart_repeats_a_seeded_shuffling_loader() -> None:
    x, y = _xy(n=8)
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True)
    stream = BatchStream(loader, CPU)
    torch.manual_seed(3)
    stream.restart()
    first = [stream.next()[0] for _ in range(5)]
    torch.manual_seed(3)
    stream.restart()
    second = [stream.next()[0] for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_first_does_not_consume() -> None:
    batches = [torch.full((1,), float(i)) for i in range(3)]
    stream = BatchStream(batches, CPU)
    assert torch.equal(stream.first(), batches[0])
    assert stream.batches_drawn == 0
    assert [float(stream.next()) for _ in range(4)] == [0.0, 1.0, 2.0, 0.0]
    assert torch.equal(stream.first(), batches[0])


class _CountingSource:
    """A one-shot iterator that records how many batches were taken from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self.taken == self.n:
            raise StopIteration
        self.taken += 1
        return torch.full((1,), float(self.taken - 1))


def test_generator_consumed_only_as_needed_and_replayed() -> None:
    source = _CountingSource(100)
    stream = BatchStream(source, CPU)
    assert not stream.reiterable
    assert source.taken == 0
    assert float(stream.first()) == 0.0
    assert source.taken == 1
    assert [float(stream.next()) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert source.taken == 3
    stream.restart()
    assert [float(stream.next()) for _ in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert source.taken == 5
    assert stream.cached_batches == 5
    assert stream.batches_drawn == 8


def test_exhausted_generator_cycles_its_cache() -> None:
    stream = BatchStream((torch.full((1,), float(i)) for i in range(2)), CPU)
    assert [float(stream.next()) for _ in range(5)] == [0.0, 1.0, 0.0, 1.0, 0.0]
    stream.restart()
    assert float(stream.next()) == 0.0


def test_a_source_refilling_one_buffer_is_replayed_as_drawn() -> None:
    # a prefetcher that writes every batch into one preallocated tensor
    def refilled(n: int) -> Iterator[torch.Tensor]:
        buffer = torch.empty(2)
        for i in range(n):
            buffer.fill_(float(i))
            yield buffer

    stream = BatchStream(refilled(10), CPU)
    first = [stream.next().tolist() for _ in range(3)]
    stream.restart()
    assert [stream.next().tolist() for _ in range(4)] == [*first, [3.0, 3.0]]
    assert first == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]


def test_copies_keep_requires_grad_but_not_the_users_graph() -> None:
    # inputs a loss differentiates by (physics-informed losses) keep requires_grad; the
    # backward pass of the copy writes no .grad into the user's tensor
    x = torch.randn(4, 2, requires_grad=True)
    for copied in (move_to_device((x,), CPU, copy=True)[0], BatchStream([x], CPU).next()):
        assert copied.requires_grad and copied.is_leaf and copied is not x
        (du,) = torch.autograd.grad((copied**3).sum(), copied, create_graph=True)
        du.sum().backward()
        assert x.grad is None
        assert torch.equal(copied.detach(), x.detach())


def test_moves_batches_to_device() -> None:
    meta = torch.device("meta")
    stream = BatchStream([{"x": torch.ones(2), "y": [torch.zeros(1)]}], meta)
    assert stream.first()["x"].device == meta
    assert stream.next()["y"][0].device == meta


@pytest.mark.parametrize(
    "empty",
    [[], DataLoader(TensorDataset(torch.ones(1, 2)), batch_size=2, drop_last=True), iter([])],
)
def test_empty_source_raises_before_training(empty: Any) -> None:
    stream = BatchStream(empty, CPU)
    with pytest.raises(ValueError, match="the data yielded no batches; pass a non-empty"):
        stream.first()
    with pytest.raises(ValueError, match="the data yielded no batches"):
        stream.next()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (3, "must be an iterable of batches.*got type int"),
        (torch.ones(3, 4), r"got a single Tensor; wrap it in a list"),
        ({"x": torch.ones(3)}, r"got a single dict; wrap it in a list"),
    ],
)
def test_non_iterable_data(data: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        BatchStream(data, CPU)


def test_a_packed_sequence_keeps_its_batch_sizes_on_the_cpu() -> None:
    # PackedSequence is a namedtuple; moved field by field, its batch_sizes left the CPU,
    # which RNNs refuse.
    packed = nn.utils.rnn.pack_sequence([torch.ones(3, 2), torch.ones(2, 2)])
    moved = move_to_device({"x": packed}, torch.device("meta"))["x"]
    assert isinstance(moved, nn.utils.rnn.PackedSequence)
    assert moved.data.device.type == "meta"
    assert moved.batch_sizes.device == CPU
    kept = move_to_device(packed, CPU)
    assert kept is packed  # nothing to move, nothing copied
    copied = move_to_device(packed, CPU, copy=True)
    assert isinstance(copied, nn.utils.rnn.PackedSequence)
    assert copied.data.data_ptr() != packed.data.data_ptr()
    assert torch.equal(copied.data, packed.data)
    assert torch.equal(copied.batch_sizes, packed.batch_sizes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_packed_sequence_batch_trains_an_lstm_on_cuda() -> None:
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    lstm = nn.LSTM(2, 3).to(cuda)
    packed = nn.utils.rnn.pack_sequence([torch.randn(3, 2), torch.randn(2, 2)])
    batch = move_to_device((packed, torch.randn(2, 3)), cuda)

    def loss_fn(model: nn.Module, b: Any) -> torch.Tensor:
        _, (h, _) = model(b[0])
        return F.mse_loss(h[-1], b[1])

    optimizer = torch.optim.AdamW(lstm.parameters(), lr=1e-3)
    assert train_step(lstm, optimizer, batch, loss_fn).finite


def test_seeded_stream_orders_a_loader_by_the_seed_and_gives_its_generator_back() -> None:
    from torch.utils.data import DataLoader

    own = torch.Generator().manual_seed(7)
    loader = DataLoader(torch.arange(64.0), batch_size=8, shuffle=True, generator=own)
    before = own.get_state().clone()

    def order(seed: int) -> list[float]:
        with seeded_stream(loader, CPU, seed) as stream:
            return [float(stream.next()[0]) for _ in range(8)]

    first = order(0)
    assert order(0) == first and order(1) != first  # whatever ran before
    assert torch.equal(own.get_state(), before)
    plain = [torch.full((2,), float(i)) for i in range(4)]  # no generator: served as given
    with seeded_stream(plain, CPU, 3) as stream:
        assert [float(stream.next()[0]) for _ in range(5)] == [0.0, 1.0, 2.0, 3.0, 0.0]


def test_batch_samples_reads_the_first_dimension_of_the_first_tensor() -> None:
    import dataclasses

    from torch.nn.utils.rnn import pack_sequence

    @dataclasses.dataclass
    class Batch:
        note: str
        x: torch.Tensor

    assert batch_samples((torch.zeros(5, 3), torch.zeros(5))) == 5
    assert batch_samples({"mask": None, "input_ids": torch.zeros(4, 7)}) == 4
    assert batch_samples(Batch("a", torch.zeros(6, 2))) == 6
    assert batch_samples([torch.tensor(1.0), torch.zeros(2)]) == 2  # a scalar has none
    assert batch_samples(pack_sequence([torch.zeros(3), torch.zeros(2), torch.zeros(1)])) == 3
    assert batch_samples("text") is None and batch_samples((1, 2)) is None
    # two variable-length sequences and their targets: 2 samples, not the first one's length
    assert batch_samples(([torch.zeros(9), torch.zeros(4)], torch.zeros(2))) == 2
    # sequence-first inputs beside batch-first targets: no size to trust (equal weights)
    assert batch_samples((torch.zeros(7, 3, 5), torch.zeros(3))) is None


def test_sample_mean_weighs_batches_by_their_samples() -> None:
    assert sample_mean([1.0, 4.0], [3, 1]) == 1.75
    assert sample_mean([1.0, 4.0], [2, 2]) == 2.5
    assert sample_mean([1.0, 4.0], [3, None]) == 2.5  # a size unknown: equal weights
    with pytest.raises(ValueError, match="at least one batch"):
        sample_mean([], [])
