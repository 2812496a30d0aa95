"""Snapshot and restore of everything a probe can change, so that it leaves no trace.

:class:`ModelSnapshot` keeps one copy of a model's weights plus the small state around them
(``requires_grad``, ``.training``, ``.grad``, RNG states); :func:`preserved` restores all of it
when its block ends, however it ends. :class:`RngState` captures and restores the random number
generators on its own.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

_log = logging.getLogger("autowarm")

__all__ = [
    "ModelSnapshot",
    "RngState",
    "loss_modules",
    "preserved",
    "rng_state",
    "set_rng_state",
]


@dataclass(frozen=True, eq=False)  # eq on tensor fields would be ambiguous
class RngState:
    """The states of the global random number generators a training run draws from.

    Covers torch's CPU generator, every CUDA device's generator (when CUDA is already
    initialised, or when the caller is about to use CUDA anyway: ``include_cuda=True``), the
    MPS generator (where MPS is available), numpy's global ``np.random`` state and python's
    ``random`` module. A seed that ``torch.manual_seed`` queued for a device not initialised
    yet (CUDA, XPU and MTIA queue it and apply it on their first use; the latest one wins) is
    captured too, so a seed set before the block is the one that device starts from after it.

    Attributes:
        torch_cpu:
            ``torch.get_rng_state()``.
        torch_cuda:
            ``torch.cuda.get_rng_state_all()``, or ``None`` if CUDA was not captured.
        numpy:
            ``np.random.get_state()``.
        python:
            ``random.getstate()``.
        torch_mps:
            ``torch.mps.get_rng_state()``, or ``None`` where MPS is not available.
        lazy_seeds:
            The seeds queued for devices not initialised yet: per device module (``"cuda"``,
            ``"xpu"``, ``"mtia"``) that keeps one, its queue as it was (an opaque value).
    """

    torch_cpu: torch.Tensor
    torch_cuda: tuple[torch.Tensor, ...] | None
    numpy: Any
    python: Any
    torch_mps: torch.Tensor | None = None
    lazy_seeds: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def capture(cls, *, include_cuda: bool = False) -> RngState:
        """Return the current states of all the generators.

        Args:
            include_cuda:
                Capture the CUDA generators even if CUDA is not initialised yet. Reading them
                initialises CUDA, so their captured state is the one the first CUDA draw would
                see (seeded by an earlier ``torch.manual_seed``); pass it when the block that
                follows will use CUDA, or that first state is lost. Without it, an
                uninitialised CUDA is left alone. No effect where CUDA is not available.
        """
        cuda_ready = torch.cuda.is_initialized() or (  # type: ignore[no-untyped-call]
            include_cuda and torch.cuda.is_available()
        )
        # Read before the CUDA states: reading those initialises CUDA, which runs the queue.
        lazy = _lazy_seed_queues()
        cuda = tuple(torch.cuda.get_rng_state_all()) if cuda_ready else None
        return cls(
            torch_cpu=torch.get_rng_state(),
            torch_cuda=cuda,
            numpy=np.random.get_state(),
            python=random.getstate(),
            torch_mps=torch.mps.get_rng_state() if _mps_available() else None,
            lazy_seeds=lazy,
        )

    def restore(self) -> None:
        """Put every generator back in the captured state."""
        self.restore_torch()
        np.random.set_state(self.numpy)
        random.setstate(self.python)

    def restore_torch(self) -> None:
        """Put torch's generators back (CPU, CUDA where captured, MPS, the queued seeds),
        leaving numpy's and python's as they are now."""
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        if self.torch_mps is not None:
            torch.mps.set_rng_state(self.torch_mps)
        _set_lazy_seed_queues(self.lazy_seeds)


# The device modules whose manual_seed queues the seed (torch._utils._LazySeedTracker) until the
# device is initialised: torch.manual_seed seeds them all, and only the latest seed is kept.
_LAZY_SEED_MODULES = ("cuda", "xpu", "mtia")
_LAZY_SEED_FIELDS = ("manual_seed_all_cb", "manual_seed_cb", "call_order")


def _lazy_seed_tracker(name: str) -> Any:
    tracker = getattr(getattr(torch, name, None), "_lazy_seed_tracker", None)
    if tracker is None or not all(hasattr(tracker, f) for f in _LAZY_SEED_FIELDS):
        return None  # another torch version: nothing known to capture
    return tracker


def _lazy_seed_queues() -> tuple[tuple[str, Any], ...]:
    out = []
    for name in _LAZY_SEED_MODULES:
        tracker = _lazy_seed_tracker(name)
        if tracker is not None:
            values = tuple(getattr(tracker, f) for f in _LAZY_SEED_FIELDS)
            out.append((name, (*values[:2], list(values[2]))))
    return tuple(out)


def _set_lazy_seed_queues(queues: tuple[tuple[str, Any], ...]) -> None:
    # Once a device is initialised its queue has run and new seeds apply at once; putting the
    # queue back then changes nothing.
    for name, (seed_all_cb, seed_cb, call_order) in queues:
        tracker = _lazy_seed_tracker(name)
        if tracker is not None:
            tracker.manual_seed_all_cb = seed_all_cb
            tracker.manual_seed_cb = seed_cb
            tracker.call_order = list(call_order)


@contextmanager
def torch_rng_kept() -> Iterator[None]:
    """Put torch's global generators back after a block that seeds them: the CPU one, every
    CUDA device's where CUDA is initialised, and the seeds queued for devices that are not.

    ``torch.random.fork_rng(devices=[])`` keeps the CPU generator alone, while
    ``torch.manual_seed`` inside the block seeds every CUDA device too (or queues the seed for
    CUDA's first use), which the caller's next CUDA draw would then start from. numpy's and
    python's generators are left to the block.
    """
    state = RngState.capture()
    try:
        yield
    finally:
        state.restore_torch()


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's, numpy's and python's global generators with ``seed`` for the block, and
    put all of them back afterwards (torch's devices as :func:`torch_rng_kept` does).

    For a run that must be a function of its seed whatever ran before it: a data pipeline or a
    model builder may draw from any of the three.
    """
    state = RngState.capture()
    try:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        state.restore()


def _mps_available() -> bool:
    try:
        return bool(torch.backends.mps.is_available())
    except Exception:  # a build without the MPS backend module
        return False


def rng_state() -> RngState:
    """Capture the torch (CPU and CUDA), numpy and python RNG states; see :class:`RngState`."""
    return RngState.capture()


def set_rng_state(state: RngState) -> None:
    """Restore RNG states captured by :func:`rng_state`."""
    if not isinstance(state, RngState):
        raise TypeError(
            f"state must be an RngState from rng_state(), but got type {type(state).__name__}"
        )
    state.restore()


# (module, "_parameters" or "_buffers", name, the tensor registered there or None)
_Slot = tuple[nn.Module, str, str, "torch.Tensor | None"]


class ModelSnapshot:
    """One copy of a model's weights and the state around them, to put back after a probe.

    Taken at construction: every parameter and buffer (including non-persistent buffers;
    shared or tied tensors are copied once, so the snapshot costs at most one extra copy of the
    weights), which tensor object each module slot holds (``None`` slots included),
    ``requires_grad`` and ``.grad`` of each parameter (cloned, and the gradient tensor itself
    kept: its values go back into it, so a gradient that is a view into a flat buffer stays
    one, at the cost of the gradients staying allocated beside their clone; with
    ``snapshot_device`` elsewhere than the gradient, only the clone is kept and a new tensor
    comes back, so that the gradients hold no memory on their device meanwhile),
    ``.training`` of every submodule, the RNG states (:class:`RngState`), and which object
    each of a module's own attributes is bound to (a counter, a cache, a flag a forward sets;
    references only, nothing copied). Nothing is written to disk.

    Restoring copies the values back *into the same tensor objects*, under ``torch.no_grad()``,
    so an optimizer holding the parameters stays valid and ``model.weight is weight`` still
    holds. A slot that was rebound during the probe is pointed back at its original tensor,
    and so is a module attribute (an attribute a forward added is taken away again, unless its
    name starts with ``_``); a plain tensor attribute (not a parameter or buffer) changed in
    place cannot be put back and is named in a warning.
    Between bursts (:meth:`restore_weights`) the values go wherever the tensors are now, so a
    model moved to a GPU for the probe stays there; :meth:`restore_all` also gives a tensor
    whose dtype, device or layout was changed (``model.half()``, ``model.cuda()``) its
    original data back. Copies of values are bitwise.

    The optimizer's state is not part of the snapshot.

    Args:
        model:
            The model to snapshot.
        snapshot_device:
            Where to keep the copy. ``None`` keeps each tensor's copy on that tensor's device
            (fastest); ``"cpu"`` keeps it in host memory, so a GPU model does not need room for
            twice its weights on the GPU.
        cuda_rng:
            Capture the CUDA generators even if CUDA is not initialised yet (for a CPU model
            about to be moved to a GPU); see :meth:`RngState.capture`.
        what:
            How errors name the module ("the model", "the criterion module...").

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``snapshot_device`` is not a valid device or cannot hold data
            (``"meta"``), or if the model holds inference tensors (made under
            ``torch.inference_mode()``), which cannot be written back in place.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        snapshot_device: torch.device | str | None = None,
        cuda_rng: bool = False,
        what: str = "the model",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, but got type {type(model).__name__}"
            )
        self._device = as_device(snapshot_device)
        if self._device is not None and self._device.type == "meta":
            raise ValueError(
                "snapshot_device='meta' cannot hold the copy of the weights (a meta tensor has "
                "no data, so nothing could be restored from it); pass snapshot_device='cpu', "
                "or None to keep the copy on the model's device"
            )
        refuse_unsupported_model(model, what)
        _refuse_inference_tensors(model, what)
        self._modules = list(model.modules())  # shared submodules appear once
        self._training = [module.training for module in self._modules]
        self._slots: list[_Slot] = [
            (module, kind, name, tensor)
            for module in self._modules
            for kind in ("_parameters", "_buffers")
            for name, tensor in getattr(module, kind).items()
        ]
        # the names each module had, so that a parameter or buffer registered since (a forward
        # that registers one from the first batch it sees) is taken away again
        self._names = [
            (module, kind, frozenset(getattr(module, kind)))
            for module in self._modules
            for kind in ("_parameters", "_buffers", "_modules")
        ]
        self._tensors: list[torch.Tensor] = []
        seen: set[int] = set()
        for _, _, _, tensor in self._slots:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                self._tensors.append(tensor)
        self._meta = [_meta(tensor) for tensor in self._tensors]
        with torch.no_grad():
            self._copies = [self._copy(tensor) for tensor in self._tensors]
            self._params = [t for t in self._tensors if isinstance(t, nn.Parameter)]
            self._requires_grad = [p.requires_grad for p in self._params]
            self._grads = [None if p.grad is None else self._copy(p.grad) for p in self._params]
            # The gradient tensors themselves, to put the values back into (a view into a flat
            # buffer stays one); not with a snapshot on another device, which the caller asked
            # for to keep that device's memory free (the gradient then comes back as a copy).
            self._grad_objects = [
                p.grad
                if self._device is None or p.grad is None or p.grad.device == self._device
                else None
                for p in self._params
            ]
        self._attrs = [(module, _own_attributes(module)) for module in self._modules]
        self._plain = _plain_tensors(model, self._attrs, self._tensors)
        # A module's own torch.Generator (a noise source seeded with the model): every burst
        # starts it where it was, as it starts the weights, and the end puts it back.
        own_generators = {
            id(value): value
            for _, saved in self._attrs
            for value in saved.values()
            if isinstance(value, torch.Generator)
        }
        self._generators = [(g, g.get_state()) for g in own_generators.values()]
        self._rng = RngState.capture(include_cuda=cuda_rng)
        self._aliases = _spectral_aliases(self._modules)
        self._released = False

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        device = tensor.device if self._device is None else self._device
        return tensor.detach().to(device=device, copy=True)

    @property
    def rng(self) -> RngState:
        """The RNG states captured with the snapshot."""
        return self._rng

    @property
    def nbytes(self) -> int:
        """Memory held by the copies of weights and gradients, in bytes."""
        tensors = [*self._copies, *(g for g in self._grads if g is not None)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def restore_weights(self) -> None:
        """Copy the saved parameters and buffers back into the model, in place and bitwise.

        Used between probe bursts. The values go into the tensors where they are now: a model
        moved to another device after the snapshot stays there (a model whose dtype was changed
        gets the saved values cast to it). A ``torch.Generator`` a module keeps as an attribute
        goes back to its state too, so every burst draws the same noise from it.
        ``requires_grad``, modes, gradients and the global RNG states are left as they are;
        :meth:`restore_all` restores those, and the original dtypes and devices, too. Every
        tensor is tried even if one fails; the first error is raised after.
        """
        self._restore_weights(exact=False)
        self._restore_generators()

    def _restore_generators(self) -> None:
        for generator, state in self._generators:
            generator.set_state(state)

    @property
    def was_training(self) -> bool:
        """The model's own ``.training`` when the snapshot was taken."""
        self._check_live()
        return self._training[0]  # model.modules() yields the model first

    def restore_modes(self) -> None:
        """Set every submodule's ``.training`` back to what it was at the snapshot."""
        self._check_live()
        for module, training in zip(self._modules, self._training, strict=True):
            module.training = training

    def restore_all(self) -> None:
        """Restore the weights (with their original dtype and device), ``requires_grad``,
        ``.training``, ``.grad``, the modules' own generators and the global RNG states.

        Every part is restored even if an earlier one fails (each tensor, each module, each
        parameter's gradient, the RNG states); the first error is raised afterwards.
        """
        self._check_live()
        errors: list[BaseException] = []
        errors += self._restore_weights(exact=True, raise_first=False)
        _attempt(errors, self.restore_modes)
        _attempt(errors, self._restore_attributes)
        for module in self._modules:
            _attempt(errors, _recompute_reparametrised, module, self._aliases)
        for param, requires_grad, grad, obj in zip(
            self._params, self._requires_grad, self._grads, self._grad_objects, strict=True
        ):
            _attempt(errors, _restore_grad, param, requires_grad, grad, obj)
        _attempt(errors, self._restore_generators)
        _attempt(errors, self._rng.restore)
        if errors:
            raise errors[0]

    def _restore_attributes(self) -> None:
        # Rebound attributes go back to their objects; public ones a forward added go away (a
        # name starting with "_" may be a library's lazily made internal, and is left).
        for module, saved in self._attrs:
            current = vars(module)
            added = [n for n in current if n not in saved and n not in _MODULE_INTERNALS]
            for name in [n for n in added if not n.startswith("_")]:
                del current[name]
            for name, value in saved.items():
                if current.get(name, _MISSING) is not value:
                    current[name] = value
        changed = [name for name, tensor, version in self._plain if _version(tensor) != version]
        if changed:
            _log.warning(
                "the probe's forwards changed plain tensor attributes of the model in place "
                "(%s), which are not parameters or buffers and so are not in the snapshot: "
                "their values stay as the probe left them. Register them as buffers "
                "(self.register_buffer(name, tensor, persistent=False)) to have them restored.",
                ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else ""),
            )

    def _restore_weights(self, *, exact: bool, raise_first: bool = True) -> list[BaseException]:
        # Each tensor is restored even if another one fails; the errors are raised (the first)
        # or returned.
        self._check_live()
        errors: list[BaseException] = []
        for module, kind, names in self._names:
            slots = getattr(module, kind)
            for added in [name for name in slots if name not in names]:
                del slots[added]
                if kind == "_buffers":  # register_buffer(..., persistent=False) notes it here
                    getattr(module, "_non_persistent_buffers_set", set()).discard(added)
        for module, kind, name, tensor in self._slots:
            slots = getattr(module, kind)
            current = slots.get(name)
            if current is tensor:
                continue
            if (
                not exact
                and isinstance(tensor, torch.Tensor)
                and isinstance(current, torch.Tensor)
                and _converted(tensor, current)
            ):
                # model.to(device) / .double() after the snapshot gives every buffer a new
                # tensor: the original takes its place where it is now (its storage; the
                # saved values are copied in below), so the model stays on its new device.
                tensor.data = current.data
            slots[name] = tensor
        with torch.no_grad():
            for tensor, saved, meta in zip(self._tensors, self._copies, self._meta, strict=True):
                _attempt(errors, _restore_tensor, tensor, saved, meta, exact)
        if errors and raise_first:
            raise errors[0]
        return errors

    def release(self) -> None:
        """Drop the saved copies (and references to the model) to free their memory.

        The snapshot cannot restore after this. :func:`preserved` calls it on exit.
        """
        self._copies, self._grads, self._grad_objects, self._meta = [], [], [], []
        self._slots, self._tensors, self._params, self._modules = [], [], [], []
        self._names, self._attrs, self._plain = [], [], []
        self._generators = []
        self._aliases = set()
        self._released = True

    def _check_live(self) -> None:
        if self._released:
            raise RuntimeError("this ModelSnapshot was released and can no longer restore")


