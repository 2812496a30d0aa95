"""The benchmark tasks: small, seeded training problems with an oracle grid each.

A :class:`BenchTask` bundles everything a full training run needs (a model factory, seeded
training data, fixed validation data, the loss, the optimizer settings, the run length) and the
oracle grid to search (``lr_grid`` x ``warmup_grid``). Tasks are plain frozen dataclasses built
from module-level functions, so they pickle into worker processes and can be shortened for tests
with :func:`dataclasses.replace`:

.. code-block:: python

    import dataclasses
    from autowarm.bench.tasks import get_task

    task = dataclasses.replace(get_task("postln_lm"), total_steps=20)

Every task's data is generated from a seed (nothing is downloaded) as an endless stream of fresh
samples, so the validation loss at the end of a run is not dominated by overfitting.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from autowarm._train import (
    LossFn,
    callable_name,
    module_types_fingerprint,
    resolve_loss_fn,
    structure_fingerprint,
)
from autowarm.bench import _data, _models
from autowarm.probe._state import seeded_rngs

__all__ = [
    "DEFAULT_WARMUP_FRACS",
    "TASKS",
    "BenchTask",
    "available_tasks",
    "get_task",
]

DEFAULT_WARMUP_FRACS: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.25, 0.6)
"""Warmup lengths of the oracle grid, as fractions of ``total_steps``."""

_VAL_SEED = 2_147_483_647  # never used as a training seed by the grid (seeds start at 0)
_DATA_SEED_OFFSET = 1_000_003  # keeps a run's data stream apart from its model init


def _weights_fingerprint(model: nn.Module) -> str:
    # 16 hex digits of each parameter's and buffer's mean and standard deviation at 4
    # significant digits: an initialisation changed (a scale, a distribution) moves them,
    # while a last-bit difference between torch builds does not (the values themselves could)
    parts = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        v = t.detach().to("cpu").reshape(-1)
        if v.numel() and v.is_floating_point():
            v = v.to(torch.float64)
            std = float(v.std()) if v.numel() > 1 else 0.0
            parts.append(f"{name}:{float(v.mean()):.4g}:{std:.4g}")
        else:  # integer buffers (a step count, token ids): their values, or their count
            parts.append(f"{name}:{v.tolist()!r}" if v.numel() <= 16 else f"{name}:{v.numel()}")
    return hashlib.sha1(";".join(parts).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class BenchTask:
    """One benchmark problem: a seeded model, a data stream, a loss, a run length and a grid.

    Attributes:
        name:
            Registry key, e.g. ``"postln_lm"``.
        description:
            One sentence: model, data, and why the task is in the benchmark.
        model_factory:
            ``model_factory() -> nn.Module``; :meth:`make_model` seeds torch around it.
        chunks:
            ``chunks(generator, n) -> list of n batches``; both the training stream and the
            validation set come from it (with different seeds).
        total_steps:
            Optimizer steps of a full run.
        lr_grid:
            Peak learning rates of the oracle grid, increasing.
        warmup_fracs:
            Warmup lengths of the oracle grid as fractions of ``total_steps``, increasing.
        optimizer_kwargs:
            Keyword arguments for the optimizer besides ``lr`` (betas, weight decay, eps).
        loss_fn:
            ``loss_fn(model, batch) -> Tensor``, or ``None`` for the default batch handling.
        criterion:
            ``criterion(outputs, targets) -> Tensor`` for ``(inputs, targets)`` batches.
        val_batches:
            Number of fixed validation batches.
        grad_clip:
            Gradient-norm clipping of the full run, or ``None``.
        requires:
            Importable modules the task needs beyond the core dependencies.
        warmup_needed:
            Whether warmup is expected to matter on this task (``False`` for the control).
    """

    name: str
    description: str
    model_factory: Callable[[], nn.Module]
    chunks: _data.ChunkMaker
    total_steps: int
    lr_grid: tuple[float, ...]
    warmup_fracs: tuple[float, ...] = DEFAULT_WARMUP_FRACS
    optimizer_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    loss_fn: LossFn | None = None
    criterion: Callable[[Any, Any], torch.Tensor] | None = None
    val_batches: int = 16
    grad_clip: float | None = None
    requires: tuple[str, ...] = ()
    warmup_needed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(
                f"total_steps must be a positive integer, but got total_steps={self.total_steps!r}"
            )
        if not self.lr_grid or any(lr <= 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive floats, but got {self.lr_grid!r}")
        if not self.warmup_fracs or any(not 0.0 <= f < 1.0 for f in self.warmup_fracs):
            raise ValueError(
                f"warmup_fracs must hold fractions in [0, 1), but got {self.warmup_fracs!r}"
            )

    @property
    def warmup_grid(self) -> tuple[int, ...]:
        """Warmup lengths of the oracle grid in steps (``round(frac * total_steps)``, unique)."""
        steps = (round(f * self.total_steps) for f in self.warmup_fracs)
        return tuple(sorted(set(steps)))

    def is_available(self) -> bool:
        """Whether every module in :attr:`requires` can be imported."""
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    def definition(self) -> dict[str, Any]:
        """What a run of this task depends on besides the schedule, seed and ``total_steps``
        (which every row records): the model's structure (parameter and buffer names, shapes,
        dtypes) and the types of its modules (an activation swapped), the loss function by
        name, the optimizer settings, the clipping and the validation batches. Stored beside
        a grid or evaluation CSV, so rows of a task changed since are not resumed.

        Also ``data``, the data generator's settings (:attr:`chunks`, its type and fields),
        and ``weights``, the initial weights' per-tensor mean and spread to 4 digits (an
        initialisation changed). A record written before these parts were recorded lacks
        them: parts are compared only where both records have them."""
        model = self.make_model(0)
        return {
            "model": structure_fingerprint(model),
            "modules": module_types_fingerprint(model),
            "loss": callable_name(self.loss_fn if self.loss_fn is not None else self.criterion),
            "optimizer_kwargs": repr(sorted(dict(self.optimizer_kwargs).items())),
            "grad_clip": self.grad_clip,
            "val_batches": len(self.val_data()),
            # the generator's settings, not its batches' values: those may differ in the last
            # bits between machines (matrix products), which would refuse a resume elsewhere
            "data": repr(self.chunks),
            "weights": _weights_fingerprint(model),
        }

    def validation_loss(self, model: nn.Module) -> float:
        """Mean loss of ``model`` over :meth:`val_data` (eval mode, no gradients)."""
        from autowarm.bench._run import evaluate

        return evaluate(model, self.val_data(), self.resolved_loss_fn())

    def make_model(self, seed: int) -> nn.Module:
        """Build the model with torch, numpy and python seeded by ``seed``; their global
        generators are left as they were."""
        with seeded_rngs(seed):
            model = self.model_factory()
        return model.train()

    def train_data(self, seed: int) -> Iterable[Any]:
        """Training batches for the run with this seed: ``total_steps`` fresh batches, the
        same ones each time it is iterated."""
        return _data.SeededStream(self.chunks, seed + _DATA_SEED_OFFSET, self.total_steps)

    def val_data(self) -> list[Any]:
        """The fixed validation batches (the same for every seed)."""
        return _val_batches(self.chunks, self.val_batches)

    def resolved_loss_fn(self) -> LossFn:
        """The ``(model, batch) -> loss`` function for this task's batches."""
        return resolve_loss_fn(self.loss_fn, self.criterion)

    def make_optimizer(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
    ) -> torch.optim.Optimizer:
        """The task's optimizer at learning rate ``lr``, fused when the class supports it.

        Args:
            params:
                Parameters to optimise.
            lr:
                Initial learning rate (a scheduler will overwrite it).
            optimizer_cls:
                Any ``torch.optim`` class taking ``lr`` and this task's
                :attr:`optimizer_kwargs` (``betas``, ``weight_decay``).
        """
        kwargs = dict(self.optimizer_kwargs)
        accepted = inspect.signature(optimizer_cls).parameters
        # The single-tensor loop costs more than the forward pass of these tiny models.
        if "fused" in accepted and "foreach" not in kwargs:
            kwargs.setdefault("fused", True)
        elif "foreach" in accepted:
            kwargs.setdefault("foreach", True)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"{getattr(optimizer_cls, '__name__', optimizer_cls)} does not take {unknown} "
                "from the task's "
                f"optimizer_kwargs={dict(self.optimizer_kwargs)!r}; pass an optimizer class "
                "that accepts them or replace the task's optimizer_kwargs"
            )
        return optimizer_cls(params, lr=lr, **kwargs)


