"""Adam's second moment, watched on a fixed random subset of coordinates.

Adam keeps :math:`v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2` per coordinate
(``optimizer.state[p]["exp_avg_sq"]``, stored without the bias correction) and divides by
:math:`1 - \\beta_2^t`. Early on that estimate rests on few samples and lags a gradient scale
that is still moving; :class:`SecondMomentMonitor` measures both, on the real model and data,
after every (or every k-th) ``optimizer.step()``. See Liu et al. (2020, RAdam) and Ma &
Yarats (2021).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from torch.utils.hooks import RemovableHandle

__all__ = ["MomentStats", "SecondMomentMonitor", "has_second_moment"]

_logger = logging.getLogger(__name__)

# Optimizer classes (matched anywhere in the MRO, so subclasses count) whose state holds an
# ``exp_avg_sq`` EMA of squared gradients. Adamax keeps ``exp_inf`` (an infinity norm) and
# bitsandbytes' 8-bit Adam keeps a quantised ``state2``: neither is listed.
_SECOND_MOMENT_CLASSES = frozenset(
    {
        "Adam",  # torch.optim
        "AdamW",  # torch.optim, transformers (deprecated copy)
        "NAdam",  # torch.optim
        "RAdam",  # torch.optim
        "SparseAdam",  # torch.optim (sparse gradients: the monitor skips them)
        "FusedAdam",  # apex, DeepSpeed
        "FusedLAMB",  # apex
        "Lamb",  # timm
        "AdamP",  # clovaai / timm
    }
)


def _meta(unit: str, description: str) -> dict[str, str]:
    return {"unit": unit, "description": description}


def has_second_moment(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` keeps Adam's second moment ``exp_avg_sq`` in a form the probe reads.

    After at least one step the optimizer's state decides: ``True`` when any parameter's state
    holds an ``exp_avg_sq`` shaped like the parameter, in a param group with Adam's ``betas``
    (transformers' ``Adafactor``, whose ``exp_avg_sq`` is factored or has no ``betas``, and
    optimizers keeping one second moment per tensor give ``False``). Before the first step the
    state is empty, so the decision falls back on the class name, matched anywhere in the MRO:
    ``Adam``, ``AdamW``, ``NAdam``, ``RAdam``, ``SparseAdam``, ``FusedAdam``, ``FusedLAMB``,
    ``Lamb``, ``AdamP``. ``Adamax`` (``exp_inf``, an infinity norm, not a second moment), SGD,
    Adagrad and unknown classes give ``False`` before their first step; an unlisted Adam-like
    optimizer is recognised once it has stepped.

    Args:
        optimizer:
            Any ``torch.optim.Optimizer``.

    Returns:
        ``True`` when the optimizer keeps an ``exp_avg_sq`` state the probe can read.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> has_second_moment(torch.optim.AdamW([w])), has_second_moment(torch.optim.SGD([w]))
        (True, False)
    """
    stepped = False
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)  # .get: never add keys to the defaultdict
            if st:
                stepped = True
                if _readable(st, p) and _group_beta2(group) is not None:
                    return True
    if stepped:
        return False
    return any(c.__name__ in _SECOND_MOMENT_CLASSES for c in type(optimizer).__mro__)


def _readable(state: Mapping[str, Any], param: torch.Tensor) -> bool:
    # Adam's layout: an exp_avg_sq per coordinate, shaped like the parameter. Adafactor keeps
    # one only for 1-D tensors (factored rows and columns for the others), NovoGrad-style
    # optimizers one per tensor: such states cannot be read coordinate by coordinate.
    v = state.get("exp_avg_sq")
    return isinstance(v, torch.Tensor) and v.shape == param.shape


def _group_beta2(group: Mapping[str, Any]) -> float | None:
    # beta2 of an Adam-style param group (``betas=(beta1, beta2)``), or None where the group
    # has none that reads as a number in [0, 1) (transformers' Adafactor: ``decay_rate``).
    betas = group.get("betas")
    try:
        b2 = float(betas[1])  # type: ignore[index]
    except (TypeError, IndexError, KeyError, ValueError, RuntimeError):
        return None
    return b2 if 0.0 <= b2 < 1.0 else None


@dataclass(frozen=True)
class MomentStats:
    """Second-moment statistics of one optimizer update, on the sampled coordinates.

    Every field is a plain ``int`` or ``float`` (``nan`` where undefined); see
    :class:`SecondMomentMonitor` for the exact definitions.
    """

    update: int = field(metadata=_meta("count", "index of this observation in the burst, from 0"))
    step: int = field(metadata=_meta("steps", "Adam's step count t (max over sampled tensors)"))
    beta2: float = field(metadata=_meta("1", "Adam's beta2 of the tensors read (the largest)"))
    n_coords: int = field(metadata=_meta("count", "sampled coordinates that took this update"))
    vhat_mean: float = field(
        metadata=_meta("grad^2", "mean bias-corrected second moment exp_avg_sq/(1-beta2^t)")
    )
    g2_mean: float = field(metadata=_meta("grad^2", "mean squared gradient of this update"))
    drift: float = field(
        metadata=_meta("ratio", "size-weighted median over tensors of short-EMA(g^2) / v_hat")
    )
    vhat_change: float = field(
        metadata=_meta("ratio", "||v_hat_t - v_hat_{t-1}||_1 / ||v_hat_{t-1}||_1, over one step")
    )
    kappa: float = field(metadata=_meta("ratio", "median over coordinates of Var(g^2)/E[g^2]^2"))
    n_eff: float = field(
        metadata=_meta("samples", "effective samples in v_hat (min over sampled tensors)")
    )
    rel_error: float = field(metadata=_meta("ratio", "sqrt(kappa / n_eff)"))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


