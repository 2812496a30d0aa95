"""The one training step shared by the probe, the study and the benchmark.

Everything that touches a user's batch lives here: moving it to the model's device
(:func:`move_to_device`), turning it into a scalar loss (:func:`resolve_loss_fn`), one optimizer
update with a non-finite guard (:func:`train_step`) and a batch source that restarts itself
(:class:`BatchStream`).
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import dataclasses
import hashlib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader

from autowarm._checks import is_int

__all__ = [
    "BatchStream",
    "LossFn",
    "MicroBatches",
    "MixedPrecision",
    "StepResult",
    "model_device",
    "move_to_device",
    "resolve_loss_fn",
    "train_step",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Criterion = Callable[[Any, Any], torch.Tensor]

_LOSS_FN_HINT = "pass loss_fn=callable(model, batch) -> scalar loss"


@dataclass(frozen=True)
class MicroBatches:
    """The batches of one optimizer update under gradient accumulation.

    :func:`train_step` adds up the gradients of their losses, each divided by their number (the
    mean, as one batch of all of them would give for a mean-reduced loss of equal-sized
    micro-batches), then steps once. Made by :meth:`BatchStream.next_update`.

    Attributes:
        batches: the micro-batches, on the device.
        positions: each one's index in the data as it is yielded (see
            :attr:`BatchStream.last_position`).
    """

    batches: tuple[Any, ...]
    positions: tuple[int | None, ...]


def nan_in_batch(batch: Any) -> bool:
    """Whether a floating-point (or complex) tensor anywhere in a (nested) batch holds a NaN.

    Only a NaN marks a batch as bad data: ``-inf`` and ``inf`` are legitimate values in a batch,
    e.g. an additive attention mask (``nn.Transformer.generate_square_subsequent_mask``, a
    padding mask of ``0`` / ``-inf``), so a batch holding them is not blamed for a non-finite
    loss. For :class:`MicroBatches`, whether any of them holds one.
    """
    if isinstance(batch, MicroBatches):
        return any(nan_in_batch(b) for b in batch.batches)
    if isinstance(batch, torch.Tensor):
        return bool((batch.is_floating_point() or batch.is_complex()) and torch.isnan(batch).any())
    return any(nan_in_batch(v) for v in _parts(batch))


def _parts(batch: Any) -> list[Any]:
    # What a tuple, list, mapping (its values) or dataclass instance (its fields) holds, in
    # order; nothing for anything else.
    if isinstance(batch, Mapping):
        return list(batch.values())
    if isinstance(batch, (tuple, list)):
        return list(batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return [getattr(batch, f.name, None) for f in dataclasses.fields(batch)]
    return []


def batch_samples(batch: Any) -> int | None:
    """The number of samples in a batch: the first dimension its tensors share, or ``None``.

    A tensor is its own first dimension (a ``PackedSequence`` counts its sequences). A tuple,
    list, mapping or dataclass is read by its own tensors (not those of nested containers: a
    list of variable-length sequences is not a batch dimension), and only when they all agree
    (``(T, B, F)`` inputs beside ``(B,)`` targets do not); else ``None``.
    """
    if isinstance(batch, PackedSequence):
        return int(batch.batch_sizes[0]) if len(batch.batch_sizes) else None
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() >= 1 else None
    sizes = {
        batch_samples(p)
        for p in _parts(batch)
        if isinstance(p, PackedSequence) or (isinstance(p, torch.Tensor) and p.dim() >= 1)
    }
    return sizes.pop() if len(sizes) == 1 else None


def sample_mean(losses: Sequence[float], sizes: Sequence[int | None]) -> float:
    """The mean of per-batch mean ``losses`` over samples: each batch weighted by its size
    (:func:`batch_samples`), so a short last batch counts for its samples, not for a whole
    batch. Batches all of one size, or any of unknown size, are weighted equally.

    Raises:
        ValueError: If ``losses`` is empty.
    """
    if not losses:
        raise ValueError("no validation batch: pass at least one batch")
    known = [n for n in sizes if n is not None and n > 0]
    if len(known) != len(losses) or len(set(known)) == 1:
        return sum(losses) / len(losses)
    return sum(v * n for v, n in zip(losses, known, strict=True)) / sum(known)


def mean_loss(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    *,
    empty: str,
    to_number: Callable[[Any], float] = float,
) -> float:
    """The mean over samples (:func:`sample_mean`) of ``loss_fn(model, batch)`` over
    ``batches``, each moved to the model's device; eval mode and ``torch.no_grad`` are the
    caller's. ``to_number`` makes each loss a float (and says what a loss that is not one is).

    Raises:
        ValueError: ``empty``, if ``batches`` yields none.
    """
    device = model_device(model)
    losses: list[float] = []
    sizes: list[int | None] = []
    for batch in batches:
        losses.append(to_number(loss_fn(model, move_to_device(batch, device))))
        sizes.append(batch_samples(batch))
    if not losses:
        raise ValueError(empty)
    return sample_mean(losses, sizes)


def move_to_device(batch: Any, device: torch.device | None, *, copy: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device``.

    Tuples, lists and mappings are walked recursively. Namedtuples keep their type, and so do
    mappings that can be rebuilt from a dict (``dict``, ``OrderedDict``, Hugging Face
    ``BatchEncoding``); other mappings come back as a plain ``dict``. A ``PackedSequence`` is
    moved by its own ``.to()``, which keeps its ``batch_sizes`` on the CPU as RNNs need. A
    dataclass instance comes back as a shallow copy of itself with its fields walked the same
    way. Anything else (not a tensor, a container or a dataclass) is returned unchanged.

    Args:
        batch:
            A tensor, or a tuple, list, mapping or dataclass holding tensors.
        device:
            Where the tensors should go; ``None``: each stays on its own device (for
            ``copy=True``).
        copy:
            Copy every tensor, even one already on ``device`` (which is otherwise returned
            as is), so that nothing done to the result can change ``batch``: a copy keeps
            ``requires_grad`` (inputs that a loss differentiates by) but is cut from
            ``batch``'s autograd graph, so a backward pass writes no ``.grad`` into ``batch``.

    Returns:
        A batch of the same structure with its tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        if batch.is_meta and (device is None or device.type != "meta"):
            raise ValueError(
                "a tensor of the batch is on the meta device, which holds no data: the data "
                "must yield tensors with values (on the CPU or the model's device)"
            )
        return _detached_copy(batch, device) if copy else batch.to(device)
    if isinstance(batch, PackedSequence):
        # A namedtuple whose batch_sizes must stay on the CPU: its own .to() knows (and takes
        # no copy argument: it returns the batch itself when nothing moves).
        packed = batch if device is None else batch.to(device)  # type: ignore[arg-type]
        if copy and packed.data is batch.data:
            packed = type(batch)(
                _detached_copy(batch.data, None),
                batch.batch_sizes,
                batch.sorted_indices,
                batch.unsorted_indices,
            )
        return packed
    if isinstance(batch, Mapping):
        moved = {key: move_to_device(value, device, copy=copy) for key, value in batch.items()}
        try:
            return type(batch)(moved)  # type: ignore[call-arg]
        except Exception:  # a Mapping whose constructor does not take a dict
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(item, device, copy=copy) for item in batch))
    if isinstance(batch, (tuple, list)):
        items = [move_to_device(item, device, copy=copy) for item in batch]
        try:
            return type(batch)(items)
        except Exception:  # a sequence subclass with another constructor
            return tuple(items) if isinstance(batch, tuple) else items
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        # A shallow copy with its fields replaced (object.__setattr__: frozen ones too, and
        # init=False fields are kept), so the batch itself is never written into.
        out = copy_module.copy(batch)
        for f in dataclasses.fields(batch):
            if hasattr(batch, f.name):
                moved = move_to_device(getattr(batch, f.name), device, copy=copy)
                object.__setattr__(out, f.name, moved)
        return out
    return batch


def _detached_copy(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    # A copy on `device` (None: t's own) with t's requires_grad, outside t's autograd graph.
    c = t.detach().to(device, copy=True)
    return c.requires_grad_() if t.requires_grad else c


def structure_fingerprint(model: nn.Module) -> str:
    """16 hex digits naming a model's structure: the names, shapes and dtypes of its parameters
    and buffers, not their values (a study's and a benchmark CSV's record of its model)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    text = ";".join(f"{n}:{tuple(t.shape)}:{t.dtype}" for n, t in tensors)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# A task file is imported as a module named for its path (autowarm_task_<stem>_<hash>, see