@functools.lru_cache(maxsize=16)
def _val_batches(chunks: _data.ChunkMaker, n_batches: int) -> list[Any]:
    return _data.fixed_batches(chunks, _VAL_SEED, n_batches)


def _lr_grid(low: float, n: int, factor: float = 2.0) -> tuple[float, ...]:
    # log-spaced, rounded to 3 significant digits so the values read well in tables
    return tuple(float(f"{low * factor**i:.3g}") for i in range(n))


_LM_VOCAB, _LM_CONTEXT, _LM_BATCH = 32, 16, 16


def _build_tasks() -> dict[str, BenchTask]:
    tasks = [
        BenchTask(
            name="postln_lm",
            description=(
                "3-layer post-LayerNorm transformer LM (d=32, ctx 16) on an order-2 sparse "
                "Markov language; post-LN needs warmup at large learning rates (at 2 layers it "
                "hardly did, hence 3)."
            ),
            model_factory=functools.partial(
                _models.PostLNLM,
                vocab=_LM_VOCAB,
                d_model=32,
                n_layers=3,
                n_heads=4,
                d_ff=64,
                context=_LM_CONTEXT,
            ),
            chunks=_data.MarkovChunks(
                vocab=_LM_VOCAB,
                order=2,
                branching=6,
                sigma=2.0,
                context=_LM_CONTEXT,
                batch_size=_LM_BATCH,
                world_seed=11,
            ),
            criterion=_models.lm_cross_entropy,
            total_steps=2000,
            lr_grid=_lr_grid(2e-3, 6),
            optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.0},
        ),
        BenchTask(
            name="hf_gpt2",
            description=(
                "tiny transformers GPT2LMHeadModel (d=32, 2 layers, ctx 16) built from a config, "
                "dict batches and model(**batch).loss, AdamW betas=(0.9, 0.95) as in LLM "
                "training, on an order-2 sparse Markov language."
            ),
            model_factory=functools.partial(
                _models.gpt2_lm,
                vocab=_LM_VOCAB,
                d_model=32,
                n_layers=2,
                n_heads=4,
                context=_LM_CONTEXT,
            ),
            chunks=_data.MarkovChunks(
                vocab=_LM_VOCAB,
                order=2,
                branching=4,
                sigma=1.5,
                context=_LM_CONTEXT,
                batch_size=_LM_BATCH,
                world_seed=23,
                as_dict=True,
            ),
            total_steps=2000,
            # pre-LN: stable up to lr ~0.25 without warmup, so the axis needs 1000x
            lr_grid=_lr_grid(1e-3, 6, 4.0),
            optimizer_kwargs={"betas": (0.9, 0.95), "weight_decay": 0.1},
            requires=("transformers",),
        ),
        BenchTask(
            name="deep_mlp",
            description=(
                "16-layer ReLU MLP of width 32 without normalisation (He init) regressing a "
                "random tanh teacher network with label noise."
            ),
            model_factory=functools.partial(
                _models.deep_mlp, d_in=16, width=32, depth=16, d_out=1
            ),
            chunks=_data.TeacherChunks(
                kind="mlp",
                d_in=16,
                d_hidden=32,
                d_out=1,
                scale=2.0,
                noise=0.1,
                batch_size=64,
                world_seed=37,
            ),
            criterion=torch.nn.functional.mse_loss,
            total_steps=2000,
            lr_grid=_lr_grid(2e-3, 6),
            optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.0},
        ),
        BenchTask(
            name="convnet",
            description=(
                "3-layer conv net without normalisation (He init) classifying 8 orientations "
                "of noisy sine gratings (1x12x12 images, random frequency, phase, contrast); "
                "with BatchNorm warmup hardly mattered and the best LR ran off the grid."
            ),
            model_factory=functools.partial(
                _models.conv_net, channels=8, n_classes=8, batch_norm=False
            ),
            chunks=_data.GratingsChunks(size=12, n_classes=8, noise=1.0, batch_size=32),
            criterion=torch.nn.functional.cross_entropy,
            total_steps=2000,
            lr_grid=_lr_grid(2e-3, 6),
            optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.0},
        ),
        BenchTask(
            name="control_convex",
            description=(
                "control: multinomial logistic regression (32 inputs, 10 classes) on labels "
                "sampled from a fixed linear teacher; convex, so warmup should not matter."
            ),
            model_factory=functools.partial(_models.linear_classifier, d_in=32, n_classes=10),
            chunks=_data.TeacherChunks(
                kind="linear",
                d_in=32,
                d_hidden=0,
                d_out=10,
                scale=3.0,
                noise=0.0,
                batch_size=64,
                world_seed=53,
            ),
            criterion=torch.nn.functional.cross_entropy,
            total_steps=2000,
            # flat over a wide range, so the grid spans 1000x to reach "clearly worse" ends
            lr_grid=_lr_grid(1e-3, 6, 4.0),
            optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.0},
            warmup_needed=False,
        ),
    ]
    return {task.name: task for task in tasks}


TASKS: dict[str, BenchTask] = _build_tasks()
"""All benchmark tasks by name (including those whose optional dependency is missing)."""


def available_tasks() -> dict[str, BenchTask]:
    """The tasks of :data:`TASKS` whose optional dependencies are installed."""
    return {name: task for name, task in TASKS.items() if task.is_available()}


def get_task(name: str) -> BenchTask:
    """Look a task up by name, or load a task file (``path/to/task.py:task``, an
    :class:`autowarm.Task`; see :mod:`autowarm.bench._user`).

    Raises:
        KeyError: If there is no such task; the message lists the valid names.
        ValueError: If a task file does not load or cannot be benchmarked.
    """
    from autowarm.bench._user import is_task_spec, load_file_task

    if is_task_spec(name):
        return load_file_task(name)
    try:
        return TASKS[name]
    except KeyError:
        valid = ", ".join(sorted(TASKS))
        raise KeyError(
            f"no benchmark task named {name!r}; valid names: {valid}, or a task file "
            "(path/to/task.py:task, an autowarm.Task)"
        ) from None
