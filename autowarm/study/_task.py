"""A training task the study can repeat: a fresh model per seed, data, a loss, a run length.

:class:`Task` is what ``autowarm tune`` and ``autowarm probe`` load from a file
(``path/to/file.py:task``) or a module (``package.module:task``), with :func:`load_task`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autowarm._checks import is_finite_real, is_int, is_real
from autowarm._train import (
    LossFn,
    check_accumulation_steps,
    check_batched,
    check_precision,
    mean_loss,
    resolve_loss_fn,
    structure_fingerprint,
)
from autowarm.probe._state import RngState, as_device, seeded_rngs

if TYPE_CHECKING:
    from autowarm._groups import GroupSpec

__all__ = ["Task", "load_task"]

EvalFn = Callable[[nn.Module], float]


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything a trial needs to train a fresh model from a seed and score it.

    Args:
        make_model:
            ``make_model(seed) -> nn.Module``: a fresh model, the same weights for the same seed.
            Torch's, numpy's and python's global generators are seeded with ``seed`` around
            the call as well.
        train_data:
            A re-iterable of batches (a ``DataLoader``, a list), or ``train_data(seed)``
            returning one. It is cycled when exhausted. A shuffling loader draws its order
            from torch's global RNG, which each trial seeds (with numpy's and python's, for a
            dataset that draws from them in the main process).
        loss_fn:
            ``loss_fn(model, batch) -> scalar tensor``; as in :func:`autowarm.suggest`.
        criterion:
            ``criterion(outputs, targets)`` for ``(inputs, targets)`` batches.
        eval_fn:
            ``eval_fn(model) -> float``: the validation loss (lower is better). It runs in
            eval mode without gradients; the trial restores every submodule's mode and the
            global RNGs afterwards, so evaluating does not change the training run.
        val_data:
            Validation batches; the default ``eval_fn`` is the mean loss over their samples
            (each batch's loss weighted by its size, the first dimension its tensors share,
            so a short last batch counts for its samples only; batches of no clear size are
            weighted equally).
            With neither ``eval_fn`` nor ``val_data``, a trial's value is the mean training
            loss of its last tenth (said so in the study's ``autowarm.metric``).
        total_steps:
            Optimizer steps of the real run.
        optimizer_cls:
            The optimizer class; it takes ``lr`` and ``optimizer_kwargs``.
        optimizer_kwargs:
            Keyword arguments for the optimizer other than ``lr``.
        grad_clip:
            Maximum total gradient norm in the trials (and the real run), or ``None``.
        param_groups:
            ``param_groups(model) -> list of dicts``: the run's parameter groups, as in
            :func:`autowarm.suggest` (per-group settings, ``lr_scale`` for the group's LR
            ratio to the peak); default: one group of every trainable parameter. A function,
            since every trial builds a fresh model.
        accumulation_steps:
            Batches whose gradients add up before each optimizer step (gradient
            accumulation); ``total_steps`` counts optimizer steps.
        precision:
            ``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"``, as in :func:`autowarm.suggest`,
            for the trials' training steps; validation (``val_data``) runs without autocast,
            in the weights' own precision.
        device:
            Where trials train (``"cuda"``, ``"cpu"``); default: where ``make_model`` puts it.
        name:
            The task's identity in the study (``autowarm.task``); defaults to where it was
            loaded from, or the qualified name of ``make_model``.
        source:
            The spec :func:`load_task` loaded it from; worker processes load it again from
            there (a task defined in a file does not pickle).

    Raises:
        ValueError: For a non-positive ``total_steps``, an ``lr`` in ``optimizer_kwargs``,
            ``loss_fn`` and ``criterion`` given together, an ``accumulation_steps`` that is
            not a positive int, an unknown ``precision``, or a ``grad_clip`` that is not a
            positive finite number.
        TypeError: If ``make_model`` or ``eval_fn`` is not callable, ``param_groups`` is not a
            function of the model, or ``train_data``/``val_data`` is a one-shot iterator
            (every trial reads the data afresh).
    """

    make_model: Callable[[int], nn.Module]
    train_data: Iterable[Any] | Callable[[int], Iterable[Any]]
    _: dataclasses.KW_ONLY  # the rest by keyword; total_steps has no default to fall back on
    total_steps: int
    loss_fn: LossFn | None = None
    criterion: Callable[[Any, Any], torch.Tensor] | None = None
    eval_fn: EvalFn | None = None
    val_data: Iterable[Any] | None = None
    optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW
    optimizer_kwargs: Mapping[str, Any] | None = None
    grad_clip: float | None = None
    param_groups: Callable[[nn.Module], Iterable[Mapping[str, Any]]] | None = None
    accumulation_steps: int = 1
    precision: str = "32-true"
    device: str | torch.device | None = None
    name: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.make_model):
            raise TypeError(
                "make_model must be a callable(seed) -> nn.Module, but got "
                f"{type(self.make_model).__name__}"
            )
        if not is_int(self.total_steps) or self.total_steps < 1:
            raise ValueError(
                f"total_steps must be a positive int (optimizer steps of the real run), but got "
                f"total_steps={self.total_steps!r}"
            )
        object.__setattr__(self, "total_steps", int(self.total_steps))
        if self.loss_fn is not None and self.criterion is not None:
            raise ValueError("pass loss_fn or criterion, not both")
        if self.eval_fn is not None and not callable(self.eval_fn):
            raise TypeError("eval_fn must be a callable(model) -> float")
        if self.optimizer_kwargs is not None and "lr" in self.optimizer_kwargs:
            raise ValueError(
                "optimizer_kwargs must not contain 'lr': the schedule sets it; "
                f"got optimizer_kwargs={dict(self.optimizer_kwargs)!r}"
            )
        for field, data in (("train_data", self.train_data), ("val_data", self.val_data)):
            check_batched(data, field)
            if data is not None and _one_shot(data):
                raise TypeError(
                    f"{field} must be re-iterable (a list of batches, a DataLoader"
                    + (", or a callable(seed) returning one" if field == "train_data" else "")
                    + f"), not a one-shot {type(data).__name__}: every trial reads it afresh"
                )
        as_device(self.device, "device")  # a misspelt name, before any trial
        steps = check_accumulation_steps(self.accumulation_steps)
        object.__setattr__(self, "accumulation_steps", steps)
        check_precision(self.precision)
        if self.param_groups is not None and not callable(self.param_groups):
            raise TypeError(
                "param_groups of a Task must be a function of the model returning the groups "
                "(every trial builds a fresh model), but got "
                f"{type(self.param_groups).__name__}"
            )
        if self.grad_clip is not None and not (
            is_finite_real(self.grad_clip) and self.grad_clip > 0
        ):
            # as suggest() checks it: the probe inside tune() runs with the task's grad_clip
            raise ValueError(
                "grad_clip must be a positive finite number (the real run's max gradient "
                f"norm) or None, but got grad_clip={self.grad_clip!r}"
            )

    @property
    def identity(self) -> str:
        """The name recorded in the study: :attr:`name`, else ``make_model``'s qualified name."""
        if self.name:
            return self.name
        fn = self.make_model
        return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"

    @property
    def has_validation(self) -> bool:
        """Whether trials are scored on validation data (``eval_fn`` or ``val_data``)."""
        return self.eval_fn is not None or self.val_data is not None

    def build_model(self, seed: int) -> nn.Module:
        """``make_model(seed)`` with torch seeded around it, moved to :attr:`device`, to train.

        A model made in train mode keeps its submodules' modes (a BatchNorm frozen in eval
        mode for fine-tuning stays so, as in the probe and the user's own loop); one made in
        eval mode (loaded with ``from_pretrained``, say) is put in train mode. The global RNG
        is left as it was."""
        model = self._seeded_model(seed)
        if self.device is not None:
            model = model.to(self.device)
        return model if model.training else model.train()

    def model_fingerprint(self, seed: int = 0) -> str:
        """16 hex digits naming the model's structure: the names, shapes and dtypes of the
        parameters and buffers of ``make_model(seed)`` (not their values). Recorded in a study,
        so a resume with another model under the same task name is refused."""
        return structure_fingerprint(self._seeded_model(seed))

    def data_sizes(self, seed: int = 0) -> dict[str, int | None]:
        """How many batches the training data (``data(seed)``) and the validation data hold,
        by ``len()``; ``None`` where the data has no length (a stream, an iterable dataset).
        Recorded in a study, so a resume on a subset or a superset of the data the study
        started with (the same model and settings otherwise) is refused. The batches are not
        read: data with random augmentation resumes as it should."""
        return sizes_of(self.data(seed), self.val_data)

    def optimizer_identity(self) -> str:
        """The optimizer and its settings as one line, e.g. ``"torch.optim.adamw.AdamW(betas=
        (0.9, 0.95), weight_decay=0.1)"``. Recorded in a study, so a resume with another
        optimizer or other settings under the same task name is refused."""
        cls = self.optimizer_cls
        name = (
            f"{cls.__module__}.{cls.__qualname__}"
            if isinstance(cls, type)
            else repr(cls)  # a factory function or a partial
        )
        kwargs = self.optimizer_kwargs or {}
        settings = ", ".join(f"{k}={kwargs[k]!r}" for k in sorted(kwargs))
        return f"{name}({settings})"

    def param_groups_identity(self, seed: int = 0) -> list[str] | None:
        """The parameter groups of :attr:`param_groups` as one line each, or ``None`` without
        them: how many parameters, a 16-hex-digit hash of their names, the ``lr_scale`` and
        the group's own settings, e.g. ``"2 params (3f9c...), lr_scale=0.1, weight_decay=0.0"``.
        Recorded in a study, so a resume with other groups (another split, scale or weight
        decay) under the same task name is refused."""
        if self.param_groups is None:
            return None
        return self.groups_identity_of(self._seeded_model(seed))

    def groups_identity_of(self, model: nn.Module) -> list[str] | None:
        """:meth:`param_groups_identity` of a model already built (``make_model(seed)``)."""
        if self.param_groups is None:
            return None
        names = {id(p): n for n, p in model.named_parameters()}
        lines = []
        for group in self._resolved_groups(model):
            members = ";".join(names.get(id(p), "?") for p in group.params)
            digest = hashlib.sha1(members.encode()).hexdigest()[:16]
            settings = "".join(f", {k}={group.options[k]!r}" for k in sorted(group.options))
            lines.append(
                f"{len(group.params)} params ({digest}), lr_scale={group.lr_scale!r}{settings}"
            )
        return lines

    def _resolved_groups(self, model: nn.Module) -> list[GroupSpec]:
        # The groups as suggest() checks and builds them (the optimizer's and the records').
        from autowarm._groups import resolve_param_groups

        kwargs = dict(self.optimizer_kwargs or {})
        return resolve_param_groups(self.param_groups, model, self.optimizer_cls, kwargs)  # type: ignore[arg-type]

    def _seeded_model(self, seed: int) -> nn.Module:
        # make_model(seed) with torch seeded around it (the global RNG left as it was)
        with seeded_rngs(seed):
            model = self.make_model(seed)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"make_model(seed) must return an nn.Module, but returned {type(model).__name__}"
            )
        return model

    def data(self, seed: int) -> Iterable[Any]:
        """The training batches for ``seed``."""
        data = self.train_data
        if callable(data) and not hasattr(data, "__iter__"):
            return data(seed)
        return data

    def resolved_loss_fn(self) -> LossFn:
        """The ``(model, batch) -> loss`` function for this task's batches."""
        return resolve_loss_fn(self.loss_fn, self.criterion)

    def make_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """The task's optimizer over ``model``'s trainable parameters at ``lr``.

        With :attr:`param_groups`, one group each, checked as :func:`autowarm.suggest` checks
        them; every group keeps its ``lr_scale``, which ``ScheduleConfig.lambda_lr`` reads.
        The key is added to the optimizer's groups once it is built, so an optimizer that
        refuses keys it does not know takes the groups as :func:`autowarm.suggest` gives them.
        """
        kwargs = dict(self.optimizer_kwargs or {})
        if self.param_groups is None:
            params = [p for p in model.parameters() if p.requires_grad]
            return self.optimizer_cls(params, lr=lr, **kwargs)
        groups = self._resolved_groups(model)
        optimizer = self.optimizer_cls([g.as_group() for g in groups], lr=lr, **kwargs)
        for group, spec in zip(optimizer.param_groups, groups, strict=True):
            group["lr_scale"] = spec.lr_scale
        return optimizer

    def evaluate(self, model: nn.Module) -> float:
        """The validation loss of ``model`` (eval mode, no gradients).

        Every submodule's train/eval mode is restored afterwards, and the global RNGs (torch's,
        numpy's, python's) too: a validation loader's shuffle or an ``eval_fn`` drawing random
        numbers leaves the training run it interrupts as it was, so a trial evaluated at
        checkpoints trains as the same run unevaluated.

        Raises:
            ValueError: If there is no validation (see :attr:`has_validation`), the data
                yields no batch, or the loss is not a number.
        """
        modes = [(m, m.training) for m in model.modules()]
        rngs = RngState.capture()
        model.eval()
        try:
            with torch.no_grad():
                if self.eval_fn is not None:
                    value = _as_number(self.eval_fn(model), "eval_fn(model)")
                elif self.val_data is not None:
                    value = self._mean_val_loss(model)
                else:
                    raise ValueError("this task has no validation: pass eval_fn or val_data")
        finally:
            for module, mode in modes:
                module.training = mode
            rngs.restore()
        return value

    def _mean_val_loss(self, model: nn.Module) -> float:
        assert self.val_data is not None
        return mean_loss(
            model,
            self.val_data,
            self.resolved_loss_fn(),
            empty="val_data yielded no batches; pass at least one validation batch",
            to_number=lambda loss: _as_number(loss, "the loss"),
        )