@dataclass
class _Entry:
    param: torch.Tensor
    group: int
    index: torch.Tensor  # flat (row-major) coordinates, on param.device
    start: int  # offset of this tensor's coordinates in the sample vectors
    count: int
    slot: int  # position among the sampled tensors


def _allocate(sizes: list[int], max_coords: int) -> list[int]:
    # Proportional to size with at least one per tensor; the total stays <= max_coords unless
    # there are more tensors than max_coords, in which case one per tensor wins.
    total, n_tensors = sum(sizes), len(sizes)
    if total <= max_coords:
        return list(sizes)
    if n_tensors >= max_coords:
        return [1] * n_tensors
    spare = max_coords - n_tensors
    return [min(n, 1 + (spare * n) // total) for n in sizes]


def _trainable(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, int]]:
    return [
        (p, gi)
        for gi, group in enumerate(optimizer.param_groups)
        for p in group["params"]
        if p.requires_grad
    ]


def _check_optimizer(optimizer: object) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "optimizer must be a torch.optim.Optimizer, "
            f"but got optimizer of type {type(optimizer).__name__}"
        )
    return optimizer


def _step_value(step: object) -> float | torch.Tensor:
    # A CPU step (torch's default) is read on the host for free; a step kept on an accelerator
    # (capturable / fused Adam) stays there so that reading it costs no extra sync.
    if isinstance(step, torch.Tensor):
        return float(step) if step.device.type == "cpu" else step.detach()
    return float(step)  # type: ignore[arg-type]


def _step_of(state: dict[str, Any], group: dict[str, Any], observed: int) -> object:
    # torch's Adam keeps the update count in each parameter's state; timm's Lamb, apex's and
    # DeepSpeed's FusedAdam keep it in the param group (DeepSpeed's per-parameter "step" can
    # stay at 0 for all but one tensor). Without either, the calls to update() since the
    # monitor was attached count the updates (update() runs after every step).
    for step in (state.get("step"), group.get("step")):
        if step is None:
            continue
        if isinstance(step, torch.Tensor) and step.device.type != "cpu":
            return step  # read on the device: no sync; a capturable step is never 0 here
        if float(step) > 0:
            return step
    return float(observed)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    # Flat row-major coordinates: index_select on the flat view when contiguous (fastest);
    # torch.take otherwise, which reads strides and never copies the whole tensor. A complex
    # tensor is read by its real parts (Adam treats real and imaginary parts as coordinates of
    # their own; the real halves are a sample of them), without torch's cast warning.
    if t.is_complex():
        t = t.real
    if t.is_contiguous():
        return torch.index_select(t.view(-1), 0, index)
    return torch.take(t, index)