# nn.Module's own bookkeeping in a module's __dict__ (hook registries, the parameter and buffer
# dicts, the mode): restored through their own rules, or not the model's state
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_MISSING = object()


def _own_attributes(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}


def _storage_ptr(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # sparse, or no storage to point at
        return None


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:  # an inference tensor keeps no version counter
        return None


def _plain_tensors(
    model: nn.Module, attrs: list[tuple[nn.Module, dict[str, Any]]], owned: list[torch.Tensor]
) -> list[tuple[str, torch.Tensor, int | None]]:
    # The plain tensor attributes (not parameters or buffers, not views of one: those come
    # back with their base) and their version counters, to tell which a probe changed in place.
    weights = {_storage_ptr(t) for t in owned} - {None, 0}
    names = {id(m): n for n, m in model.named_modules()}
    return [
        (f"{names.get(id(module), '?')}.{name}".lstrip("."), value, _version(value))
        for module, saved in attrs
        for name, value in saved.items()
        if isinstance(value, torch.Tensor)
        and not isinstance(value, nn.Parameter)
        and _storage_ptr(value) not in weights
    ]


def _converted(original: torch.Tensor, current: torch.Tensor) -> bool:
    # `current` took `original`'s slot with its shape but another device or dtype: what
    # Module.to / .double() leave (a forward that reassigns a buffer keeps its old rebinding).
    return current.shape == original.shape and (current.device, current.dtype) != (
        original.device,
        original.dtype,
    )


def _attempt(errors: list[BaseException], fn: Any, *args: Any) -> None:
    # Run one restore step; an error (even a KeyboardInterrupt) is kept for later, so that the
    # steps after it still run.
    try:
        fn(*args)
    except BaseException as exc:  # re-raised by the caller once every step ran
        errors.append(exc)


def _restore_tensor(
    tensor: torch.Tensor,
    saved: torch.Tensor,
    meta: tuple[torch.dtype, torch.Size, torch.device, tuple[int, ...]],
    exact: bool,
) -> None:
    if (_meta(tensor) == meta) if exact else (tensor.shape == saved.shape):
        tensor.copy_(saved)
    else:  # converted since the snapshot (e.g. model.half()): give back its data
        device = meta[2] if exact else tensor.device
        tensor.data = saved.to(device=device, copy=True)


@contextmanager
def grads_kept(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Put back, when the block ends however it ends, each tensor's ``.grad`` (its values, in
    the same gradient tensor) and ``requires_grad``: for trainable tensors outside the model
    (a loss's learned temperature) that the block's backward passes reach but no optimizer
    steps."""
    saved = [
        (t, t.requires_grad, None if t.grad is None else t.grad.detach().clone(), t.grad)
        for t in tensors
    ]
    try:
        yield
    finally:
        errors: list[BaseException] = []
        for tensor, requires_grad, grad, original in saved:
            _attempt(errors, _restore_grad, tensor, requires_grad, grad, original)
        if errors:
            raise errors[0]


def _restore_grad(
    param: torch.Tensor,
    requires_grad: bool,
    grad: torch.Tensor | None,
    original: torch.Tensor | None,
) -> None:
    # The saved values go back into the original gradient tensor (a view into a flat buffer
    # stays one); a fresh copy only where that tensor can no longer be the parameter's.
    param.requires_grad_(requires_grad)
    if grad is None:
        param.grad = None
        return
    if original is not None and original.shape == grad.shape:
        try:
            with torch.no_grad():
                if original.device == param.device and original.dtype == grad.dtype:
                    original.copy_(grad)
                else:  # the model was moved (suggest(device=...)), and the gradient with it
                    original.data = grad.to(device=param.device, copy=True)
            param.grad = original
            return
        except (RuntimeError, TypeError):
            pass
    param.grad = grad.to(device=param.device, copy=True)


def refuse_unsupported_model(model: nn.Module, what: str = "the model") -> None:
    """Refuse, with what to pass instead, a model whose weights cannot be copied and put back:
    a TorchScript module, or one with lazy parameters not yet initialised."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "the model is a TorchScript module (torch.jit.script or torch.jit.trace), whose "
            "parameters cannot be snapshotted and restored: pass the eager nn.Module it was "
            "made from (probe it before scripting, then script the trained model)"
        )
    lazy = [
        name
        for name, p in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
        if nn.parameter.is_lazy(p)
    ]
    if lazy:
        raise ValueError(
            f"{what} has lazy parameters or buffers not yet initialised ({', '.join(lazy[:3])}"
            f"{', ...' if len(lazy) > 3 else ''}): run one forward pass on a batch first "
            "(model(inputs)), so that their shapes are known, then probe"
        )


def _refuse_inference_tensors(model: nn.Module, what: str = "the model") -> None:
    # An inference tensor (made under torch.inference_mode()) cannot be updated in place
    # outside that mode, so the weights could be neither trained nor put back.
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    bad = [name for name, tensor in named if tensor.is_inference()]
    if bad:
        raise ValueError(
            f"{what} holds inference tensors ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}), made under torch.inference_mode(): they "
            "cannot be trained or restored in place; build or load the model outside "
            "torch.inference_mode() (torch.no_grad() is fine), or give each one a normal copy "
            "first (for t in [*model.parameters(), *model.buffers()]: t.data = t.data.clone())"
        )


def _spectral_aliases(modules: list[nn.Module]) -> set[tuple[int, str]]:
    # A legacy spectral_norm module that has not run a forward yet holds weight_orig's own
    # data as ``module.weight`` (not yet divided by sigma): which ones, as (id, name).
    out = set()
    for module in modules:
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                plain, orig = getattr(module, hook.name), getattr(module, hook.name + "_orig")
                if isinstance(plain, torch.Tensor) and plain.data_ptr() == orig.data_ptr():
                    out.add((id(module), hook.name))
    return out


def _recompute_reparametrised(module: nn.Module, spectral_aliases: set[tuple[int, str]]) -> None:
    # torch.nn.utils.prune and the legacy weight_norm and spectral_norm keep ``module.weight``
    # as a plain attribute that a forward pre-hook rebuilds from parameters and buffers
    # (weight_orig * weight_mask; g * v / |v|; weight_orig / u.W v): rebuilt from the restored
    # ones, it is again what it was before the probe's forwards, instead of waiting for the
    # user's next forward. Spectral norm's is rebuilt without a power iteration (u and v are
    # restored as they were after the last forward), or is weight_orig's data again if no
    # forward had run.
    for hook in list(module._forward_pre_hooks.values()):
        if isinstance(hook, prune.BasePruningMethod):
            setattr(module, hook._tensor_name, hook.apply_mask(module))  # type: ignore[no-untyped-call]
        elif isinstance(hook, WeightNorm):
            setattr(module, hook.name, hook.compute_weight(module))
        elif isinstance(hook, SpectralNorm):
            if (id(module), hook.name) in spectral_aliases:
                setattr(module, hook.name, getattr(module, hook.name + "_orig").data)
            else:
                setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=False))