# autowarm.study._task): in a record that must survive the project moving, only <stem> counts.
_TASK_MODULE = re.compile(r"^autowarm_task_(.+)_[0-9a-f]{12}(?=\.|$)")


def _portable_module(name: str) -> str:
    return _TASK_MODULE.sub(r"\1", name)


def module_types_fingerprint(model: nn.Module) -> str:
    """16 hex digits naming the classes of a model's modules, in order (a ReLU swapped for a
    Tanh changes it, while :func:`structure_fingerprint`, which has no parameters to see
    there, does not)."""
    text = ";".join(
        f"{name}:{_portable_module(type(m).__module__)}.{type(m).__qualname__}"
        for name, m in model.named_modules()
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def callable_name(fn: object) -> str | None:
    """``module.qualname`` of a function (of a ``functools.partial``'s function, or of a
    callable object's class), ``None`` for ``None``: a loss function's record."""
    if fn is None:
        return None
    inner = getattr(fn, "func", fn)  # functools.partial
    if not hasattr(inner, "__qualname__"):
        inner = type(inner)
    module = _portable_module(str(getattr(inner, "__module__", "?")))
    return f"{module}.{getattr(inner, '__qualname__', '?')}"


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter, else first buffer, else CPU."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


class _CheckedLoss:
    """Calls a loss function and checks that the result is a one-element tensor."""

    def __init__(self, fn: LossFn) -> None:
        self.fn = fn

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return _as_scalar_loss(self.fn(model, batch))

    def __repr__(self) -> str:
        return f"_CheckedLoss({self.fn!r})"


class _DefaultLoss:
    """The default batch handling: mapping batches with a model-computed loss, or
    ``(inputs, targets)`` pairs scored by ``criterion``."""

    def __init__(self, criterion: Criterion | None = None) -> None:
        self.criterion = criterion

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if isinstance(batch, Mapping):
            if self.criterion is not None:
                # model(**batch).loss would be taken and the criterion never called
                keys = ", ".join(repr(str(k)) for k in list(batch)[:4])
                raise TypeError(
                    f"criterion scores (inputs, targets) pairs, but the batches are mappings "
                    f"(keys {keys}), scored by the model's own loss, model(**batch).loss: "
                    "leave criterion out, or pass loss_fn=lambda model, batch: "
                    "criterion(model(batch['x']), batch['y']) with your keys"
                )
            return _as_scalar_loss(_loss_from_output(model(**batch), batch))
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            if self.criterion is None:
                raise TypeError(
                    "an (inputs, targets) batch needs a criterion: pass "
                    "criterion=torch.nn.functional.cross_entropy (for example) or "
                    f"{_LOSS_FN_HINT}"
                )
            inputs, targets = batch
            return _as_scalar_loss(self.criterion(model(inputs), targets))
        single = (
            " (if the data is one (inputs, targets) batch, its items were read as batches: "
            "wrap it in a list, [batch], or a DataLoader)"
            if isinstance(batch, torch.Tensor)
            else ""
        )
        raise TypeError(
            "the default batch handling takes a mapping (model(**batch) returning .loss) or "
            f"an (inputs, targets) pair, but got a batch of type {_describe(batch)}; "
            f"{_LOSS_FN_HINT}{single}"
        )

    def __repr__(self) -> str:
        return f"_DefaultLoss(criterion={self.criterion!r})"


def _describe(batch: Any) -> str:
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__} of length {len(batch)}"
    return type(batch).__name__


