"""Your own task in the benchmark: an :class:`autowarm.Task` from a file, as a benchmark task.

``autowarm bench grid|time|eval --tasks path/to/task.py:task`` runs the oracle grid and the
methods on the same task file that ``autowarm tune`` takes. :func:`load_file_task` wraps the
loaded :class:`~autowarm.study._task.Task` in :class:`FileBenchTask`, a
:class:`~autowarm.bench.tasks.BenchTask` whose model, data, loss and validation are the task's.
Worker processes load the file again (a task defined in a file does not pickle), so the file
must be importable on its own, as for ``autowarm tune --workers``.

What the benchmark needs of the task, checked when it is loaded:

- validation (``val_data`` or ``eval_fn``): the oracle compares final validation losses;
- AdamW (the default ``optimizer_cls``): the benchmark's methods and baselines are AdamW
  recipes (RAdam for its own baseline), run with the task's ``optimizer_kwargs``;
- one parameter group, no gradient accumulation, ``precision="32-true"``: the benchmark's
  runs do not do those yet.

The rows it writes name the task by its canonical spec (``task.py:task``, the file's name
without its folder), as ``autowarm tune`` does, so a grid resumes from any working directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autowarm._train import LossFn, callable_name
from autowarm.bench.tasks import DEFAULT_WARMUP_FRACS, BenchTask
from autowarm.study._task import code_fingerprint, sizes_of

__all__ = ["DEFAULT_FILE_LR_GRID", "FileBenchTask", "is_task_spec", "load_file_task"]

DEFAULT_FILE_LR_GRID: tuple[float, ...] = (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1)
"""Peak LRs of a task file's grid when ``--lrs`` is not given: half-decades from 1e-4 to 0.1.
``bench table`` and ``bench regret`` warn when the best cell is at an edge of the grid;
widen it there with ``--lrs`` (or ``--warmups``) and run the grid again: it resumes."""


def is_task_spec(name: str) -> bool:
    """Whether ``name`` names a task file (``path/to/task.py:task``), not a built-in task."""
    from autowarm.study._task import spec_file

    return bool(name.rpartition(":")[2]) and spec_file(name) is not None


def _unsupported(model: int) -> nn.Module:  # pragma: no cover - never called
    raise AssertionError("a FileBenchTask builds its model from its Task")


@dataclasses.dataclass(frozen=True)
class FileBenchTask(BenchTask):
    """A :class:`BenchTask` whose model, data, loss and validation come from an
    :class:`autowarm.Task` loaded from ``spec``; see the module docstring.

    Attributes (besides :class:`BenchTask`'s):
        spec: the task file and attribute, with the file's absolute path (workers reload it).
        task: the loaded :class:`autowarm.Task` (not pickled: a worker loads ``spec`` again).
    """

    spec: str = ""
    task: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Callable[..., FileBenchTask], tuple[Any, ...]]:
        return _reload, (self.spec, self.total_steps, self.lr_grid, self.warmup_fracs)

    def is_available(self) -> bool:
        """Always: the file was imported when the task was loaded."""
        return True

    def make_model(self, seed: int) -> nn.Module:
        """The task's ``make_model(seed)``, torch seeded around it, in train mode."""
        return self.task.build_model(seed)  # type: ignore[no-any-return]

    def train_data(self, seed: int) -> Iterable[Any]:
        """The task's training data for ``seed`` (cycled by the runs when it runs out)."""
        return self.task.data(seed)  # type: ignore[no-any-return]

    def val_data(self) -> list[Any]:
        """The task's ``val_data`` as a list (empty with an ``eval_fn``)."""
        return list(self.task.val_data or [])

    def resolved_loss_fn(self) -> LossFn:
        """The task's ``(model, batch) -> loss``."""
        return self.task.resolved_loss_fn()  # type: ignore[no-any-return]

    def definition(self) -> dict[str, Any]:
        """:meth:`BenchTask.definition`, with the task's training and validation data sizes
        (:meth:`autowarm.Task.data_sizes`), its ``eval_fn`` by name, and two fingerprints a
        built-in task does not need: ``source``, the task file's code (comments and blank
        lines aside: a loss body or a data constant edited), and ``data``, the values of the
        first training batch (seed 0) and the first validation batch (data read from
        elsewhere and changed)."""
        eval_fn = self.task.eval_fn
        loss = self.task.loss_fn if self.task.loss_fn is not None else self.task.criterion
        file = self.spec.rpartition(":")[0]  # absolute
        train = self.task.data(0)  # made once: a task's data may be costly to build
        return {
            **super().definition(),
            **sizes_of(train, self.task.val_data),
            "loss": callable_name(loss),
            "eval_fn": None if eval_fn is None else getattr(eval_fn, "__qualname__", "?"),
            "file": file,
            "source": code_fingerprint(Path(file)),
            "data": _data_fingerprint(train, self.task.val_data),
        }

    def validation_loss(self, model: nn.Module) -> float:
        """The task's validation (its ``eval_fn``, else the mean loss over ``val_data``)."""
        return float(self.task.evaluate(model))


def _data_fingerprint(*sources: Iterable[Any] | None) -> str | None:
    # The first batch of each source, its tensors' dtypes, shapes and values (and any other
    # leaf by repr), as 16 hex digits; None when a source gives no batch.
    digest = hashlib.sha1()
    for source in sources:
        if source is None:
            digest.update(b"none;")
            continue
        batch = next(iter(source), _NO_BATCH)
        if batch is _NO_BATCH:
            return None
        _feed(digest, batch)
    return digest.hexdigest()[:16]


_NO_BATCH = object()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"{key!s}=".encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}(".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(repr(value).encode())


def _reload(
    spec: str, total_steps: int, lr_grid: tuple[float, ...], warmup_fracs: tuple[float, ...]
) -> FileBenchTask:
    task = load_file_task(spec)
    return dataclasses.replace(
        task, total_steps=total_steps, lr_grid=lr_grid, warmup_fracs=warmup_fracs
    )


def load_file_task(spec: str) -> FileBenchTask:
    """Load ``path/to/task.py:name`` (an :class:`autowarm.Task`) as a benchmark task.

    Raises:
        ValueError: If the spec does not load, or the task asks for something the benchmark
            cannot run (no validation, another optimizer, parameter groups, accumulation,
            mixed precision); the message says what to change.
    """
    from autowarm.study._task import canonical_spec, load_task

    where, _, attr = spec.rpartition(":")
    absolute = f"{Path(where).expanduser().resolve()}:{attr}"
    task = load_task(absolute)
    problems = []
    if not task.has_validation:
        problems.append("it has no validation: give it val_data=[...] or eval_fn=...")
    if task.optimizer_cls is not torch.optim.AdamW:
        name = getattr(task.optimizer_cls, "__name__", repr(task.optimizer_cls))
        problems.append(
            f"its optimizer_cls is {name}: the benchmark's methods are AdamW recipes, so use "
            "torch.optim.AdamW (the default) for it"
        )
    if task.param_groups is not None:
        problems.append("it has param_groups: the benchmark trains one group")
    if task.accumulation_steps != 1:
        problems.append("it accumulates gradients: the benchmark takes accumulation_steps=1")
    if task.precision != "32-true":
        problems.append("it trains in mixed precision: the benchmark takes precision='32-true'")
    accepted = set(inspect.signature(torch.optim.AdamW).parameters) - {"params", "lr"}
    unknown = sorted(set(task.optimizer_kwargs or {}) - accepted)
    if unknown:
        problems.append(f"AdamW does not take {unknown} from its optimizer_kwargs")
    if (task.optimizer_kwargs or {}).get("amsgrad"):
        problems.append("it sets amsgrad=True, which the RAdam baseline cannot do")
    if problems:
        raise ValueError(
            f"task {spec} cannot be benchmarked: " + "; ".join(problems) + " (a task of its "
            "own for the benchmark, in the same file, is fine)"
        )
    return FileBenchTask(
        name=canonical_spec(spec),
        description=f"your task {canonical_spec(spec)} ({absolute.rpartition(':')[0]})",
        model_factory=_unsupported,  # type: ignore[arg-type]
        chunks=None,  # type: ignore[arg-type]
        total_steps=task.total_steps,
        lr_grid=DEFAULT_FILE_LR_GRID,
        warmup_fracs=DEFAULT_WARMUP_FRACS,
        optimizer_kwargs=dict(task.optimizer_kwargs or {}),
        grad_clip=task.grad_clip,
        spec=absolute,
        task=task,
    )