def _meta(tensor: torch.Tensor) -> tuple[torch.dtype, torch.Size, torch.device, tuple[int, ...]]:
    return tensor.dtype, tensor.shape, tensor.device, tensor.stride()


def as_device(
    device: torch.device | str | int | None, name: str = "snapshot_device"
) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays ``None``).

    Raises:
        ValueError: neither a ``torch.device`` nor a name torch reads as one (``'gpu'``);
            the message names the argument ``name``.
    """
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, (str, int)) and not isinstance(device, bool):  # 0: 'cuda:0'
        try:
            return torch.device(device)
        except RuntimeError:
            pass
    raise ValueError(
        f"{name} must be None, a device name such as 'cpu', 'cuda', 'cuda:1' or 'mps', an "
        f"accelerator's index, or a torch.device, but got {name}={device!r}"
    )


@contextmanager
def preserved(
    model: nn.Module,
    *,
    snapshot_device: torch.device | str | None = None,
    cuda_rng: bool = False,
    what: str = "the model",
) -> Iterator[ModelSnapshot]:
    """Snapshot ``model`` and put everything back when the block ends, however it ends.

    On normal exit, on an exception and on ``KeyboardInterrupt`` alike, :meth:`ModelSnapshot.
    restore_all` runs and the snapshot is then released, so its copy does not outlive the
    block.

    Args:
        model:
            The model to protect.
        snapshot_device:
            Where to keep the copy; see :class:`ModelSnapshot`.
        cuda_rng:
            Capture the CUDA generators even before CUDA is initialised; see
            :meth:`RngState.capture`.
        what:
            How errors name the module; see :class:`ModelSnapshot`.

    Yields:
        The snapshot, whose :meth:`~ModelSnapshot.restore_weights` resets the weights between
        bursts.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> before = model.weight.detach().clone()
        >>> with preserved(model):
        ...     with torch.no_grad():
        ...         _ = model.weight.add_(1.0)
        >>> torch.equal(model.weight, before)
        True
    """
    snapshot = ModelSnapshot(model, snapshot_device=snapshot_device, cuda_rng=cuda_rng, what=what)
    grad_enabled = torch.is_grad_enabled()
    try:
        yield snapshot
    finally:
        try:
            _restore_through_interrupts(snapshot)
        finally:
            # a KeyboardInterrupt inside a no_grad block of the restore leaves grad mode off
            torch.set_grad_enabled(grad_enabled)
            snapshot.release()


def _restore_through_interrupts(snapshot: ModelSnapshot, tries: int = 3) -> None:
    # A second Ctrl-C that lands in the restore (the user pressing it again) would leave the
    # model half restored: each restore step keeps its error and the others run, but the
    # interrupted one is lost. The restore is idempotent, so it runs again (the interrupt is
    # raised once it is whole); an error of another kind is raised as it comes.
    interrupt: KeyboardInterrupt | None = None
    for _ in range(tries):
        try:
            snapshot.restore_all()
            break
        except KeyboardInterrupt as exc:
            interrupt = exc
    if interrupt is not None:
        raise interrupt


def loss_modules(*losses: object, model: nn.Module) -> list[nn.Module]:
    """The modules outside ``model`` that ``loss_fn``/``criterion`` hold, whose state the
    probe's training changes: a criterion that is an ``nn.Module`` (with or without tensors: a
    step counter is state too), a bound method of one, a ``functools.partial`` holding one, a
    module a function (a lambda, a nested function) captures or reads by name from its
    module's globals, an attribute of a callable object. One level deep. One that holds the
    model itself (a wrapper's bound method) is left out: its snapshot would copy the model's
    weights a second time."""
    own = {id(t) for t in (*model.parameters(), *model.buffers())}
    found: dict[int, nn.Module] = {}
    for loss in losses:
        held = [loss, getattr(loss, "__self__", None)]
        if isinstance(loss, functools.partial):
            held += [loss.func, getattr(loss.func, "__self__", None), *loss.args]
            held += list(loss.keywords.values())
        held += _captured(loss)
        if isinstance(loss, functools.partial):
            held += _captured(loss.func)
        for obj in held:
            if isinstance(obj, nn.Module) and obj is not model and id(obj) not in found:
                tensors = {id(t) for t in (*obj.parameters(), *obj.buffers())}
                if not tensors & own:
                    found[id(obj)] = obj
    return list(found.values())


def _captured(fn: object) -> list[object]:
    # What a function's closure cells hold, the modules it reads by name from its module's
    # globals, and the attributes of a callable object or function (not a module's: its
    # submodules are in its own snapshot; not a class's).
    code_fn = getattr(fn, "__func__", fn)  # a bound method's function
    cells = getattr(code_fn, "__closure__", None) or ()
    out: list[object] = []
    for cell in cells:
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell (a name not yet bound)
            continue
    code = getattr(code_fn, "__code__", None)
    names = getattr(code, "co_names", ())
    space = getattr(code_fn, "__globals__", None)
    if isinstance(space, dict):  # the module-level names the function reads
        out += [space[n] for n in names if isinstance(space.get(n), nn.Module)]
    attrs = getattr(fn, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(fn, (nn.Module, type)):
        out += list(attrs.values())
    return out