def describe_batch(batch: Any, *, depth: int = 3, items: int = 8) -> str:
    """A short description of a batch's structure: tensors by dtype, shape and device.

    For error messages: ``(float32[32, 16] cpu, float32[32] cpu)`` says at once that the targets
    are floats where a classification loss wants class indices. Nested tuples, lists and
    mappings are followed ``depth`` levels down, showing at most ``items`` entries each.

    Example:
        >>> describe_batch((torch.zeros(2, 3), {"labels": torch.ones(2, dtype=torch.long)}))
        '(float32[2, 3] cpu, {labels: int64[2] cpu})'
    """
    try:
        return _describe_batch(batch, depth, items)
    except Exception:  # odd containers (a Mapping whose len() fails, a nested tensor's sizes)
        return type(batch).__name__


def _describe_batch(batch: Any, depth: int, items: int) -> str:
    if isinstance(batch, torch.Tensor):
        dtype = str(batch.dtype).removeprefix("torch.")
        return f"{dtype}[{', '.join(str(n) for n in batch.shape)}] {batch.device}"
    if isinstance(batch, MicroBatches):
        return f"{len(batch.batches)} micro-batches, the first " + describe_batch(
            batch.batches[0], depth=depth, items=items
        )
    if depth <= 0 and isinstance(batch, (Mapping, tuple, list)):
        return "..."
    if isinstance(batch, Mapping):
        parts = [
            f"{key}: {describe_batch(value, depth=depth - 1, items=items)}"
            for key, value in list(batch.items())[:items]
        ]
        more = ", ..." if len(batch) > items else ""
        return "{" + ", ".join(parts) + more + "}"
    if isinstance(batch, (tuple, list)):
        parts = [describe_batch(x, depth=depth - 1, items=items) for x in batch[:items]]
        more = ", ..." if len(batch) > items else ""
        left, right = ("(", ")") if isinstance(batch, tuple) else ("[", "]")
        return left + ", ".join(parts) + more + right
    return type(batch).__name__


def add_note(exc: BaseException, text: Callable[[], str]) -> None:
    """Attach ``text()`` to ``exc`` as a note (shown under its message), where Python has notes
    (3.11+); the exception's type and message stay as they are.

    ``text`` is called only there, and an error while building the note drops the note, never
    the exception being annotated (it is called inside an ``except`` block).
    """
    if not hasattr(exc, "add_note"):
        return
    try:
        note = text()
    except Exception:
        return
    exc.add_note(note)


def loss_call(loss_fn: LossFn, batch: Any) -> str:
    """How ``loss_fn`` (from :func:`resolve_loss_fn`) scores ``batch``, in words."""
    if isinstance(loss_fn, _CheckedLoss):
        return "your loss_fn(model, batch)"
    if isinstance(loss_fn, _DefaultLoss):
        if isinstance(batch, Mapping):
            return "model(**batch).loss"
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            if loss_fn.criterion is None:
                return "the default batch handling of an (inputs, targets) pair, with no criterion"
            return "criterion(model(inputs), targets)"
    return "the loss function"


def _loss_from_output(output: Any, batch: Mapping[str, Any]) -> Any:
    if isinstance(output, torch.Tensor) and output.dim() == 0:
        return output  # a model whose forward returns its loss
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, (tuple, list)):
        # a Hugging Face model with return_dict=False returns (loss, logits, ...) when it was
        # given labels: which item is the loss is the model's convention, not ours to guess
        raise TypeError(
            f"the model returned a {type(output).__name__} of {len(output)} items, not an "
            "output with a .loss (a Hugging Face model built with return_dict=False does "
            "that); build it with return_dict=True, or pass "
            "loss_fn=lambda model, batch: model(**batch)[0] if its first item is the loss"
        )
    if loss is None:
        what = f"the model output (type {type(output).__name__}) has no loss"
        if "labels" in batch:
            # the batch has them: this model does not compute a loss from them (not a
            # Hugging Face model, or one without a head that takes labels)
            raise TypeError(
                f"{what}, though the batch has 'labels': the model does not compute its loss "
                f"from them; {_LOSS_FN_HINT}, e.g. loss_fn=lambda model, batch: "
                "F.cross_entropy(model(batch['x']), batch['labels'])"
            )
        raise TypeError(
            f"{what}; pass labels in the batch (e.g. batch['labels']) so the model computes "
            f"one, or {_LOSS_FN_HINT}"
        )
    return loss


