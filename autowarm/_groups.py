"""Parameter groups for the probe: the real run's groups, at LRs in fixed ratios.

A real run often trains its parameters in groups: no weight decay on biases and norms, a
pretrained backbone at a tenth of the head's LR (discriminative LRs). The probe trains with the
same groups, each at ``lr_scale`` times the LR it is trying; the suggested ``peak_lr`` is the LR
of a group whose scale is 1, and ``schedule.lambda_lr(optimizer)`` on an optimizer built from
the same groups (torch keeps their ``lr_scale`` keys) applies it to every group with the same
ratios.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autowarm._checks import is_finite_real, is_real

__all__ = [
    "GroupSpec",
    "ParamGroups",
    "build_checked",
    "optimizer_default",
    "resolve_param_groups",
    "second_moment_beta",
]

#: What ``suggest(param_groups=...)`` takes: a list of group dicts, or a function of the model
#: returning them (called once, before the probe's first step).
ParamGroups = Sequence[Mapping[str, Any]] | Callable[[nn.Module], Iterable[Mapping[str, Any]]]

# Keys a group may not carry: the probe sets every group's LR itself.
_LR_KEYS = ("lr", "initial_lr")


@dataclass(frozen=True)
class GroupSpec:
    """One parameter group as the probe builds it for every burst's fresh optimizer."""

    params: tuple[nn.Parameter, ...]
    options: Mapping[str, Any]  # the group's own optimizer settings (weight_decay, betas, ...)
    lr_scale: float  # the group trains at lr_scale x the probe's LR

    def as_group(self) -> dict[str, Any]:
        """A fresh dict for the optimizer (which writes its defaults into the dicts it gets)."""
        return {**self.options, "params": list(self.params)}