def _as_number(value: Any, what: str) -> float:
    # A validation value as a float, or an error naming what returned what.
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if is_real(value):  # int, float, numpy scalars; not a bool
        return float(value)
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    raise TypeError(
        f"{what} must be a number (a float or a one-element tensor), but returned "
        f"{type(value).__name__}{shape}: {value!r:.60}"
    )


def sizes_of(train: Any, val: Any) -> dict[str, int | None]:
    """:meth:`Task.data_sizes` of training and validation data already made."""
    return {"train_batches": _length(train), "val_batches": _length(val)}


def _length(data: Any) -> int | None:
    # len() where the data defines it (a list, a DataLoader over a map-style dataset); None for
    # streams and for DataLoaders over iterable datasets without a length (their len() raises).
    if data is None:
        return None
    try:
        n = len(data)
    except (TypeError, NotImplementedError):
        return None
    return int(n)


def _one_shot(data: Any) -> bool:
    """True for an iterator or generator: it can be read only once.

    Decided from the type, without calling ``iter(data)``: on a ``DataLoader`` with
    ``persistent_workers`` that call would start the worker processes and keep them, and every
    trial would then reuse workers whose random state runs on from the one before.
    """
    return isinstance(data, Iterator)


def load_task(spec: str) -> Task:
    """Load a :class:`Task` from ``path/to/file.py:name`` or ``package.module:name``.

    ``name`` may be a :class:`Task` or a function taking no arguments that returns one.
    A file is imported as a module of its own (its directory is not added to ``sys.path``
    permanently); the task's :attr:`~Task.name` defaults to the spec (a file by its name
    alone, :func:`canonical_spec`).

    Raises:
        ValueError: If the spec is malformed, the file or module or attribute does not exist,
            or the attribute is not a Task.
    """
    if ":" not in spec:
        raise ValueError(
            f"task spec must be 'path/to/file.py:task' or 'package.module:task', but got {spec!r}"
        )
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ValueError(
            f"task spec must be 'path/to/file.py:task' or 'package.module:task', but got {spec!r}"
        )
    if ".py:" in where:
        raise ValueError(
            f"task spec {spec!r} has more than one ':' after its file: pass "
            f"'{where.partition('.py:')[0]}.py:NAME', NAME being the Task (or the function "
            "returning one) in that file"
        )
    if where.endswith(".py") or "/" in where or Path(where).is_file():
        module = _import_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            top = where.split(".")[0]
            if Path(f"{where}.py").is_file():
                hint = f"; for the file {where}.py here, pass '{where}.py:{attr}'"
            elif Path(top).is_dir() and exc.name == top:
                hint = (
                    f"; the folder {top} is here: for it as a package, put its parent on the "
                    "path (PYTHONPATH=. autowarm ...) or pip install it; for a file in it, "
                    f"pass '{top}/FILE.py:{attr}'"
                )
            else:
                hint = ""
            raise ValueError(
                f"cannot import module {where!r} for task {spec!r}: {exc}{hint}"
            ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        names = sorted(k for k, v in vars(module).items() if isinstance(v, Task))
        raise ValueError(
            f"{where} has no attribute {attr!r}; Tasks defined there: {names or 'none'}"
        ) from None
    if not isinstance(obj, Task) and callable(obj) and not inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ValueError(
                f"calling {spec} to build the task raised {type(exc).__name__}: {exc} "
                "(autowarm --debug shows the traceback)"
            ) from exc
    if not isinstance(obj, Task):
        raise ValueError(
            f"{spec} is a {type(obj).__name__}, not an autowarm.Task; define "
            f"{attr} = autowarm.Task(make_model=..., train_data=..., total_steps=...)"
        )
    task = dataclasses.replace(obj, name=obj.name or canonical_spec(spec), source=spec)
    loads = _LOADED.setdefault(spec, [])
    loads.append(tuple(getattr(task, f) for f in _COMPARED))
    del loads[:-4]  # the last few loads of a spec (a notebook reloading its task file)
    return task


# The fields of what load_task returned, per spec, held here (the Task itself may be gone,
# as in dataclasses.replace(load_task(spec), ...)): a task changed since, which keeps its
# source, is told from one a worker process would load again the same.
_COMPARED = tuple(f.name for f in dataclasses.fields(Task) if f.name not in ("name", "source"))
_LOADED: dict[str, list[tuple[Any, ...]]] = {}


def changed_since_loaded(task: Task) -> list[str]:
    """The fields in which ``task`` differs from what :func:`load_task` returned for its
    ``source`` (``name`` aside: it only labels the study), compared by identity; ``[]`` for
    a task as loaded, or one whose source this process did not load."""
    loads = _LOADED.get(task.source or "")
    if not loads:
        return []
    diffs = [
        [f for f, v in zip(_COMPARED, values, strict=True) if not _same(getattr(task, f), v)]
        for values in loads
    ]
    return min(diffs, key=len)


def _same(a: Any, b: Any) -> bool:
    # the same object; or an equal plain value (a run length of 5000 given again)
    plain = (int, float, str, bool, type(None))
    return a is b or (type(a) is type(b) and isinstance(a, plain) and a == b)


def canonical_spec(spec: str) -> str:
    """A task spec as recorded in a study: a file spec by its file name (``dir/task.py:task``,
    ``./task.py:task`` and ``/abs/dir/task.py:task`` are all ``task.py:task``), so hosts and
    shells that reach the same file by other paths resume the same study; a module spec as
    it is."""
    where = spec_file(spec)
    if where is not None:
        return f"{Path(where).name}:{spec.rpartition(':')[2]}"
    return spec


def code_fingerprint(path: Path) -> str | None:
    """16 hex digits of a task file's code: its lines stripped, without blank and comment-only
    lines, so an edit that can change a run changes it and a reworded comment does not;
    ``None`` for a file that cannot be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    lines = [ln.strip() for ln in text.splitlines()]
    code = "\n".join(ln for ln in lines if ln and not ln.startswith("#"))
    return hashlib.sha1(code.encode()).hexdigest()[:16]


def spec_file(spec: str) -> str | None:
    """The file part of a file spec (``dir/task.py`` of ``dir/task.py:task``: it ends in
    ``.py`` or holds a ``/``), as written; ``None`` for a module spec (``pkg.mod:task``)."""
    where, sep, _ = spec.rpartition(":")
    return where if sep and (where.endswith(".py") or "/" in where) else None


def _import_file(path: Path) -> Any:
    path = path.expanduser().resolve()
    if path.is_dir():
        raise ValueError(
            f"task file {str(path)!r} is a folder: pass the file in it that defines the task "
            f"('{path.name}/task.py:NAME'), or, for a package, 'package.module:NAME' with its "
            "parent on the path (PYTHONPATH)"
        )
    if not path.is_file():
        raise ValueError(f"task file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    mod_name = f"autowarm_task_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # so the task's functions pickle into worker processes
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        del sys.modules[mod_name]
        raise ValueError(
            f"task file {str(path)!r} called sys.exit({exc.code!r}) while it was imported: a "
            "task file defines a Task (keep a script's own code under "
            "`if __name__ == '__main__':`)"
        ) from None
    except Exception as exc:
        del sys.modules[mod_name]
        raise ValueError(
            f"importing task file {str(path)!r} raised {type(exc).__name__}: {exc} "
            "(autowarm --debug shows the traceback)"
        ) from exc
    except BaseException:
        del sys.modules[mod_name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module