def _as_scalar_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"the loss must be a torch.Tensor with one element, but got type "
            f"{type(loss).__name__}; return the tensor itself, not loss.item()"
        )
    if loss.numel() != 1:
        raise ValueError(
            "the loss must be a tensor with one element, but got shape="
            f"{tuple(loss.shape)}; typical causes are reduction='none' in the criterion or "
            "a batch of the wrong shape"
        )
    return loss.reshape(())


def resolve_loss_fn(loss_fn: LossFn | None = None, criterion: Criterion | None = None) -> LossFn:
    """Build the function that turns ``(model, batch)`` into a scalar loss.

    With ``loss_fn`` it is used as is. Without it, a batch that is a mapping is called as
    ``model(**batch)`` and its ``.loss`` (or ``["loss"]``) is used, as Hugging Face models do
    when the batch holds ``labels``; a batch that is an ``(inputs, targets)`` pair is scored as
    ``criterion(model(inputs), targets)``. The returned object is picklable whenever
    ``loss_fn``/``criterion`` are.

    Every loss is checked when it is computed: it must be a tensor with exactly one element.

    Args:
        loss_fn:
            ``loss_fn(model, batch) -> Tensor``, for any batch format.
        criterion:
            ``criterion(outputs, targets) -> Tensor``, for ``(inputs, targets)`` batches, e.g.
            ``torch.nn.functional.cross_entropy``.

    Returns:
        A callable ``(model, batch) -> Tensor`` returning a 0-dim loss.

    Raises:
        ValueError: If both ``loss_fn`` and ``criterion`` are given.
        TypeError: If either is not callable.
    """
    if loss_fn is not None and criterion is not None:
        raise ValueError(
            "pass either loss_fn= or criterion=, not both; loss_fn(model, batch) already "
            "computes the loss, so call the criterion inside it"
        )
    for name, given in (("loss_fn", loss_fn), ("criterion", criterion)):
        if isinstance(given, type):
            raise TypeError(
                f"{name} is the class {given.__name__}, not a loss: pass an instance, "
                f"{name}={given.__name__}()"
            )
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(
                "loss_fn must be a callable(model, batch) -> scalar loss, but got "
                f"type {type(loss_fn).__name__}"
            )
        return _CheckedLoss(loss_fn)
    if criterion is not None and not callable(criterion):
        raise TypeError(
            "criterion must be a callable(outputs, targets) -> scalar loss such as "
            f"torch.nn.functional.cross_entropy, but got type {type(criterion).__name__}"
        )
    return _DefaultLoss(criterion)


#: The ``precision`` names (Lightning's): fp32; fp16 autocast with a loss scaler; bf16 autocast.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def check_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {PRECISIONS} (Lightning's names), but got "
            f"precision={precision!r}"
        )
    return str(precision)


def check_accumulation_steps(accumulation_steps: Any) -> int:
    """``accumulation_steps`` as an int if it is one >= 1; else a ValueError."""
    if not is_int(accumulation_steps) or accumulation_steps < 1:
        raise ValueError(
            "accumulation_steps must be an int >= 1 (batches per optimizer update), but got "
            f"accumulation_steps={accumulation_steps!r}"
        )
    return int(accumulation_steps)


def mixed_precision(
    precision: str, model: nn.Module, device: torch.device
) -> MixedPrecision | None:
    """The :class:`MixedPrecision` of a run of ``model`` on ``device`` (its weights checked),
    or ``None`` for ``"32-true"``."""
    if check_precision(precision) == "32-true":
        return None
    amp = MixedPrecision(precision, device)
    amp.check_model(model)
    return amp


def autocast_of(amp: MixedPrecision | None) -> contextlib.AbstractContextManager[Any]:
    """``amp``'s autocast, or a context that does nothing without mixed precision."""
    return amp.autocast() if amp is not None else contextlib.nullcontext()