def resolve_param_groups(
    spec: ParamGroups,
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    optimizer_kwargs: Mapping[str, Any],
) -> list[GroupSpec]:
    """Check the user's groups against the model and the optimizer, before any training.

    Each group is a mapping with ``"params"`` (the model's parameters: a tensor or an iterable
    of them), optionally ``"lr_scale"`` (a positive float, default 1) and any per-group
    setting the optimizer takes (``weight_decay``, ``betas``, ...); not ``"lr"``.

    Raises:
        TypeError: ``spec`` is neither a sequence of mappings nor a callable returning one,
            or it is a list that holds a one-shot iterator (``model.parameters()``, a
            generator): only a function of the model may return those.
        ValueError: a group with an LR, ``maximize=True``, an unknown setting, a tensor that
            is not one of the model's parameters, a parameter in two groups, no trainable
            parameter, a bad ``lr_scale``.
    """
    raw: object = spec(model) if callable(spec) else spec
    if isinstance(raw, (Mapping, str, bytes)) or not isinstance(raw, Iterable):
        raise TypeError(
            "param_groups must be a list of dicts such as [{'params': [...], 'weight_decay': "
            "0.0}, ...], or a function of the model returning one, but got "
            f"{type(raw).__name__}"
        )
    # A list the caller keeps (to build the real run's optimizer from it afterwards) must not
    # hold one-shot iterators: reading them here would leave that optimizer's groups empty,
    # which torch accepts without a word. A function of the model makes fresh ones each call.
    one_shot = not callable(spec)
    if one_shot and _is_iterator(raw):
        raise TypeError(_ONE_SHOT.format(what="param_groups", kind=type(raw).__name__))
    # Every name of each parameter: a tied one (a decoder sharing the embedding) has several.
    owned: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owned.setdefault(id(param), []).append(name)
    seen: dict[int, int] = {}
    groups: list[GroupSpec] = []
    for i, group in enumerate(raw):
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(
                f"param_groups[{i}] must be a dict with a 'params' entry, but got "
                f"{type(group).__name__}"
                + (f" with keys {sorted(map(str, group))}" if isinstance(group, Mapping) else "")
            )
        bad = [k for k in _LR_KEYS if k in group]
        if bad:
            # torch's optimizers write 'lr' and every other default into the dicts they are
            # built from ('differentiable' among them, which a user hardly sets by hand)
            written = (
                " (if you did not set it: an optimizer built from these dicts wrote its "
                "settings into them; pass fresh dicts, e.g. a copy.deepcopy() taken before "
                "building it, or param_groups as a function of the model)"
                if "differentiable" in group
                else ""
            )
            raise ValueError(
                f"param_groups[{i}] sets {bad[0]!r}, but the probe chooses the LR: give the "
                "group's LR as a ratio to the peak, 'lr_scale' (e.g. 0.1 for a backbone at a "
                "tenth of the head's LR); s.schedule.lambda_lr(optimizer) on an optimizer "
                f"built from the same groups reads it{written}"
            )
        if group.get("maximize"):
            # As for optimizer_kwargs: the probe reads a falling loss as progress.
            raise ValueError(
                f"param_groups[{i}] sets maximize=True, but the probe needs a loss to minimise: "
                "negate the objective in loss_fn and leave maximize out"
            )
        scale = group.get("lr_scale", 1.0)
        if not is_real(scale):
            raise ValueError(f"param_groups[{i}]['lr_scale'] must be a float, got {scale!r}")
        if not (is_finite_real(scale) and scale > 0):
            raise ValueError(
                f"param_groups[{i}]['lr_scale'] must be a finite float > 0, but got {scale!r} "
                "(to keep a group from training, leave it out or set requires_grad=False)"
            )
        items = group["params"]
        if one_shot and _is_iterator(items):
            raise TypeError(
                _ONE_SHOT.format(what=f"param_groups[{i}]['params']", kind=type(items).__name__)
            )
        if isinstance(items, nn.Module):
            raise TypeError(
                f"param_groups[{i}]['params'] is a {type(items).__name__} module, not its "
                "parameters: pass module.parameters() (or module.named_parameters())"
            )
        try:
            params = [items] if isinstance(items, torch.Tensor) else list(items)
        except TypeError:
            raise TypeError(
                f"param_groups[{i}]['params'] must be a parameter or an iterable of "
                f"parameters (module.parameters()), but got {_describe(items)}"
            ) from None
        # (name, parameter) pairs, as model.named_parameters() yields and torch's optimizers
        # take since torch 2.6: the probe needs the parameters only.
        params = [p[1] if _is_named(p) else p for p in params]
        for p in params:
            if not isinstance(p, torch.Tensor) or id(p) not in owned:
                raise ValueError(
                    f"param_groups[{i}] holds {_describe(p)}, which is not a parameter of the "
                    "model: the probe trains and restores only the model's own parameters; "
                    "take them from model.parameters() or model.named_parameters()"
                )
            if id(p) in seen:
                names = owned[id(p)]
                what = f"parameter {names[0]!r}" + (
                    f" (tied: the same tensor as {', '.join(map(repr, names[1:]))})"
                    if len(names) > 1
                    else ""
                )
                where = (
                    f"twice in param_groups[{i}]: list it once"
                    if seen[id(p)] == i
                    else f"in param_groups[{seen[id(p)]}] and param_groups[{i}]: put it in one "
                    "group"
                )
                raise ValueError(f"{what} is {where}")
            seen[id(p)] = i
        options = {k: v for k, v in group.items() if k not in ("params", "lr_scale")}
        groups.append(GroupSpec(tuple(params), options, float(scale)))  # type: ignore[arg-type]
    if not any(p.requires_grad for g in groups for p in g.params):
        raise ValueError(
            "param_groups holds no parameter with requires_grad=True: give the groups of the "
            "parameters that train"
        )
    _check_options(groups, optimizer_cls, optimizer_kwargs)
    return groups


def _is_named(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )


def build_checked(
    optimizer_cls: type[torch.optim.Optimizer],
    params: list[Any],
    optimizer_kwargs: Mapping[str, Any],
    context: str = "",
) -> torch.optim.Optimizer:
    """``optimizer_cls(params, lr=1e-3, **optimizer_kwargs)``, built before any training so
    that settings the optimizer refuses are said at once, not after the first batch's forward
    pass. Building allocates no state and touches no parameter.

    Raises:
        ValueError: the optimizer refused the settings; the message names them (and the
            setting a misspelt keyword meant, where one is close).
    """
    try:
        return optimizer_cls(params, lr=1e-3, **optimizer_kwargs)  # type: ignore[call-arg]
    except (TypeError, ValueError, AssertionError) as exc:
        hint = ""
        if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
            import difflib
            import inspect

            try:
                accepted = list(inspect.signature(optimizer_cls).parameters)
            except (TypeError, ValueError):
                accepted = []
            for key in optimizer_kwargs:
                close = difflib.get_close_matches(str(key), accepted, n=1)
                if key not in accepted and close:
                    hint += f" ({key!r}: did you mean {close[0]!r}?)"
        raise ValueError(
            f"{optimizer_cls.__name__} refused its settings (optimizer_kwargs "
            f"{dict(optimizer_kwargs)!r}{context}): {exc}{hint}"
        ) from None


def _check_options(
    groups: list[GroupSpec],
    optimizer_cls: type[torch.optim.Optimizer],
    optimizer_kwargs: Mapping[str, Any],
) -> None:
    # torch.optim keeps any key of a group without a word, so a misspelt 'weight_decya' would
    # train without decay; the optimizer's own defaults name the settings it reads. Building
    # it allocates no state and touches no parameter. torch's own optimizers read nothing
    # else, so another key is an error there; a third-party optimizer may read group keys
    # of its own (Muon's 'use_muon'), so there it is a warning.
    optimizer = build_checked(
        optimizer_cls, [g.as_group() for g in groups], optimizer_kwargs, " with the param_groups"
    )
    # 'name' labels a group (Lightning's LearningRateMonitor reads it); torch keeps it as is
    known = set(optimizer.defaults) | {"name"}
    strict = optimizer_cls.__module__.startswith("torch.optim")
    for i, g in enumerate(groups):
        unknown = sorted(set(g.options) - known)
        if not unknown:
            continue
        message = (
            f"param_groups[{i}] sets {unknown}, which {optimizer_cls.__name__} does not "
            f"list among its settings ({sorted(known - {'lr', 'name'})}); 'lr_scale' sets the "
            "group's LR ratio"
        )
        if strict:
            raise ValueError(message.replace("does not list among", "does not read: not in"))
        warnings.warn(message + "; passed on as given", UserWarning, stacklevel=4)


_ONE_SHOT = (
    "{what} is a one-shot {kind}: the probe would use it up, and an optimizer built from the "
    "same list afterwards would get no parameters there (torch does not complain); pass "
    "list(...) of it, or param_groups as a function of the model returning the groups"
)


def _is_iterator(x: object) -> bool:
    return isinstance(x, Iterator)  # a generator, model.parameters(), iter(...)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def optimizer_default(cls: Callable[..., Any], name: str) -> Any:
    """The default of keyword ``name`` in ``cls(...)``'s signature, or None if it has none."""
    import inspect

    try:
        param = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):  # no signature to read (a builtin's)
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def second_moment_beta(
    optimizer_cls: Callable[..., torch.optim.Optimizer],
    kwargs: Mapping[str, Any],
    groups: Sequence[GroupSpec] | None = None,
) -> float | None:
    """The ``beta2`` the probe reads for an optimizer, or None for one without ``betas`` (SGD).

    ``kwargs["betas"]``, else the class's default (Adam, AdamW: ``(0.9, 0.999)``); with groups
    carrying betas of their own, the largest, whose second moment settles last (the monitor's
    effective sample count is the least over the groups too). The suggestion's report and the
    study's ``2/(1-beta2)`` reference trial both use this one reading.
    """
    betas = kwargs.get("betas")
    if betas is None:
        betas = optimizer_default(optimizer_cls, "betas")
    per_group = [g.options.get("betas", betas) for g in groups] if groups else [betas]
    found = [b2 for b2 in map(_second_beta, per_group) if b2 is not None]
    return max(found) if found else None


def _second_beta(betas: object) -> float | None:
    try:
        return float(betas[1])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return None