def _gather_into(t: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    # _gather written into `out` (float32, on the monitor's device): straight into it when `t`
    # is a contiguous float32 tensor on that device (the usual case), else through a copy
    # that converts the dtype and moves the device, as `.to` did.
    if (
        not t.is_complex()
        and t.dtype == out.dtype
        and t.device == out.device
        and t.is_contiguous()
    ):
        torch.index_select(t.view(-1), 0, index, out=out)
    else:
        out.copy_(_gather(t, index))


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # Lower weighted median of the finite values; nan when none. On-device, no host sync.
    valid = torch.isfinite(values) & (weights > 0)
    w = torch.where(valid, weights, torch.zeros_like(weights))
    v = torch.where(valid, values, torch.full_like(values, math.inf))
    order = torch.argsort(v)
    cum = torch.cumsum(w[order], 0)
    half = (cum[-1] * 0.5).reshape(1)
    k = torch.searchsorted(cum, half).clamp(max=values.numel() - 1)
    med = v[order][k][0]
    return torch.where(cum[-1] > 0, med, torch.full_like(med, math.nan))


class SecondMomentMonitor:
    """Watch Adam's second moment on a fixed random subset of coordinates.

    Call :meth:`update` right after each ``optimizer.step()`` (or :meth:`attach` it as a step
    post-hook). On ``max_coords`` coordinates, chosen once (seeded, spread over the trainable
    tensors in proportion to their size, at least one per tensor), it reads ``exp_avg_sq``,
    ``step`` (the parameter's, else the group's) and the group's ``betas`` from the optimizer
    and ``p.grad`` (the gradient that step used) and returns a :class:`MomentStats`:

    .. math::

        \\hat v_t = \\frac{v_t}{1 - \\beta_2^t}, \\qquad
        s_t = \\frac{\\mathrm{EMA}_{\\beta_s}(g^2)_t}{1 - \\beta_s^{n}}, \\qquad
        n_\\text{eff}(t) = \\frac{(1 + \\beta_2)(1 - \\beta_2^t)}{(1 - \\beta_2)(1 + \\beta_2^t)}

    - ``vhat_mean``, ``g2_mean``: means of :math:`\\hat v_t` and :math:`g_t^2` over the sample.
    - ``drift``: for each tensor, :math:`\\sum s_t / \\sum \\hat v_t` over its sampled
      coordinates; then the median over tensors weighted by their sampled counts (so by size).
      :math:`s_t` is a short EMA (``short_beta`` = 0.9: a window of about 10 updates), so
      ``drift`` well above 1 means gradients grow faster than the preconditioner adapts and
      Adam's steps are larger than intended. Why this aggregate: Adam normalises per
      coordinate, so a global ratio of sums would let the layer with the largest gradients
      decide; a per-coordinate median instead breaks on sparse or heavy-tailed gradients (an
      embedding row absent from recent batches has :math:`s \\approx 0`), and is biased below 1
      for stationary noise. Inside one tensor coordinates share a scale, so the ratio of sums
      is unbiased and robust there; across tensors the weighted median takes the typical layer.
    - ``vhat_change``: :math:`\\lVert \\hat v_t - \\hat v_{t-1} \\rVert_1 /
      \\lVert \\hat v_{t-1} \\rVert_1`, the change over one optimizer step: read from the
      previous observation when that was the previous update (by Adam's step count, or by
      the calls where the count lives on the device), else (``every`` > 1, ``update()``
      called every few steps, a tensor without a gradient at the previous step, the first
      call of a monitor attached mid-run) rebuilt from Adam's update
      :math:`v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2`.
      ``nan`` at Adam's first update, and where no rebuild is possible: for
      :math:`\\beta_2 = 0` (:math:`v_{t-1}` is not kept) and for an ``exp_avg_sq`` stored in
      bfloat16 or float16, whose rounding is as large as one step's change late in a run;
      observe every update there.
    - ``kappa``: per coordinate :math:`\\mathrm{Var}(g^2) / \\mathrm{E}[g^2]^2` from Welford
      running moments of :math:`g^2` over this burst's observed updates (unbiased variance;
      kept on :math:`g^2` divided by its tensor's mean at the first observation, so that
      their squares neither underflow nor overflow float32; :math:`g^2` itself is gathered in
      float32, which holds it for :math:`|g|` from about 1e-19 to 1e19),
      then the (lower) median over coordinates with a non-zero mean; 2 for zero-mean Gaussian
      gradients, larger for heavy tails; ``nan`` until 3 observations. A gradient scale that
      moves during the burst also counts as variance, which overstates ``kappa`` (the safe side).
      Over few observations the median of per-coordinate ratios reads low (the ratio's
      sampling distribution is skewed right): about 1.65 for Gaussian gradients after 20
      updates, and about 3 after 50 for Student-t gradients of 5 degrees of freedom (kappa 8).
      A ratio of sums pooled over each tensor has no such bias under stationary noise, but
      an early burst's falling gradient scale inflates it (275 where the median reads 11.6, on
      a deep ReLU MLP of the tests), so the median is kept.
    - ``n_eff`` (min over the tensors read, whose steps may differ) and
      ``rel_error`` :math:`= \\sqrt{\\kappa / n_\\text{eff}}`, the relative error of
      :math:`\\hat v` as an estimate of :math:`\\mathrm{E}[g^2]`.

    Cost: everything is on-device tensor work on the sample (an index gather per tensor, so no
    copy of non-contiguous tensors), with one host sync per observed update; memory is ten
    float32 vectors of ``max_coords`` entries (running state and reused scratch) plus the int64
    indices. Per tensor an update does two gathers straight into the scratch vectors and a
    little Python; the rest is some 15 in-place passes over the whole sample, a median and
    one sum per tensor. So the cost is set by ``max_coords`` and by the number of tensors, not
    by the model size: measured single-threaded on a shared CPU on a 76-tensor transformer,
    about 3 ms per update at 16384 coordinates and 5 ms at 65536, against ~100-140 ms for a
    64-row step of its 10M-parameter version (``reports/benchmark/overhead.md``). For small
    models on CPU lower ``max_coords`` or raise ``every``.

    Tensors whose ``p.grad`` is ``None`` or sparse, whose state has no ``exp_avg_sq`` yet (or
    one not shaped like the tensor), or whose param group has no ``betas``, are skipped for
    that update (their running moments wait). When the param groups have different
    :math:`\beta_2`, only the tensors of the largest (among groups with a second moment yet)
    are read, and an update where none of them has a gradient is not observed: their second
    moment is the slowest to settle, and one statistic pooled over several :math:`\beta_2`,
    or switching between them, would hold each to another's scale.

    With ``every=k`` only every k-th call is observed: the short EMA and the Welford moments
    are then over observed updates, while ``vhat_change`` stays the one-step change.
    ``p.grad`` is the gradient Adam used unless the optimizer adds L2 weight decay into it
    (``Adam(weight_decay>0)``; AdamW's decoupled decay is fine) or clips it internally; then a
    rebuilt ``vhat_change`` is off too (observe every update). With ``amsgrad=True`` Adam
    divides by the running maximum ``max_exp_avg_sq``, not by ``exp_avg_sq``; the statistics
    are still those of ``exp_avg_sq``, whose settling is what a warmup waits for (the maximum
    only makes the steps smaller).

    Args:
        optimizer:
            The optimizer of the burst, usually ``Adam`` or ``AdamW``.
        max_coords:
            Most coordinates sampled in total (all when the model is smaller). The default,
            16384, keeps ``kappa``, ``drift`` and ``rel_error`` within ~3% of a 65536-coordinate
            sample on a 10M-parameter transformer, at about two thirds of its cost.
        every:
            Observe every ``every``-th call to :meth:`update` (the 1st, ``every+1``-th, ...).
            ``vhat_change`` stays the change over one step (rebuilt from Adam's update, see
            above), so :func:`~autowarm.probe.signals.settling_step` reads such a frame too.
        short_beta:
            Decay of the short EMA of :math:`g^2` in ``drift`` (window about
            ``1/(1-short_beta)`` observed updates).
        seed:
            Seed of the coordinate sample.
        dense_kappa:
            Read ``kappa`` only over the coordinates whose gradient was non-zero at every
            observed update (off by default; the probe's ``SearchSettings.dense_kappa``).
            A sparse coordinate (an embedding row of a rare item) has a heavy-tailed
            :math:`g^2` that raises the median; this variant leaves it out. An update with
            no gradient at all (every sampled coordinate 0) excludes nothing, and while no
            coordinate qualifies ``kappa`` is ``nan``.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
        ValueError: a setting is out of range, or no parameter requires grad.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.Adam(model.parameters())
        >>> monitor = SecondMomentMonitor(opt, max_coords=1024)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     model(torch.randn(8, 4)).pow(2).mean().backward()
        ...     opt.step()
        ...     stats = monitor.update()
        >>> stats.step, stats.drift > 0, round(stats.n_eff, 3)
        (3, True, 3.0)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_coords: int = 16384,
        every: int = 1,
        short_beta: float = 0.9,
        seed: int = 0,
        dense_kappa: bool = False,
    ) -> None:
        for name, value in (("max_coords", max_coords), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}")
        if not 0.0 <= short_beta < 1.0:
            raise ValueError(f"short_beta must be in [0, 1), but got short_beta={short_beta!r}")
        self._optimizer = _check_optimizer(optimizer)
        self._max_coords = max_coords
        self._every = every
        self._short_beta = float(short_beta)
        self._seed = seed
        # kappa over the coordinates with a gradient at every observed update only (an
        # embedding row or a weight into a unit dead for a batch gets none at times)
        self._dense_kappa = bool(dense_kappa)
        self._handle: RemovableHandle | None = None
        self._select(_trainable(self._optimizer))
        self.history: list[MomentStats] = []
        self.reset()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer being watched."""
        return self._optimizer

    @property
    def n_coords(self) -> int:
        """Number of sampled coordinates."""
        return self._n

    def _select(self, params: list[tuple[torch.Tensor, int]]) -> None:
        if not params:
            raise ValueError("optimizer must hold at least one parameter with requires_grad=True")
        self._device = params[0][0].device
        # float32: Adam's own state precision, ~3x faster than float64 on CPU, and on MPS.
        self._dtype = torch.float32
        counts = _allocate([p.numel() for p, _ in params], self._max_coords)
        rng = np.random.default_rng(self._seed)
        self._entries: list[_Entry] = []
        start = 0
        for (p, gi), k in zip(params, counts, strict=True):
            n = p.numel()
            flat = np.arange(n) if k == n else np.sort(rng.choice(n, size=k, replace=False))
            index = torch.as_tensor(flat, dtype=torch.int64, device=p.device)
            self._entries.append(_Entry(p, gi, index, start, k, len(self._entries)))
            start += k
        self._n = start
        self._weights = torch.as_tensor(counts, dtype=self._dtype, device=self._device)

    def reset(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Forget everything observed, for a new burst.

        Args:
            optimizer:
                The new burst's optimizer. When its trainable tensors have the same shapes in
                the same order, the same coordinates stay sampled (so bursts compare);
                otherwise a new sample is drawn. An attached hook moves to it.
        """
        if optimizer is not None:
            params = _trainable(_check_optimizer(optimizer))
            shapes = [p.shape for p, _ in params]
            if shapes == [e.param.shape for e in self._entries]:
                for e, (p, gi) in zip(self._entries, params, strict=True):
                    e.param, e.group = p, gi
            else:
                self._select(params)
            attached = self._handle is not None
            self.detach()
            self._optimizer = optimizer
            if attached:
                self.attach()
        # Running state per sampled coordinate (float32, in the order of the entries), and how
        # often each entry was observed: all of an entry's coordinates are observed together,
        # so that count is one host integer per entry.
        zeros = torch.zeros(self._n, dtype=self._dtype, device=self._device)
        self._short, self._mean, self._m2 = zeros, zeros.clone(), zeros.clone()
        self._prev_vhat = zeros.clone()
        self._zero_seen = zeros.clone()  # 1 where g^2 was exactly 0 at some observation
        # The Welford moments run on g^2 times a per-tensor constant (1 / the tensor's mean
        # g^2 at its first observation with a gradient), so they stay near 1: kappa is
        # scale-free, but in float32 the squares of raw g^2 underflow for |g| below ~1e-10 and
        # overflow above ~1e9. 0 marks a scale not yet set: while a tensor's g^2 is all zero
        # (the layer before a zero-initialised one, LoRA's B = 0) its scaled g^2 is 0, as its
        # raw g^2 is, and the first update that has a gradient sets the scale.
        self._scale = zeros.clone()
        self._unscaled: set[int] = set()  # slots observed with no scale set yet
        self._observed = [0] * len(self._entries)
        self._last_call = [-2] * len(self._entries)  # the update() call that last observed it
        self._last_step = [math.nan] * len(self._entries)  # and Adam's step count then
        self._beta2_cache: dict[int, tuple[Any, float | None]] = {}
        # Scratch reused by every update (no fresh temporaries): the gathered exp_avg_sq (made
        # v_hat in place), the gathered gradient (made g^2 in place) and two work vectors.
        self._scratch = torch.empty(4, self._n, dtype=self._dtype, device=self._device)
        self._calls = 0
        self.history = []

    def attach(self) -> None:
        """Call :meth:`update` after every ``optimizer.step()`` (a step post-hook)."""
        if self._handle is None:
            self._handle = self._optimizer.register_step_post_hook(self._hook)

    def detach(self) -> None:
        """Remove the hook installed by :meth:`attach` (no-op when not attached)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> SecondMomentMonitor:
        self.attach()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.update()

    def to_frame(self) -> pd.DataFrame:
        """The observed updates, one row each, columns as in :class:`MomentStats`."""
        columns = [f.name for f in fields(MomentStats)]
        return pd.DataFrame([s.to_dict() for s in self.history], columns=columns)

    def update(self) -> MomentStats | None:
        """Read the optimizer after a step and return this update's statistics.

        Returns:
            The statistics (also appended to :attr:`history`), or ``None`` when this call is
            skipped by ``every`` or no sampled tensor has a gradient and an ``exp_avg_sq``
            shaped like it, in a param group with ``betas``.
        """
        call, self._calls = self._calls, self._calls + 1
        if call % self._every:
            return None
        with torch.no_grad():
            return self._observe(call)

    def _beta2_of(self, index: int, group: Mapping[str, Any]) -> float | None:
        # A beta2 held as a tensor on an accelerator (capturable Adam with tensor betas) is read
        # once per betas object, not at every update: float() of it is a host sync.
        betas = group.get("betas")
        second = betas[1] if isinstance(betas, (tuple, list)) and len(betas) == 2 else None
        on_device = isinstance(second, torch.Tensor) and second.device.type != "cpu"
        if not on_device:
            return _group_beta2(group)
        cached = self._beta2_cache.get(index)
        if cached is not None and cached[0] is betas:
            return cached[1]
        value = _group_beta2(group)
        self._beta2_cache[index] = (betas, value)
        return value

    def _observe(self, call: int) -> MomentStats | None:
        groups = self._optimizer.param_groups
        state = self._optimizer.state
        # beta2 per param group; None where the group has no Adam-style betas
        beta2 = {i: self._beta2_of(i, g) for i, g in enumerate(groups)}
        # Param groups with different betas: only the tensors of the largest beta2 that has a
        # second moment yet are read (an update where none of them has a gradient is not
        # observed). Their second moment settles last, and statistics pooled over several
        # beta2, or alternating between them, would describe none of them (n_eff's cap and
        # the floor of vhat_change are beta2's).
        slowest = -1.0
        readable: list[tuple[_Entry, dict[str, Any], float]] = []
        for e in self._entries:
            st = state.get(e.param)  # .get: never add keys to the defaultdict
            b2 = beta2.get(e.group)
            if st and b2 is not None and _readable(st, e.param):
                readable.append((e, st, b2))
                slowest = max(slowest, b2)
        active: list[tuple[_Entry, dict[str, Any], torch.Tensor]] = []
        for e, st, b2 in readable:
            grad = e.param.grad
            if b2 == slowest and grad is not None and not grad.is_sparse:
                active.append((e, st, grad))
        if not active:
            return None
        dev, dt = self._device, self._dtype
        m = sum(e.count for e, _, _ in active)
        vhat, g2 = self._scratch[0, :m], self._scratch[1, :m]
        # Gather each tensor's sampled coordinates straight into its slice of the two scratch
        # vectors (active entries one after another), then correct and square the whole vectors
        # at once: no per-tensor arithmetic and no temporaries in the usual case.
        steps: list[float | torch.Tensor] = []
        b2s: list[float] = []
        corrections: list[tuple[int, int, float | torch.Tensor]] = []  # (start, stop, 1-b2^t)
        # How each entry's one-step change of v_hat is read (_Span): from its previous
        # observation when that was the previous update, else rebuilt from Adam's update rule.
        spans: list[_Span] = []
        counts = [e.count for e, _, _ in active]
        off = 0
        outs = zip(active, torch.split(vhat, counts), torch.split(g2, counts), strict=True)
        for (e, st, grad), v_out, g_out in outs:
            stop = off + e.count
            _gather_into(st["exp_avg_sq"], e.index, v_out)
            _gather_into(grad, e.index, g_out)
            b2 = beta2[e.group]
            assert b2 is not None  # groups without betas have no active entries
            t = _step_value(_step_of(st, groups[e.group], self._calls))
            if isinstance(t, torch.Tensor):
                t = t.to(dev, dt)
            corr = 1.0 - b2**t
            # The previous observation was the previous update: by Adam's own count where it is
            # a host number (update() called every few steps by hand reads as a gap), by the
            # calls where it lives on the device (reading it there would cost a sync).
            if isinstance(t, float):
                consecutive = self._last_step[e.slot] == t - 1.0
                self._last_step[e.slot] = t
            else:
                consecutive = self._last_call[e.slot] == call - 1
            self._last_call[e.slot] = call
            if consecutive or _rebuildable(st["exp_avg_sq"]):
                _add_span(spans, off, stop, consecutive, b2, t, corr)
            last = corrections[-1] if corrections else None
            if isinstance(corr, float) and last is not None and _same(last[2], corr):
                # Bias corrections differ only across steps and betas: merge equal neighbours.
                corrections[-1] = (last[0], stop, corr)
            else:
                corrections.append((off, stop, corr))
            steps.append(t)
            b2s.append(b2)
            off = stop
        for lo, hi, corr in corrections:
            # A Python float (or a device scalar for a device step) needs no host-to-device
            # copy, hence no extra sync; with a shared step and beta2 this is one division.
            vhat[lo:hi].div_(corr)
        g2.square_()
        on_host = all(isinstance(t, float) for t in steps)
        neff: list[float | torch.Tensor] = []
        cache: dict[tuple[float, float], float] = {}
        for t, b2 in zip(steps, b2s, strict=True):
            if isinstance(t, float):
                value = cache.get((t, b2))
                if value is None:
                    value = cache[(t, b2)] = _n_eff_host(t, b2)
                neff.append(value)
            else:
                neff.append(_n_eff_tensor(t, b2))
        pos: torch.Tensor | None = None
        if len(active) < len(self._entries):
            pos = torch.cat(
                [torch.arange(e.start, e.start + e.count, device=dev) for e, _, _ in active]
            )
        stats = self._advance([e for e, _, _ in active], pos, vhat, g2, spans)
        extra = [] if on_host else [_stack_min(neff, dev, dt), _stack_max(steps, dev, dt)]
        host = torch.stack([*stats, *extra]).tolist()  # the one host sync
        vhat_mean, g2_mean, drift, change, kappa = host[:5]
        n_eff = min(float(x) for x in neff) if on_host else host[5]
        step = max(float(x) for x in steps) if on_host else host[6]
        rel = math.sqrt(kappa / n_eff) if n_eff > 0 and math.isfinite(kappa) else math.nan
        out = MomentStats(
            update=len(self.history),
            step=round(step),
            beta2=min(b2s),
            n_coords=m,
            vhat_mean=vhat_mean,
            g2_mean=g2_mean,
            drift=drift,
            vhat_change=change,
            kappa=kappa,
            n_eff=n_eff,
            rel_error=rel,
        )
        self.history.append(out)
        return out

    def _advance(
        self,
        active: list[_Entry],
        pos: torch.Tensor | None,
        vhat: torch.Tensor,
        g2: torch.Tensor,
        spans: list[_Span],
    ) -> list[torch.Tensor]:
        # Update the running per-coordinate state of the active entries (their coordinates laid
        # out one entry after another in `vhat` and `g2`; `pos`: where they sit in the state
        # vectors, None when all entries are active) and return the device scalars
        # [vhat_mean, g2_mean, drift, vhat_change, kappa]. In place on the state and on the
        # scratch work vectors. The number k of earlier observations is shared by all of an
        # entry's coordinates, so the work runs over stretches of consecutive entries with the
        # same k (one stretch when every tensor takes every update) with n = k + 1 a scalar.
        m = vhat.numel()
        vectors = (
            self._short,
            self._mean,
            self._m2,
            self._prev_vhat,
            self._scale,
            self._zero_seen,
        )
        if pos is None:
            short, mean, m2, prev, scale, zero_seen = vectors
        else:
            short, mean, m2, prev, scale, zero_seen = (
                torch.index_select(v, 0, pos) for v in vectors
            )
        work, kappa_c = self._scratch[2, :m], self._scratch[3, :m]
        bs = self._short_beta
        runs: list[tuple[int, int, int, int, int]] = []  # entries [i, j), coordinates [lo, hi), k
        lo = 0
        for i, e in enumerate(active):
            k = self._observed[e.slot]
            if runs and runs[-1][4] == k:
                runs[-1] = (runs[-1][0], i + 1, runs[-1][2], lo + e.count, k)
            else:
                runs.append((i, i + 1, lo, lo + e.count, k))
            lo += e.count
        any_kappa = False
        # dense_kappa marks the zeros of an update, but not of one with no gradient at all
        # (every coordinate 0): that would leave none, and the settling the last kappa before
        # it. One device scalar for the whole update: no host sync, and the same whatever
        # stretches the entries fall in.
        some_grad = (g2 != 0).any() if self._dense_kappa else None
        for i, j, lo, hi, k in runs:
            n = k + 1.0
            g, mu, kap, w = g2[lo:hi], mean[lo:hi], kappa_c[lo:hi], work[lo:hi]
            if k == 0 or self._unscaled:
                self._fix_scales(active[i:j], scale[lo:hi], g, first=k == 0)
            if some_grad is not None:
                zero_seen[lo:hi].masked_fill_((g == 0) & some_grad, 1.0)
            short[lo:hi].lerp_(g, 1.0 - bs)  # short EMA: bs * short + (1 - bs) * g^2
            gs = torch.mul(g, scale[lo:hi], out=kap)  # scaled g^2
            delta = torch.sub(gs, mu, out=w)  # Welford
            mu.add_(delta, alpha=1.0 / n)
            m2[lo:hi].addcmul_(delta, kap.sub_(mu))
            if k >= 2:  # n >= 3: Var(g^2) / E[g^2]^2
                # A zero mean (g = 0 at every observation) has m2 = 0 too: 0/0 gives nan, and
                # the mean of squares is never negative, so no mask is needed.
                torch.div(m2[lo:hi], n - 1.0, out=kap).div_(torch.mul(mu, mu, out=w))
                if self._dense_kappa:
                    kap.masked_fill_(zero_seen[lo:hi] > 0, math.nan)
                any_kappa = True
            else:
                kap.fill_(math.nan)
        nan = vhat.new_full((), math.nan)
        nums, dens = _one_step_change(vhat, g2, prev, work, spans)
        change = torch.stack(nums).sum() / torch.stack(dens).sum() if nums else nan
        kappa = torch.nanmedian(kappa_c) if any_kappa else nan
        # Per-tensor sums of the short EMA and of v_hat (split: exact, and cheaper than
        # index_add on CPU); the EMA's bias correction 1 - bs^n is the same over a tensor.
        counts = [e.count for e in active]
        sums = torch.stack(
            [c.sum(1) for c in torch.split(torch.stack([short, vhat]), counts, dim=1)], dim=1
        )
        for i, j, _, _, k in runs:
            sums[0, i:j].div_(1.0 - bs ** (k + 1))
        if len(active) < len(self._entries):
            zero = vhat.new_zeros(2)
            by_slot = dict(zip((e.slot for e in active), sums.unbind(1), strict=True))
            sums = torch.stack([by_slot.get(i, zero) for i in range(len(self._entries))], dim=1)
        sum_s, sum_v = sums
        ratio = torch.where(sum_v > 0, sum_s / sum_v, torch.full_like(sum_s, math.nan))
        drift = _weighted_median(ratio, self._weights)
        stats = [vhat.mean(), g2.mean(), drift, change, kappa]
        prev.copy_(vhat)
        if pos is not None:
            for vec, value in zip(vectors, (short, mean, m2, prev, scale, zero_seen), strict=True):
                vec.index_copy_(0, pos, value)
        for e in active:
            self._observed[e.slot] += 1
        return stats

    def _fix_scales(
        self, entries: list[_Entry], scale: torch.Tensor, g2: torch.Tensor, *, first: bool
    ) -> None:
        # Set the scales of these entries at their first observation, and of entries still
        # without one (their g^2 was all zero so far). The common case costs no host sync: one
        # check at an entry's first observation, more only while some scale is unset.
        counts = [e.count for e in entries]
        if not first and not self._unscaled.intersection(e.slot for e in entries):
            return
        _set_scales(scale, g2, counts)
        if first and not bool((scale == 0).any()):
            return
        for e, s in zip(entries, torch.split(scale, counts), strict=True):
            if bool(s[0] == 0):
                self._unscaled.add(e.slot)
            else:
                self._unscaled.discard(e.slot)


def _set_scales(out: torch.Tensor, g2: torch.Tensor, counts: list[int]) -> None:
    # Per tensor (consecutive stretches of `counts` coordinates) whose scale is not set yet
    # (0): 1 / mean(g^2), or still 0 where that mean is zero or not finite. Set scales stay.
    # On-device, no host sync.
    for o, g in zip(torch.split(out, counts), torch.split(g2, counts), strict=True):
        mean = g.mean()
        inv = mean.reciprocal()  # inf for a subnormal mean as well as for zero
        ok = torch.isfinite(inv) & (mean > 0) & (o[0] == 0)
        o.copy_(torch.where(ok, inv, o[0]).expand_as(o))


@dataclass
class _Span:
    # A stretch [lo, hi) of the sampled coordinates whose one-step change of v_hat is read
    # one way: "diff" (the previous observation was the previous step) or "rebuild" (Adam's
    # update at this step, with its beta2, step t and bias correction 1 - beta2^t).
    lo: int
    hi: int
    how: str
    beta2: float = math.nan
    t: float | torch.Tensor = math.nan
    corr: float | torch.Tensor = math.nan


def _rebuildable(v: torch.Tensor) -> bool:
    # v_{t-1} rebuilt from v_t carries v_t's storage rounding: float32 and wider keep it far
    # below one step's change ((1 - beta2) times the innovation); bfloat16 and float16 do not.
    real = v.real if v.is_complex() else v
    return torch.finfo(real.dtype).eps <= torch.finfo(torch.float32).eps


def _add_span(
    spans: list[_Span],
    lo: int,
    hi: int,
    consecutive: bool,
    beta2: float,
    t: float | torch.Tensor,
    corr: float | torch.Tensor,
) -> None:
    # Append one entry's coordinates, merged into the last stretch when read the same way
    # (the usual case, one stretch in all, costs a comparison per tensor and no object).
    last = spans[-1] if spans else None
    if consecutive:
        if last is not None and last.hi == lo and last.how == "diff":
            last.hi = hi
        else:
            spans.append(_Span(lo, hi, "diff"))
    elif beta2 > 0.0 and (not isinstance(t, float) or t >= 2.0):
        if (
            last is not None
            and last.hi == lo
            and last.how == "rebuild"
            and last.beta2 == beta2
            and isinstance(t, float)
            and _same(last.t, t)
        ):
            last.hi = hi
        else:
            spans.append(_Span(lo, hi, "rebuild", beta2, t, corr))
    # else: Adam's first update (v_{t-1} = 0), or beta2 = 0 (v_{t-1} is gone): no change


def _one_step_change(
    vhat: torch.Tensor,
    g2: torch.Tensor,
    prev: torch.Tensor,
    work: torch.Tensor,
    spans: list[_Span],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    # Sums of |v_hat_t - v_hat_{t-1}| and of v_hat_{t-1} over the spans (device scalars).
    # Where the previous observation was not the previous step (every > 1, a tensor without a
    # gradient at some steps, the first observation of a monitor attached mid-run), v_{t-1} is
    # rebuilt from Adam's update v_t = beta2 v_{t-1} + (1 - beta2) g_t^2, which holds for
    # Adam, AdamW, NAdam and RAdam whenever p.grad is the gradient the optimizer used.
    nums: list[torch.Tensor] = []
    dens: list[torch.Tensor] = []
    for sp in spans:
        lo, hi = sp.lo, sp.hi
        v, w = vhat[lo:hi], work[lo:hi]
        if sp.how == "diff":
            before = prev[lo:hi]
            dens.append(before.sum())
            nums.append(torch.sub(v, before, out=w).abs_().sum())
            continue
        b2, t = sp.beta2, sp.t
        torch.mul(v, sp.corr, out=w).sub_(g2[lo:hi], alpha=1.0 - b2)  # beta2 v_{t-1}
        w.div_((1.0 - b2 ** (t - 1.0)) * b2).clamp_(min=0.0)  # v_hat_{t-1}, kept >= 0
        den, num = w.sum(), torch.sub(v, w).abs_().sum()
        if isinstance(t, torch.Tensor):  # a device step (no sync): t = 1 has no v_{t-1}
            ok = t >= 2.0
            den, num = torch.where(ok, den, 0.0), torch.where(ok, num, 0.0)
        dens.append(den)
        nums.append(num)
    return nums, dens


def _same(a: float | torch.Tensor, b: float) -> bool:
    # Equal host floats; a device scalar is never compared (that would sync).
    return isinstance(a, float) and a == b


def _n_eff_host(t: float, beta2: float) -> float:
    # signals.n_eff for one host step, in plain Python: numpy and the argument checks of the
    # public function cost ~25 us a call, which adds up over the tensors of every update.
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), but got beta2={beta2!r}")
    if t < 0:
        raise ValueError(f"t must be >= 0, but got t={t!r}")
    if 1.0 - beta2 == 1.0:  # beta2 = 0, or too small for log1p(-(1 - beta2))
        return 1.0 if t > 0 else 0.0
    y = t * math.log1p(-(1.0 - beta2))  # as signals.n_eff: exact near beta2 = 1
    return (1.0 + beta2) * -math.expm1(y) / ((1.0 - beta2) * (1.0 + math.exp(y)))


def _n_eff_tensor(t: torch.Tensor, beta2: float) -> torch.Tensor:
    if 1.0 - beta2 == 1.0:  # beta2 = 0, or too small for log1p(-(1 - beta2))
        return (t > 0).to(t.dtype)
    y = t * math.log1p(-(1.0 - beta2))
    return (1.0 + beta2) * -torch.expm1(y) / ((1.0 - beta2) * (1.0 + torch.exp(y)))


def _stack_min(values: list[Any], dev: torch.device, dt: torch.dtype) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v, dtype=dt, device=dev) for v in values]).min()


def _stack_max(values: list[Any], dev: torch.device, dt: torch.dtype) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v, dtype=dt, device=dev) for v in values]).max()