class MixedPrecision:
    """Autocast around the loss, and for ``"16-mixed"`` a ``torch.amp.GradScaler``.

    One object per run of steps: the scaler's scale carries from step to step (and, in the
    probe, from burst to burst, so each burst does not spend its first steps finding it
    again). The weights stay in float32; only the forward pass runs in half precision.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS[1:]:
            raise ValueError(
                f"precision must be one of {PRECISIONS}, but got precision={precision!r}"
            )
        self.precision = precision
        self.device_type = device.type
        self.dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
        self.scaler: torch.amp.GradScaler | None = (
            _grad_scaler(device) if precision == "16-mixed" else None
        )

    def autocast(self) -> torch.autocast:
        """The autocast context of the forward pass and the loss."""
        return torch.autocast(self.device_type, dtype=self.dtype)

    def check_model(self, model: nn.Module) -> None:
        """Refuse half-precision trainable weights, which a loss scaler cannot unscale."""
        if self.scaler is None:
            return
        half = [
            name
            for name, p in model.named_parameters()
            if p.requires_grad and p.dtype == torch.float16
        ]
        if half:
            raise ValueError(
                f"precision='16-mixed' keeps the weights in float32 and autocasts the forward "
                f"pass, but {half[0]!r} (and {len(half) - 1} more) is float16: pass the model "
                "in float32 (model.float()), or precision='32-true' for a model trained in "
                "float16 throughout"
            )


def _grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    # torch.amp.GradScaler, for any device, is torch >= 2.3; before it only CUDA had one.
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    if device.type == "cuda":
        return torch.cuda.amp.GradScaler()
    raise ValueError(
        f"precision='16-mixed' on {device.type} needs torch >= 2.3 (torch.amp.GradScaler), but "
        f"this is torch {torch.__version__}: upgrade torch, or use precision='bf16-mixed'"
    )


_LOWEST_LOSS_SCALE = 2.0**-48
"""Below this loss scale a skipped ``16-mixed`` update counts as divergence (see StepResult):
gradients that overflow float16 (65504) even scaled by it are above 1.8e19, or NaN. A healthy
run with large gradients (a sum-reduced loss) settles at a scale below 1, far above this."""


@dataclass(frozen=True)
class StepResult:
    """What one call of :func:`train_step` did.

    Attributes:
        loss:
            The loss before the update (``nan``/``inf`` when it was not finite).
        grad_norm:
            Total L2 norm of the gradients before clipping (``nan`` when the loss was not
            finite, so no backward pass ran).
        finite:
            Whether the loss and the gradient norm were finite, i.e. whether the optimizer
            stepped; a step the loss scaler skipped counts as finite.
        skipped:
            The loss scaler (``precision="16-mixed"``) skipped the update: the scaled
            gradients overflowed float16, so the scale was lowered and the weights left as
            they were. Not a divergence, until the scale falls below ``2**-48`` (from torch's
            default of ``2**16``, 65 skips in a row): the gradients then overflow float16 even
            scaled down by that (above 1.8e19), or are NaN, so the step is reported not
            ``finite``.
    """

    loss: float
    grad_norm: float
    finite: bool
    skipped: bool = False


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [
        param.grad
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None
    ]


def _total_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    if not grads:
        return None
    device = grads[0].device
    # Per-tensor norms queue on the device without syncing; float32 at least so that fp16/bf16
    # gradients do not overflow the sum of squares.
    # A sparse gradient (nn.Embedding(sparse=True)) is normed over its stored values.
    norms = [
        torch.linalg.vector_norm(
            g.detach().coalesce().values() if g.is_sparse else g.detach(),
            2.0,
            dtype=torch.promote_types(g.dtype, torch.float32),
        )
        for g in grads
    ]
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)
    return total


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    loss_fn: LossFn,
    *,
    grad_clip: float | None = None,
    amp: MixedPrecision | None = None,
) -> StepResult:
    """Run one optimizer update on ``batch``, skipping it when anything is not finite.

    The gradients are zeroed, the loss computed and, if it is finite, back-propagated (for
    :class:`MicroBatches`, each micro-batch's loss over their number is back-propagated in
    turn, and the loss reported is their mean). The
    total gradient norm is :math:`\\lVert (\\lVert g_1 \\rVert_2, \\dots, \\lVert g_n
    \\rVert_2) \\rVert_2` over the optimizer's parameters that have a gradient. If it is finite,
    the gradients are clipped to ``grad_clip`` (when given) and the optimizer steps; otherwise
    the gradients are dropped and the weights stay as they were. The loss and the norm each cost
    one device sync.

    Args:
        model:
            The model, already on its device.
        optimizer:
            Optimizer over (some of) the model's parameters.
        batch:
            A batch already on the model's device, or :class:`MicroBatches`.
        loss_fn:
            ``loss_fn(model, batch) -> Tensor``, typically from :func:`resolve_loss_fn`.
        grad_clip:
            Maximum total gradient norm, or ``None`` not to clip.
        amp:
            Mixed precision: the loss is computed under its autocast; with its loss scaler,
            the scaled loss is back-propagated and the gradients unscaled before the norm and
            the clipping, and an overflow skips the update (``skipped``), lowering the scale.

    Returns:
        The loss, the gradient norm before clipping, and whether the step was taken.

    Raises:
        ValueError: If ``grad_clip`` is not positive or the loss does not require grad.
    """
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(
            f"grad_clip must be a positive float or None, but got grad_clip={grad_clip!r}"
        )
    optimizer.zero_grad(set_to_none=True)
    scaler = amp.scaler if amp is not None else None
    if isinstance(batch, MicroBatches):
        loss_value = _accumulate(model, batch, loss_fn, amp)
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss=loss_value, grad_norm=math.nan, finite=False)
    else:
        with autocast_of(amp):
            loss = loss_fn(model, batch)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            return StepResult(loss=loss_value, grad_norm=math.nan, finite=False)
        _check_requires_grad(loss)
        (scaler.scale(loss) if scaler is not None else loss).backward()  # type: ignore[no-untyped-call]
    grads = _grads(optimizer)
    if scaler is not None:
        if not grads:
            # no parameter of the optimizer got a gradient: nothing to step, and the scaler
            # would refuse an update() with no inf check recorded
            return StepResult(loss=loss_value, grad_norm=0.0, finite=True)
        scaler.unscale_(optimizer)
    total = _total_grad_norm(grads)
    grad_norm = 0.0 if total is None else float(total)
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            # An overflow of the scaled gradients: the scaler lowers its scale and the update
            # is skipped, as in any fp16 run; the loss was finite, so this is not divergence.
            before = scaler.get_scale()
            scaler.update()
            after = scaler.get_scale()
            if after >= before or after < _LOWEST_LOSS_SCALE:
                # ... unless the scaler saw no overflow (every gradient finite, their norm
                # beyond float32: no scale would help, as without a scaler), or the scale has
                # fallen so low that only NaN gradients still overflow: every later update
                # would be skipped
                return StepResult(loss=loss_value, grad_norm=grad_norm, finite=False)
            return StepResult(loss=loss_value, grad_norm=grad_norm, finite=True, skipped=True)
        return StepResult(loss=loss_value, grad_norm=grad_norm, finite=False)
    if grad_clip is not None and grad_norm > grad_clip:
        scale = grad_clip / (grad_norm + 1e-6)  # same epsilon as clip_grad_norm_
        with torch.no_grad():
            for g in grads:
                g.mul_(scale)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepResult(loss=loss_value, grad_norm=grad_norm, finite=True)


def _check_requires_grad(loss: torch.Tensor) -> None:
    if not loss.requires_grad:
        raise ValueError(
            "the loss does not require grad, so no parameter can learn from it; check that "
            "the model has trainable parameters and is not run under torch.no_grad()"
        )


def _accumulate(
    model: nn.Module, micro: MicroBatches, loss_fn: LossFn, amp: MixedPrecision | None
) -> float:
    # Each micro-batch's loss / k is back-propagated at once (its graph freed before the next
    # forward pass, as in a real accumulation loop); their sum stays on the device, so the
    # update costs one sync, as without accumulation. A non-finite loss leaves non-finite
    # gradients, which the caller drops with the update.
    k = len(micro.batches)
    total: torch.Tensor | None = None
    scaler = amp.scaler if amp is not None else None
    for part in micro.batches:
        with autocast_of(amp):
            loss = loss_fn(model, part)
        _check_requires_grad(loss)
        share = loss / k
        (scaler.scale(share) if scaler is not None else share).backward()  # type: ignore[no-untyped-call]
        value = loss.detach().float()  # summed in float32: k float16 losses may overflow
        total = value if total is None else total + value
    assert total is not None  # MicroBatches are never empty (next_update checks)
    return float(total) / k


_UNSET: Any = object()


def _without_persistent_workers(data: Iterable[Any]) -> Iterable[Any]:
    # A DataLoader with persistent worker processes seeds them once, from the RNG of the
    # moment its first iter() runs, and reuses them for every later pass: the bursts would see
    # other random augmentations each (and the answer would move with the caller's RNG state),
    # and the user's own iterator would be restarted under them. The probe reads through a
    # copy without persistent workers instead: new workers on every restart, seeded from the
    # RNG the probe seeds, and the user's iterator and workers left alone.
    if not (isinstance(data, DataLoader) and data.persistent_workers and data.num_workers > 0):
        return data
    twin = copy_module.copy(data)
    # DataLoader refuses these attributes once built; the copy is the probe's own
    object.__setattr__(twin, "persistent_workers", False)
    object.__setattr__(twin, "_iterator", None)
    return twin


class BatchStream:
    """Endless, restartable batches from the user's data, moved to a device.

    Two kinds of source are handled:

    * **Re-iterable** data (``iter(data) is not data``: a ``DataLoader``, a list of batches):
      when an epoch runs out, a fresh ``iter(data)`` starts, so a loader shorter than the probe
      cycles. :meth:`restart` starts a fresh ``iter(data)``, so every burst sees the same
      sequence, provided the order is deterministic. A shuffling ``DataLoader`` draws its order
      from torch's global RNG when it is iterated, so seed torch (``torch.manual_seed``) right
      before :meth:`restart`; the probe does. A loader or sampler with its own
      ``torch.Generator`` (``DataLoader(..., generator=g)``, ``RandomSampler(..., generator=g)``)
      draws from that instead: ``restart(seed=...)`` seeds it too, and
      :meth:`restore_generators` puts back the state it had when the stream was made.
    * **One-shot** iterators (``iter(data) is data``: a generator): consumed only as far as
      needed. Every batch drawn is kept, as a copy on its original device (a source that
      refills one buffer does not change the kept ones), so :meth:`restart` replays exactly
      the same batches before drawing new ones; once the source is exhausted, the kept batches
      cycle. The memory cost is one batch per batch drawn, i.e. as many batches as the longest
      burst uses; pass a ``DataLoader`` or a list to avoid it.

    A ``DataLoader`` with ``persistent_workers=True`` (and workers) is read through a copy of
    it without persistent workers: its workers would be seeded once, by whatever RNG state
    the first ``iter()`` met, and keep drawing across restarts, so the random augmentations
    of a dataset would differ from burst to burst. The copy starts new workers on every
    restart, seeded from torch's global RNG (or the loader's generator) as the caller seeded
    it, and the user's own iterator and worker processes are left as they were.

    Every batch is handed out as a copy (on ``device``), so a model that writes into its
    inputs (an in-place dropout on them) changes neither the user's tensors nor the batches a
    later burst replays; the cost is one batch copy per step.

    Args:
        data:
            An iterable of batches.
        device:
            Where :meth:`next` and :meth:`first` put the batches.

    Raises:
        TypeError: If ``data`` is not iterable, is a single tensor or mapping (one batch), or
            is a dataset of single examples (:func:`check_batched`).
    """

    def __init__(self, data: Iterable[Any], device: torch.device) -> None:
        check_batched(data)
        # A loader's own generators, captured before iter() draws from them.
        generators = _data_generators(data)
        states = [g.get_state() for g in generators]
        data = _without_persistent_workers(data)
        # An iterator the data keeps for itself (as a persistent loader does; a persistent
        # DataLoader itself is read through its copy above): close() leaves it alone.
        self._loader_iterator: Any = getattr(data, "_iterator", None)
        try:
            iterator = iter(data)
        except TypeError:
            raise not_iterable_error(data) from None
        except BaseException:
            # iter() drew the loader's base seed before failing (a shard missing): the caller
            # never gets a stream to restore from, so the generators go back here
            for generator, state in zip(generators, states, strict=True):
                generator.set_state(state)
            raise
        self.device = device
        self._generators = generators
        self._generator_states = states
        self.batches_drawn = 0
        """Number of batches :meth:`next` has returned, over all restarts."""
        self._data = data
        self._iter: Iterator[Any] = iterator
        self._reiterable = iterator is not data
        self._first: Any = _UNSET
        self._pending: Any = _UNSET  # re-iterable: a batch peeked by first(), served next
        self._pending_pos = 0  # re-iterable: the peeked batch's index in the data
        self._pass_pos = 0  # re-iterable: index in the data of the next batch of this pass
        self._pass_lengths: set[int] = set()  # re-iterable: lengths of the passes that ran out
        self._positions_seen = 0  # re-iterable: most batches drawn from one pass
        self.last_position: int | None = None
        """Index in the data (counting from 0, as it is yielded) of the batch :meth:`next`
        returned last, or ``None`` before the first. Data shorter than the probe is cycled, so
        this is not the number of batches drawn since :meth:`restart`."""
        self._cache: list[Any] = []  # one-shot: every batch drawn, in order
        self._pos = 0  # one-shot: index of the next cached batch to serve
        self._exhausted = False  # one-shot: the source raised StopIteration

    @property
    def reiterable(self) -> bool:
        """Whether ``data`` can be iterated again (else the batches drawn are cached)."""
        return self._reiterable

    @property
    def cached_batches(self) -> int:
        """How many batches a one-shot source has had drawn and kept (0 if re-iterable)."""
        return len(self._cache)

    def first(self) -> Any:
        """Return the first batch of the data, on the device, without training on anything.

        Useful to check the batch format before a probe starts. Calling it does not change
        what :meth:`next` returns.

        Raises:
            ValueError: If the data yields no batches.
        """
        if self._first is _UNSET:
            if self._reiterable:
                self._pending = self._draw_reiterable()
            else:
                self._fill_cache()
                self._first = self._cache[0]
        return move_to_device(self._first, self.device, copy=True)

    def next(self) -> Any:
        """Return the next batch on the device, starting over when the data runs out.

        Raises:
            ValueError: If the data yields no batches.
        """
        if self._reiterable:
            if self._pending is not _UNSET:
                raw, self._pending = self._pending, _UNSET
                self.last_position = self._pending_pos
            else:
                raw = self._draw_reiterable()
                self.last_position = self._pass_pos - 1
        else:
            if self._pos >= len(self._cache):
                self._fill_cache()
            if self._pos >= len(self._cache):  # source exhausted: cycle through the cache
                self._pos = 0
            raw = self._cache[self._pos]
            self.last_position = self._pos
            self._pos += 1
        self.batches_drawn += 1
        return move_to_device(raw, self.device, copy=True)

    __next__ = next

    def next_update(self, accumulation_steps: int = 1) -> Any:
        """The batch of the next optimizer update: :meth:`next`, or with
        ``accumulation_steps > 1`` that many batches in a row as :class:`MicroBatches`."""
        if accumulation_steps == 1:
            return self.next()
        accumulation_steps = check_accumulation_steps(accumulation_steps)
        batches, positions = [], []
        for _ in range(accumulation_steps):
            batches.append(self.next())
            positions.append(self.last_position)
        return MicroBatches(tuple(batches), tuple(positions))

    def __iter__(self) -> BatchStream:
        return self

    def restart(self, seed: int | None = None) -> None:
        """Start the sequence of batches again from the beginning.

        For re-iterable data this calls ``iter(data)`` afresh; for a one-shot iterator it
        replays the kept batches first. With ``seed``, the data's own generators (see the
        class docstring) are seeded with it first, so a shuffling loader that has one repeats
        its order; torch's global RNG is the caller's to seed.
        """
        if seed is not None:
            for generator in self._generators:
                generator.manual_seed(seed)
        if self._reiterable:
            self._pending = _UNSET
            self._iter = iter(self._data)
            self._pass_pos = 0
        else:
            self._pos = 0

    def restore_generators(self) -> None:
        """Put the data's own generators back in the state they had when the stream was made."""
        for generator, state in zip(self._generators, self._generator_states, strict=True):
            generator.set_state(state)

    def close(self) -> None:
        """Shut down the worker processes of the loader iterators this stream started.

        A ``DataLoader`` with ``persistent_workers=True`` is read through a copy without them
        (see the class docstring), so no loader keeps an iterator of the stream's; an iterator
        the data already held as its ``_iterator`` is left to it. The stream must not be used
        after this.
        """
        if self._reiterable and self._iter is not self._loader_iterator:
            _shutdown_workers(self._iter)  # a worker iterator of a non-persistent loader

    def position_of_step(self, step: int) -> int | None:
        """Index in the data (counting from 0, as it is yielded) of the batch that step
        ``step`` after a :meth:`restart` gets, or ``None`` if it cannot be known.

        Data shorter than the probe is cycled, so step ``step`` gets batch ``step`` modulo the
        data's length: known once the data has run out (for re-iterable data, when every pass
        that ran out had the same length), or when no pass has run out yet and ``step``
        batches have been drawn in one.
        """
        if step < 0:
            return None
        if not self._reiterable:
            if self._exhausted and self._cache:
                return step % len(self._cache)
            return step if step < len(self._cache) else None
        if not self._pass_lengths:
            return step if step < self._positions_seen else None
        if len(self._pass_lengths) == 1:
            return step % next(iter(self._pass_lengths))
        return None  # passes of different lengths (a sampler whose length varies)

    def _draw_reiterable(self) -> Any:
        try:
            raw = next(self._iter)
        except StopIteration:
            if self._pass_pos > 0:
                self._pass_lengths.add(self._pass_pos)
            self._iter = iter(self._data)
            self._pass_pos = 0
            try:
                raw = next(self._iter)
            except StopIteration:
                raise empty_data_error(self._data) from None
        if self._first is _UNSET:
            self._first = raw
        self._pending_pos = self._pass_pos
        self._pass_pos += 1
        self._positions_seen = max(self._positions_seen, self._pass_pos)
        return raw

    def _fill_cache(self) -> None:
        # Draw one more batch from a one-shot source into the cache, unless it is exhausted.
        if not self._exhausted:
            try:
                raw = next(self._iter)
            except StopIteration:
                self._exhausted = True
            else:
                # A copy, not the reference: a source that refills one buffer for every batch
                # (a prefetcher) would otherwise change the batches a later burst replays.
                raw = move_to_device(raw, None, copy=True)
                self._cache.append(raw)
                if self._first is _UNSET:
                    self._first = raw
        if not self._cache:
            raise empty_data_error(self._data)


@contextlib.contextmanager
def seeded_stream(data: Iterable[Any], device: torch.device, seed: int) -> Iterator[BatchStream]:
    """A :class:`BatchStream` over ``data`` for one seeded run (a trial, a grid cell).

    The data's own generators (``DataLoader(generator=...)``) are seeded with ``seed``, as the
    caller seeds torch's global RNG, so every run of a seed sees one order whatever ran before
    it; on exit they get their states back and the loader workers the stream started end.
    """
    stream = BatchStream(data, device)
    try:
        if stream._generators:  # else restart() would only start the loader's workers again
            stream.restart(seed=seed)
        yield stream
    finally:
        stream.restore_generators()
        stream.close()


def _shutdown_workers(iterator: object) -> None:
    # torch's multi-process loader iterator stops its workers with _shutdown_workers (what its
    # __del__ calls; safe to call twice); other iterators have nothing to stop.
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def _data_generators(data: object) -> list[torch.Generator]:
    # The torch.Generators a DataLoader draws its order and worker seeds from: its own and its
    # samplers' (RandomSampler, a BatchSampler around one), each once.
    found: list[torch.Generator] = []
    holders = [data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)]
    holders.append(getattr(holders[2], "sampler", None))
    for holder in holders:
        generator = getattr(holder, "generator", None) if holder is not None else None
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


# Where the Hugging Face `datasets` library defines its Dataset and IterableDataset.
_HF_DATASET_MODULES = frozenset({"datasets.arrow_dataset", "datasets.iterable_dataset"})


def check_batched(data: object, name: str = "data") -> None:
    """Refuse a dataset of single examples passed where batches go.

    Iterating a map-style ``torch.utils.data.Dataset`` (a ``TensorDataset``, the dataset a
    ``Trainer`` takes) or a Hugging Face ``datasets`` dataset yields one example at a time:
    many losses accept an unbatched example, so the probe would run at batch size 1 and find
    a peak LR for that, without an error.

    Raises:
        TypeError: saying to wrap it in a ``DataLoader`` with the run's batch size (or
            ``batch_size=None`` for a dataset whose items are whole batches already).
    """
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, (torch.Tensor, Mapping)):
        raise TypeError(
            f"{name} must be an iterable of batches, but got a single "
            f"{type(data).__name__}; wrap it in a list ([batch]) or a DataLoader"
        )
    if (
        isinstance(data, tuple)
        and 1 < len(data) < 4
        and all(isinstance(x, torch.Tensor) for x in data)
        and len({x.shape[1:] for x in data}) > 1  # batches of one kind share all but dim 0
    ):
        raise TypeError(
            f"{name} is a tuple of {len(data)} tensors, which reads as {len(data)} batches: if "
            "it is one (inputs, targets) batch, wrap it in a list ([batch]) or a DataLoader; "
            f"if it is {len(data)} batches, pass them as a list"
        )
    kind = type(data)
    hf = any(c.__module__ in _HF_DATASET_MODULES for c in kind.__mro__)
    if isinstance(data, DataLoader) or not (
        hf or (isinstance(data, Dataset) and not isinstance(data, IterableDataset))
    ):
        return
    raise TypeError(
        f"{name} is a dataset ({kind.__name__}), which yields single examples, not batches: "
        f"pass DataLoader({name}, batch_size=<the run's batch size>, shuffle=True), so the "
        "probe trains on the batches the run will (a dataset whose items are whole batches "
        f"already: DataLoader({name}, batch_size=None))"
    )


def not_iterable_error(data: object) -> TypeError:
    """The error for data that is not an iterable of batches."""
    # A generator function passed uncalled is the usual slip.
    hint = (
        f"; call it: pass {data.__name__}(...), not {data.__name__}"
        if inspect.isfunction(data)
        else ""
    )
    return TypeError(
        "data must be an iterable of batches (a DataLoader, a list of batches or a generator), "
        f"but got type {type(data).__name__}{hint}"
    )


def empty_data_error(data: object) -> ValueError:
    """The error for data that yields no batches (also raised before the stream is made)."""
    return ValueError(
        "the data yielded no batches; pass a non-empty DataLoader or iterable of batches, "
        f"but got an empty {type(data).__name__} (with drop_last=True, check that the dataset "
        "holds at least batch_size samples)"
    )
