"""What the probe reads from its traces: pure functions of loss and second-moment series.

Everything here takes numpy arrays or a pandas frame and returns a frozen dataclass of plain
``float``/``int``/``bool``/``str`` (``nan`` where a number is undefined), never a tensor. Each
dataclass field carries a unit and a description in its metadata; :func:`signals_frame` turns
results into a tidy table. Too little data gives a flagged result (``ok=False`` and a
``reason``), never an exception; malformed input (mismatched lengths, a decreasing LR sweep,
missing columns) raises ``ValueError``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "BurstSignals",
    "RangeTestResult",
    "SettlingResult",
    "burst_stability",
    "change_tolerance",
    "ema",
    "n_eff",
    "newest_weight",
    "range_test",
    "settling_step",
    "signals_frame",
    "stability_curve",
    "steps_for_n_eff",
    "untuned_warmup_steps",
]

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
_MAD_TO_SD = 1.4826  # MAD of a normal sample times this estimates its standard deviation
CHANGE_TOL = 0.01  # settling_step's default vhat_change tolerance per update


def _meta(unit: str, description: str) -> dict[str, str]:
    return {"unit": unit, "description": description}


def _as_1d(values: npt.ArrayLike, name: str) -> FloatArray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, but got {name} with shape {x.shape}")
    return x


def _check_beta(beta: float, name: str) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), but got {name}={beta!r}")


def _check_count(value: int, name: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, but got {name}={value!r}")


# --------------------------------------------------------------------------------------------
# Smoothing and Adam's effective sample size
# --------------------------------------------------------------------------------------------


def ema(values: npt.ArrayLike, beta: float = 0.9) -> FloatArray:
    """Bias-corrected exponential moving average that steps over non-finite values.

    .. math::

        m_k = \\beta m_{k-1} + (1 - \\beta) x_k, \\quad m_0 = 0, \\qquad
        \\hat m_k = \\frac{m_k}{1 - \\beta^k}

    where :math:`k` counts the finite inputs so far. A non-finite input leaves the average
    unchanged and its output position repeats the previous value; positions before the first
    finite input are ``nan``. The output is as long as the input, so it stays aligned with the
    LRs or steps of the input.

    Args:
        values:
            One-dimensional series (losses, for instance).
        beta:
            Decay in ``[0, 1)``; ``0`` returns the input with non-finite values carried over.

    Returns:
        The smoothed series, same length as ``values``.

    Example:
        >>> ema([1.0, float("nan"), 3.0], beta=0.5).round(4).tolist()
        [1.0, 1.0, 2.3333]
    """
    x = _as_1d(values, "values")
    _check_beta(beta, "beta")
    finite = np.isfinite(x)
    out = np.full(x.shape, np.nan)
    if not finite.any():
        return out
    xf = x[finite]
    from scipy.signal import lfilter  # here: scipy.signal takes most of a second to import

    m = np.asarray(lfilter([1.0 - beta], [1.0, -beta], xf), dtype=np.float64)
    smoothed = m / (1.0 - beta ** np.arange(1, xf.size + 1, dtype=np.float64))
    pos = np.cumsum(finite) - 1
    out[pos >= 0] = smoothed[pos[pos >= 0]]
    return out


@overload
def n_eff(t: float, beta2: float) -> float: ...


@overload
def n_eff(t: FloatArray, beta2: float) -> FloatArray: ...


def n_eff(t: float | FloatArray, beta2: float) -> float | FloatArray:
    """Effective number of squared gradients behind Adam's bias-corrected second moment.

    The bias-corrected :math:`\\hat v_t` weights :math:`g_k^2` by
    :math:`w_k = (1-\\beta_2)\\beta_2^{t-k} / (1 - \\beta_2^t)`; its effective sample size is

    .. math::

        n_\\text{eff}(t) = \\frac{1}{\\sum_k w_k^2}
        = \\frac{(1 + \\beta_2)(1 - \\beta_2^t)}{(1 - \\beta_2)(1 + \\beta_2^t)},

    about :math:`t` for small :math:`t`, saturating at :math:`(1+\\beta_2)/(1-\\beta_2)` (RAdam's
    :math:`\\rho_\\infty`; Liu et al., 2020).

    Args:
        t:
            Step count(s), ``>= 0`` (real values allowed).
        beta2:
            Adam's :math:`\\beta_2` in ``[0, 1)``.

    Returns:
        A float for a scalar ``t``, an array for an array.

    Example:
        >>> n_eff(1, 0.999), round(n_eff(1e9, 0.999), 6)
        (1.0, 1999.0)
    """
    _check_beta(beta2, "beta2")
    arr = np.asarray(t, dtype=np.float64)
    if np.any(arr < 0):
        raise ValueError(f"t must be >= 0, but got t={t!r}")
    if 1.0 - beta2 == 1.0:  # beta2 = 0, or too small for log1p(-(1 - beta2))
        x = np.power(beta2, arr)  # 0 ** 0 = 1
        one_minus_x = 1.0 - x
    else:
        # beta2^t and 1 - beta2^t through log1p/expm1: exact enough for beta2 close to 1,
        # where 1 - beta2**t cancels (settling_step solves n_eff for beta2 on such frames)
        y = arr * math.log1p(-(1.0 - beta2))
        x, one_minus_x = np.exp(y), -np.expm1(y)
    out = (1.0 + beta2) * one_minus_x / ((1.0 - beta2) * (1.0 + x))
    return float(out) if out.ndim == 0 else out


def steps_for_n_eff(n: float, beta2: float) -> float:
    """The (real) step count at which :func:`n_eff` reaches ``n``: its closed-form inverse.

    With :math:`c = (1+\\beta_2)/(1-\\beta_2)`, solving :math:`n = c (1-x)/(1+x)` for
    :math:`x = \\beta_2^t` gives

    .. math::

        t = \\frac{\\ln\\big((c - n) / (c + n)\\big)}{\\ln \\beta_2}, \\qquad 0 \\le n < c,

    and ``inf`` for :math:`n \\ge c` (never reached). Round up for whole steps.

    Args:
        n:
            Target effective sample size.
        beta2:
            Adam's :math:`\\beta_2` in ``[0, 1)``.

    Returns:
        The step count, possibly ``inf``.

    Example:
        >>> round(steps_for_n_eff(n_eff(250.0, 0.999), 0.999), 9)
        250.0
    """
    _check_beta(beta2, "beta2")
    c = (1.0 + beta2) / (1.0 - beta2)
    if n <= 0:
        return 0.0
    if beta2 == 0.0:  # n_eff is 0 at t=0 and 1 from t=1 on
        return 1.0 if n <= 1.0 else math.inf
    if n >= c:
        return math.inf
    return math.log((c - n) / (c + n)) / math.log(beta2)


def untuned_warmup_steps(beta2: float) -> int:
    """The "untuned" linear warmup length :math:`2 / (1 - \\beta_2)` (Ma & Yarats, 2021).

    ``pytorch_warmup.UntunedLinearWarmup`` truncates with ``int()``, which gives 1999 for
    ``beta2=0.999`` because ``2 / (1 - 0.999)`` is 1999.9999999999982 in floating point; we
    round, giving the intended 2000 (and 40 for 0.95, 100 for 0.98, 200 for 0.99).

    Args:
        beta2:
            Adam's :math:`\\beta_2` in ``[0, 1)``.

    Returns:
        The warmup length in optimizer steps.

    Example:
        >>> untuned_warmup_steps(0.999), untuned_warmup_steps(0.95)
        (2000, 40)
    """
    _check_beta(beta2, "beta2")
    return round(2.0 / (1.0 - beta2))


# --------------------------------------------------------------------------------------------
# LR range test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeTestResult:
    """Reading of an exponential LR sweep; see :func:`range_test`."""

    ok: bool = field(metadata=_meta("bool", "enough finite points to compute the suggestions"))
    reason: str = field(metadata=_meta("text", "why not ok, or what was flagged"))
    steepest_lr: float = field(metadata=_meta("lr", "LR of steepest descent of smoothed loss"))
    steepest_slope: float = field(
        metadata=_meta("loss/ln(lr)", "d(smoothed loss)/d(ln lr) at steepest_lr")
    )
    valley_lr: float = field(metadata=_meta("lr", "fastai valley: part-way down longest descent"))
    valley_start_lr: float = field(metadata=_meta("lr", "start of the longest descent"))
    valley_end_lr: float = field(metadata=_meta("lr", "end of the longest descent"))
    min_loss_lr: float = field(metadata=_meta("lr", "LR of the minimum smoothed loss"))
    min_loss: float = field(metadata=_meta("loss", "minimum smoothed loss"))
    diverged: bool = field(metadata=_meta("bool", "loss became non-finite or exceeded the factor"))
    diverge_lr: float = field(metadata=_meta("lr", "LR at which divergence was detected"))
    diverge_index: int = field(metadata=_meta("index", "input position of divergence, -1 if none"))
    flat: bool = field(
        metadata=_meta("bool", "descent below flat_tol (a slow starter, or trained)")
    )
    descent: float = field(
        metadata=_meta(
            "ratio",
            "drop of smoothed loss from its highest point before the minimum to the minimum, "
            "relative to that high point",
        )
    )
    n_points: int = field(metadata=_meta("count", "input points"))
    n_finite: int = field(metadata=_meta("count", "points with finite loss and LR"))
    n_used: int = field(metadata=_meta("count", "points in the analysis window"))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


def _longest_descent(y: FloatArray) -> tuple[int, int]:
    # Longest strictly decreasing subsequence (fastai's `valley`), returned as the positions of
    # its first and last elements. O(n^2) work, vectorised over the inner loop.
    n = y.size
    length = np.ones(n, dtype=np.int64)
    start = np.arange(n)
    for i in range(1, n):
        higher = y[:i] > y[i]
        if higher.any():
            cand = np.where(higher, length[:i], 0)
            j = int(np.argmax(cand))
            length[i], start[i] = cand[j] + 1, start[j]
    end = int(np.argmax(length))
    return int(start[end]), end


def _divergence(
    loss: FloatArray, keep: npt.NDArray[np.bool_], smooth: FloatArray, factor: float | None
) -> tuple[int, str]:
    # First input position where the loss is non-finite or the smoothed loss exceeds
    # factor x its running minimum (positive minima only); len(loss) when none. The minimum
    # counts from the third smoothed point, which averages three batches: one easy first
    # batch is not a minimum that the next, ordinary batches "diverge" from.
    first, why = loss.size, ""
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        first, why = int(bad[0]), f"non-finite loss at index {int(bad[0])}"
    if factor is not None and smooth.size:
        run_min = np.minimum.accumulate(np.where(np.arange(smooth.size) >= 2, smooth, np.inf))
        over = np.flatnonzero((run_min > 0) & (smooth > factor * run_min))
        if over.size:
            pos = int(np.flatnonzero(keep)[over[0]])
            if pos < first:
                k = int(over[0])
                first = pos
                why = (
                    f"smoothed loss {smooth[k]:.4g} > diverge_factor={factor:g} x running min "
                    f"{run_min[k]:.4g} at index {pos}"
                )
    return first, why


def range_test(
    lrs: npt.ArrayLike,
    losses: npt.ArrayLike,
    *,
    smooth_beta: float = 0.9,
    skip_begin: int = 10,
    skip_end: int = 1,
    diverge_factor: float | None = 4.0,
    flat_tol: float = 0.05,
    min_points: int = 5,
) -> RangeTestResult:
    """Read an LR range test (Smith, 2017): the loss of an exponential LR sweep.

    Points whose loss or LR is not finite are dropped together with their LR. The rest is
    smoothed with :func:`ema` (``smooth_beta``). The sweep diverges at the first input position
    where the loss is non-finite or the smoothed loss exceeds ``diverge_factor`` times its
    running minimum from the third point on (Lightning's ``early_stop_threshold``; only while
    that minimum is positive). The analysis window is the finite points before divergence, less
    ``skip_begin`` at the start and ``skip_end`` at the end (Lightning's defaults). On it:

    - steepest descent: the minimum of :math:`\\partial L / \\partial \\ln \\eta`
      (``np.gradient`` against log LR, not the index: Lightning #14248);
    - ``valley`` (fastai, PR #3377): the longest strictly decreasing subsequence of the
      smoothed loss, from position :math:`a` to :math:`b`; with :math:`s = (b-a)/3` the
      suggestion is position :math:`a + \\lfloor s \\rfloor + \\lfloor s/2 \\rfloor`, about half
      way down it; its ends are reported as a band;
    - the LR of minimum smoothed loss;
    - ``descent``: the largest drop :math:`(\\max_{k \\le k^*} L_k - L_{k^*}) / |\\max_{k \\le
      k^*} L_k|` to the minimum at :math:`k^*` (``inf`` for a drop from a top of exactly 0);
      ``flat`` when below ``flat_tol``. Below about
      5% the curve is hard to tell from batch noise left after smoothing (a model that is
      already trained: lr-finder PR #44).

    Appending non-finite points after the sweep changes none of the suggestions.

    Args:
        lrs:
            LRs of the sweep, strictly increasing where finite (positive).
        losses:
            Training loss at each LR, same length; ``nan``/``inf`` allowed.
        smooth_beta:
            EMA decay for the loss, in ``[0, 1)``.
        skip_begin:
            Finite points dropped at the start of the analysis window.
        skip_end:
            Finite points dropped at the end of the analysis window (before divergence).
        diverge_factor:
            Divergence threshold on the smoothed loss relative to its running minimum
            (``> 1``); ``None`` counts only non-finite losses.
        flat_tol:
            ``descent`` below which the curve is ``flat``.
        min_points:
            Fewest points in the analysis window for the suggestions (``>= 2``).

    Returns:
        The suggestions and flags; ``ok=False`` with a ``reason`` when too few points remain.

    Raises:
        ValueError: mismatched lengths, non-positive or non-increasing LRs, bad settings.

    Example:
        >>> lrs = np.logspace(-6, 0, 100)
        >>> losses = 2.0 - np.tanh(np.log10(lrs) + 3.0)
        >>> r = range_test(lrs, losses, smooth_beta=0.0)
        >>> bool(r.ok), round(float(np.log10(r.steepest_lr)), 1)
        (True, -3.0)
    """
    lr, loss = _as_1d(lrs, "lrs"), _as_1d(losses, "losses")
    if lr.size != loss.size:
        raise ValueError(
            "lrs and losses must have the same length, "
            f"but got len(lrs)={lr.size} and len(losses)={loss.size}"
        )
    _check_beta(smooth_beta, "smooth_beta")
    _check_count(skip_begin, "skip_begin")
    _check_count(skip_end, "skip_end")
    _check_count(min_points, "min_points", 2)
    if diverge_factor is not None and not diverge_factor > 1.0:
        raise ValueError(f"diverge_factor must be > 1 or None, but got {diverge_factor=}")
    keep = np.isfinite(loss) & np.isfinite(lr)
    if np.any(lr[keep] <= 0) or np.any(np.diff(lr[keep]) <= 0):
        raise ValueError("lrs must be positive and strictly increasing where finite")
    smooth = ema(loss[keep], smooth_beta)
    div, why = _divergence(loss, keep, smooth, diverge_factor)
    diverged = div < loss.size
    pre = np.flatnonzero(keep)[np.flatnonzero(keep) < div].size  # finite points before div
    w = slice(skip_begin, max(skip_begin, pre - skip_end))
    lr_w, y = lr[keep][w], smooth[w]
    nan = math.nan
    common: dict[str, Any] = {
        "diverged": diverged,
        "diverge_lr": float(lr[div]) if diverged else nan,
        "diverge_index": div if diverged else -1,
        "n_points": int(loss.size),
        "n_finite": int(keep.sum()),
        "n_used": int(y.size),
    }
    if y.size < min_points:
        reason = (
            f"too few points: {int(keep.sum())} finite of {loss.size}, {pre} before divergence, "
            f"{y.size} after skip_begin={skip_begin} and skip_end={skip_end}; "
            f"need min_points={min_points}"
        )
        _logger.info("range_test: %s", reason)
        return RangeTestResult(
            ok=False, reason=reason, steepest_lr=nan, steepest_slope=nan, valley_lr=nan,
            valley_start_lr=nan, valley_end_lr=nan, min_loss_lr=nan, min_loss=nan, flat=False,
            descent=nan, **common,
        )  # fmt: skip
    slope = np.gradient(y, np.log(lr_w))
    steep = int(np.argmin(slope))
    a, b = _longest_descent(y)
    third = (b - a) / 3
    valley = a + int(third) + int(third / 2)
    k = int(np.argmin(y))
    top = float(np.max(y[: k + 1]))
    drop = top - float(y[k])
    # relative to the top; from a top of exactly 0 any drop is a full one (a loss that falls
    # from 0 to below it is no flat curve), and no drop is none
    descent = drop / abs(top) if top != 0 else (math.inf if drop > 0 else 0.0)
    flat = descent < flat_tol
    notes = [f"diverged: {why}"] if diverged else []
    if flat:
        notes.append(
            f"flat: smoothed loss fell by {descent:.1%} at most (< flat_tol={flat_tol:.0%}); "
            "the model may already be trained"
        )
    return RangeTestResult(
        ok=True,
        reason="; ".join(notes) or "ok",
        steepest_lr=float(lr_w[steep]),
        steepest_slope=float(slope[steep]),
        valley_lr=float(lr_w[valley]),
        valley_start_lr=float(lr_w[a]),
        valley_end_lr=float(lr_w[b]),
        min_loss_lr=float(lr_w[k]),
        min_loss=float(y[k]),
        flat=flat,
        descent=float(descent),
        **common,
    )


# --------------------------------------------------------------------------------------------
# Stability of a short burst
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BurstSignals:
    """Stability signals of one burst's loss trace; see :func:`burst_stability`."""

    ok: bool = field(metadata=_meta("bool", "enough finite losses to judge the burst"))
    unstable: bool = field(metadata=_meta("bool", "any instability rule fired"))
    reason: str = field(metadata=_meta("text", "the rules that fired, with their numbers"))
    n_steps: int = field(metadata=_meta("steps", "losses given"))
    nonfinite: bool = field(metadata=_meta("bool", "a loss was nan or inf"))
    first_nonfinite_step: int = field(metadata=_meta("step", "first non-finite loss, -1 if none"))
    start_loss: float = field(metadata=_meta("loss", "reference loss at the initial weights"))
    final_loss: float = field(
        metadata=_meta("loss", "mean raw loss over the last 10% of steps; inf if non-finite")
    )
    net_decrease: float = field(
        metadata=_meta("ratio", "(start_loss - final_loss) / |start_loss|")
    )
    rise_above_start: float = field(
        metadata=_meta("ratio", "(max smoothed loss - start_loss) / |start_loss| (catapult)")
    )
    tv_ratio: float = field(
        metadata=_meta(
            "ratio",
            "total variation of smoothed loss / its net decrease from first to last smoothed "
            "point (1=monotone, or flat: a curve that does not move; inf when it ends at or "
            "above its first point otherwise)",
        )
    )
    excess_tv: float = field(
        metadata=_meta("ratio", "variation beyond net decrease and noise, over net decrease")
    )
    noise: float = field(metadata=_meta("ratio", "SD of raw batch-loss noise / |start_loss|"))
    n_spikes: int = field(metadata=_meta("count", "upward loss spikes (events)"))
    first_spike_step: int = field(metadata=_meta("step", "step of the first spike, -1 if none"))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


def _robust_noise_sd(x: FloatArray) -> float:
    # White-noise SD from second differences, which cancel a linear trend and damp slow
    # oscillations: Var(x_{k+1} - 2 x_k + x_{k-1}) = 6 sd^2. 1.4826 MAD, robust to spikes.
    if x.size < 4:
        return 0.0
    d = np.diff(x, 2)
    return float(_MAD_TO_SD * np.median(np.abs(d - np.median(d))) / math.sqrt(6.0))


def _rms_noise_sd(x: FloatArray, clip: float = 6.0) -> float:
    # The same from the RMS of second differences winsorised at `clip` robust SDs: closer to
    # the true SD under heavy-tailed noise, which is what the EMA's variation follows.
    if x.size < 4:
        return 0.0
    d = np.diff(x, 2)
    d = d - np.median(d)
    cap = clip * math.sqrt(6.0) * _robust_noise_sd(x)
    c = np.clip(d, -cap, cap)
    # the RMS scaled by the largest value, so squares neither overflow (losses of 1e154 and
    # more) nor underflow: the rules compare this SD with the losses, at any magnitude
    top = float(np.max(np.abs(c))) if c.size else 0.0
    if not (top > 0.0 and math.isfinite(top)):
        return top
    return top * float(np.sqrt(np.mean((c / top) ** 2) / 6.0))


def _median3(x: FloatArray) -> FloatArray:
    # Running median of 3 with Tukey's end-point rule: removes single-batch outliers (the first
    # batch included) before the EMA, keeps steps and trends.
    if x.size < 3:
        return x.copy()
    y = x.copy()
    y[1:-1] = np.median(np.stack([x[:-2], x[1:-1], x[2:]]), axis=0)
    y[0] = np.median([x[0], y[1], 3.0 * y[1] - 2.0 * y[2]])
    y[-1] = np.median([x[-1], y[-2], 3.0 * y[-2] - 2.0 * y[-3]])
    return y


_MEDIAN3_SD = math.sqrt(0.4487)  # SD of the median of 3 normal draws, in units of their SD


def _ema_noise_tv(m: int, beta: float, sd: float) -> float:
    # Expected total variation that white noise of SD `sd` alone leaves in the bias-corrected
    # EMA of m points: S_t - S_{t-1} = c_t (x_t - S_{t-1}), c_t = (1-b)/(1-b^(t+1)), and
    # Var(x_t - S_{t-1}) = sd^2 (1 + 1/n_eff(t)); E|N(0, s^2)| = s sqrt(2/pi).
    if m < 2:
        return 0.0
    t = np.arange(1, m, dtype=np.float64)
    c = (1.0 - beta) / (1.0 - beta ** (t + 1.0))
    return float(np.sum(math.sqrt(2.0 / math.pi) * sd * c * np.sqrt(1.0 + 1.0 / n_eff(t, beta))))


def _mad(a: FloatArray) -> float:
    return float(np.median(np.abs(a - np.median(a))))


def _spikes(
    x: FloatArray, smooth: FloatArray, z: float, window: int, min_steps: int, floor: float
) -> list[int]:
    # Steps where the raw loss x_k jumps above its expected level S_{k-1} + median residual by
    # more than z robust SDs (median/MAD of the previous `window` residuals x_j - S_{j-1}), and
    # stays above half that margin for min_steps steps (fewer at the very end). One per event.
    if x.size < 2:
        return []
    r = pd.Series(x[1:] - smooth[:-1])
    roll = r.rolling(window, min_periods=min(10, window))
    ref = smooth[:-1] + roll.median().shift(1).to_numpy(dtype=np.float64)
    mad = roll.apply(_mad, raw=True).shift(1).to_numpy(dtype=np.float64)
    margin = z * np.maximum(_MAD_TO_SD * mad, floor)
    flag = x[1:] - ref > margin
    starts = np.flatnonzero(flag & ~np.concatenate(([False], flag[:-1])))
    return [
        int(i) + 1
        for i in starts
        if np.all(x[1 + i : 1 + i + min_steps] - ref[i] > 0.5 * margin[i])
    ]


def _stability_curve(
    finite: FloatArray, start_loss: float | None, smooth_beta: float
) -> tuple[FloatArray, FloatArray]:
    # (EMA of the running median of 3, the median-filtered losses) of a burst's finite part.
    filtered = _median3(finite)
    if start_loss is not None and finite.size >= 2:
        # The given start stands before the first loss: the first point's median of three is
        # taken with it (not by the end-point rule), so one hard first batch does not start
        # the curve high, and a jump at the first update is not taken for the start.
        filtered[0] = np.median([start_loss, finite[0], filtered[1]])
    return ema(filtered, smooth_beta), filtered


def stability_curve(
    losses: npt.ArrayLike, *, start_loss: float | None = None, smooth_beta: float = 0.9
) -> FloatArray:
    """The smoothed loss that :func:`burst_stability` judges: a running median of 3 of the
    burst's losses up to the first non-finite one (so a one-batch spike is left out), then
    :func:`ema`. A report draws this curve, so what it shows is what the rules read.

    Args:
        losses: the burst's losses, one per step.
        start_loss: the loss at the initial weights, as given to :func:`burst_stability`.
        smooth_beta: the EMA's factor, as given to :func:`burst_stability`.

    Returns:
        One value per finite loss before the first non-finite one (empty when none).
    """
    x = np.asarray(losses, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(x))
    finite = x[: bad[0]] if bad.size else x
    return _stability_curve(finite, start_loss, smooth_beta)[0] if finite.size else finite


def burst_stability(
    losses: npt.ArrayLike,
    *,
    start_loss: float | None = None,
    smooth_beta: float = 0.9,
    catapult_tol: float = 0.1,
    noise_z: float = 4.0,
    spike_z: float = 6.0,
    spike_window: int = 50,
    spike_min_steps: int = 2,
    max_spikes: int = 1,
    tv_tol: float = 0.5,
    progress_floor: float = 0.05,
    min_points: int = 5,
) -> BurstSignals:
    """Judge whether a short training burst ran stably, from its per-step losses.

    Step ``k`` is position ``k`` of ``losses`` (the loss of the batch before update ``k``).
    The burst is read up to its first non-finite loss; :math:`S` is :func:`ema` of that part
    after a running median of 3 (at the first point Tukey's end-point rule, or, when
    ``start_loss`` is given, the median of it, the first loss and the second point), which
    removes single odd batches (USERS C1: EMA plus a robust filter); :math:`L_0` is
    ``start_loss``, else the first point of the median-filtered losses (so one lucky first
    batch does not set it); all quantities are relative to :math:`|L_0|`, so the defaults
    carry over between models. Batch noise is
    measured from second differences of the raw losses :math:`x` (which cancel a linear trend
    and damp slow changes, :math:`\\mathrm{Var}(\\Delta^2 x) = 6\\sigma^2`):
    :math:`\\sigma` (``noise``) is the RMS of :math:`\\Delta^2 x` over the burst, winsorised
    at 6 robust SDs (:math:`1.4826\\,\\mathrm{MAD}`), over :math:`\\sqrt 6` (under
    heavy-tailed noise the EMA's variation follows this SD, which the MAD alone understates);
    :math:`\\sigma_0` is the larger of :math:`\\sigma` and the robust SD over the first
    ``max(spike_window, 10)`` steps. Rules, each reported in ``reason``:

    - **nonfinite**: a ``nan``/``inf`` loss (outright divergence).
    - **catapult** (Kalra & Barkeshli, 2024): :math:`(\\max S - L_0) / |L_0| >`
      ``catapult_tol`` (default 10%) and :math:`\\max S - L_0 >` ``noise_z`` (default 4)
      :math:`\\sigma_0`, so that one lucky low first batch does not fire it.
    - **spikes**: more than ``max_spikes`` (default 1) events where the raw loss
      :math:`x_k` exceeds its expected level, :math:`S_{k-1}` plus the median of the residuals
      :math:`x_j - S_{j-1}` over the previous ``spike_window`` steps, by ``spike_z`` (default
      6) robust SDs (1.4826 MAD of those residuals), and stays above half that margin for
      ``spike_min_steps`` (default 2) steps. A damaged network stays worse on the next batches;
      a single odd batch does not, so it is not counted by default (``spike_min_steps=1``
      counts it).
    - **oscillation**: ``excess_tv`` :math:`>` ``tv_tol`` (default 0.5), where, with total
      variation :math:`V = \\sum_k |S_k - S_{k-1}|`, net decrease :math:`D = S_0 - S_{\\text{end}}`
      and :math:`V_\\sigma` the expected variation that white noise of SD ``noise`` alone leaves
      in the bias-corrected EMA of its running median of 3 (SD :math:`0.67\\sigma`), times
      :math:`1 + 4/\\sqrt n` (about three SDs of that variation over :math:`n` steps),

      .. math::

          \\text{excess\\_tv} = \\frac{\\max(0,\\; V - V_\\sigma - \\max(D, 0))}
          {\\max(D,\\; \\text{progress\\_floor} \\cdot |L_0|)}

      the up-and-down travel not explained by progress or noise, per unit of progress (the
      floor, default 5% of the start loss, keeps a burst that barely moved from dividing by
      ~0). ``tv_ratio`` :math:`= V / D` itself is reported too (1 for a monotone descent, large
      for oscillation; it also grows with noise and burst length, hence the rule on the excess:
      at 15% batch noise over 1000 steps a stable descent has ``tv_ratio`` near 10). When
      the smoothed loss ends above its start and at least half its travel beyond noise is
      that net rise, the rule is reported as **rise** instead (same test, same verdict).

    Args:
        losses:
            Per-step training losses of the burst.
        start_loss:
            Loss at the initial weights, e.g. a mean over a few batches (less noisy than the
            first batch, the default).
        smooth_beta:
            EMA decay for :math:`S`.
        catapult_tol:
            Relative rise above the start that counts as a catapult.
        noise_z:
            A catapult's rise must also exceed this many noise SDs.
        spike_z:
            Robust SDs above the running median for a spike.
        spike_window:
            Steps in the running median/MAD window of the spike rule.
        spike_min_steps:
            Steps a spike must last to count.
        max_spikes:
            Spike events tolerated.
        tv_tol:
            Largest ``excess_tv`` tolerated.
        progress_floor:
            Floor of the ``excess_tv`` denominator, relative to :math:`|L_0|`.
        min_points:
            Fewest finite losses needed to judge (``>= 3``).

    Returns:
        The signals; ``ok=False`` when fewer than ``min_points`` finite losses precede the
        first non-finite one (``unstable`` is then ``True`` only for a non-finite loss).

    Example:
        >>> steps = np.arange(200)
        >>> r = burst_stability(2.0 * np.exp(-steps / 80) + 0.5)
        >>> bool(r.unstable), round(r.tv_ratio, 3)
        (False, 1.0)
    """
    x = _as_1d(losses, "losses")
    _check_beta(smooth_beta, "smooth_beta")
    _check_count(spike_window, "spike_window", 1)
    _check_count(spike_min_steps, "spike_min_steps", 1)
    _check_count(max_spikes, "max_spikes")
    _check_count(min_points, "min_points", 3)
    if start_loss is not None and not math.isfinite(start_loss):
        raise ValueError(f"start_loss must be finite, but got start_loss={start_loss!r}")
    bad = np.flatnonzero(~np.isfinite(x))
    first_bad = int(bad[0]) if bad.size else -1
    xf = x[:first_bad] if bad.size else x
    nan = math.nan
    if xf.size < min_points:
        why = f"non-finite loss at step {first_bad}; " if bad.size else ""
        reason = f"{why}too few finite losses: {xf.size} < min_points={min_points}"
        _logger.info("burst_stability: %s", reason)
        return BurstSignals(
            ok=False, unstable=bool(bad.size), reason=reason, n_steps=int(x.size),
            nonfinite=bool(bad.size), first_nonfinite_step=first_bad,
            start_loss=float(start_loss) if start_loss is not None else nan,
            final_loss=math.inf if bad.size else nan, net_decrease=nan, rise_above_start=nan,
            tv_ratio=nan, excess_tv=nan, noise=nan, n_spikes=0, first_spike_step=-1,
        )  # fmt: skip
    # Finite losses near the float limit overflow below; the "overflow" rule reports them.
    with np.errstate(over="ignore", invalid="ignore"):
        smooth, filtered = _stability_curve(xf, start_loss, smooth_beta)
        start = float(start_loss) if start_loss is not None else float(filtered[0])
        scale = abs(start) or float(np.max(np.abs(xf))) or 1.0
        sd = _rms_noise_sd(xf)
        tv = float(np.sum(np.abs(np.diff(smooth))))
        net = float(smooth[0] - smooth[-1])
        eps = 1e-12 * scale
        tv_ratio = 1.0 if tv <= eps else (tv / net if net > eps else math.inf)
        # Inflated by 4/sqrt(n): about three SDs of the variation noise alone leaves (simulated
        # 1.2-1.6/sqrt(n) for smooth_beta 0.8-0.95), so a long flat noisy burst does not fire.
        noise_tv = _ema_noise_tv(smooth.size, smooth_beta, _MEDIAN3_SD * sd)
        noise_tv *= 1.0 + 4.0 / math.sqrt(smooth.size)
        wasted = max(0.0, tv - noise_tv - max(net, 0.0))
        excess_tv = wasted / max(net, progress_floor * scale)
        rise = float(np.max(smooth)) - start
        sd_start = max(_robust_noise_sd(xf[: max(spike_window, 10)]), sd)
        spikes = _spikes(xf, smooth, spike_z, spike_window, spike_min_steps, 1e-9 * scale)
        final = math.inf if bad.size else float(np.mean(xf[-math.ceil(0.1 * xf.size) :]))
    fired = []
    if bad.size:
        fired.append(f"nonfinite: first non-finite loss at step {first_bad}")
    if not all(math.isfinite(v) for v in (sd, tv, net, rise)):
        # finite losses so near the float limit that their differences overflow: the rules
        # below would compare with nan and stay silent
        fired.append("overflow: losses so large that their differences are not finite")
    if rise / scale > catapult_tol and rise > noise_z * sd_start:
        fired.append(
            f"catapult: smoothed loss rose {rise / scale:.1%} above the start {start:.4g} "
            f"(> catapult_tol={catapult_tol:.0%}, {rise / max(sd_start, eps):.1f} noise SDs)"
        )
    if len(spikes) > max_spikes:
        fired.append(
            f"spikes: {len(spikes)} loss spikes above spike_z={spike_z:g} robust SDs lasting "
            f"{spike_min_steps}+ steps (> max_spikes={max_spikes}), first at step {spikes[0]}"
        )
    if excess_tv > tv_tol and net < 0 and -net >= 0.5 * (tv - noise_tv):
        # The travel is mostly one way, up: the same rule, named for what the loss did.
        fired.append(
            f"rise: smoothed loss ended {-net / scale:.1%} above where it began "
            f"(excess_tv={excess_tv:.2f} > tv_tol={tv_tol:g})"
        )
    elif excess_tv > tv_tol:
        fired.append(
            f"oscillation: excess_tv={excess_tv:.2f} > tv_tol={tv_tol:g} (tv_ratio={tv_ratio:.2f})"
        )
    summary = (
        f"tv_ratio={tv_ratio:.2f}, excess_tv={excess_tv:.2f}, rise_above_start="
        f"{rise / scale:.1%}, n_spikes={len(spikes)}, net_decrease={(start - final) / scale:.1%}"
    )
    return BurstSignals(
        ok=True,
        unstable=bool(fired),
        reason=("unstable: " + "; ".join(fired)) if fired else f"stable: {summary}",
        n_steps=int(x.size),
        nonfinite=bool(bad.size),
        first_nonfinite_step=first_bad,
        start_loss=start,
        final_loss=final,
        net_decrease=(start - final) / scale,
        rise_above_start=rise / scale,
        tv_ratio=tv_ratio,
        excess_tv=excess_tv,
        noise=sd / scale,
        n_spikes=len(spikes),
        first_spike_step=spikes[0] if spikes else -1,
    )


# --------------------------------------------------------------------------------------------
# When the second moment has settled
# --------------------------------------------------------------------------------------------

_SETTLING_COLUMNS = ("step", "drift", "vhat_change", "kappa", "n_eff", "rel_error")


@dataclass(frozen=True)
class SettlingResult:
    """When Adam's second moment settled in a burst; see :func:`settling_step`."""

    settled: bool = field(metadata=_meta("bool", "all criteria held within the trace"))
    extrapolated: bool = field(metadata=_meta("bool", "settling_step is extrapolated"))
    settling_step: float = field(
        metadata=_meta("steps", "first settled step, or the extrapolated estimate; nan if none")
    )
    last_criterion: str = field(metadata=_meta("text", "criterion that settled last (or never)"))
    rel_error_step: float = field(metadata=_meta("steps", "when rel_error settled; nan if never"))
    drift_step: float = field(metadata=_meta("steps", "when drift settled; nan if never"))
    change_step: float = field(metadata=_meta("steps", "when vhat_change settled; nan if never"))
    beta2: float = field(metadata=_meta("1", "beta2 used (given, from the frame, or inferred)"))
    kappa: float = field(metadata=_meta("ratio", "last finite kappa of the trace"))
    reason: str = field(metadata=_meta("text", "how the answer was reached, with numbers"))
    last_step: float = field(
        default=math.nan,
        metadata=_meta("steps", "last update the trace observed (an unsettled trace's floor)"),
    )
    innovation: float = field(
        default=math.nan,
        metadata=_meta(
            "ratio",
            "median over the trace's second half of vhat_change per step / "
            "((1-beta2)/(1-beta2^t)), i.e. of |g^2 - v_hat| / v_hat (at most 2 for stationary "
            "gradients)",
        ),
    )
    change_estimate: float = field(
        default=math.nan,
        metadata=_meta(
            "steps", "closed-form step at which vhat_change per step reaches its tolerance"
        ),
    )
    rel_error_estimate: float = field(
        default=math.nan,
        metadata=_meta(
            "steps", "closed-form step at which rel_error reaches its tolerance (or saturation)"
        ),
    )
    not_extrapolated: str = field(
        default="",
        metadata=_meta(
            "text",
            "unsettled criteria with no closed form ('drift', 'vhat_change', joined by '/'), "
            "which make an extrapolated settling_step only a lower bound",
        ),
    )

    @property
    def lower_bound(self) -> bool:
        """The settling step is only a lower bound: the trace never settled, and a criterion
        that has no closed form (``not_extrapolated``) was still open, or the estimate is the
        last update observed (:attr:`at_floor`)."""
        return self.extrapolated and (bool(self.not_extrapolated) or self.at_floor)

    @property
    def decided_by(self) -> str:
        """Which closed form gave an extrapolated settling step: ``"rel_error"`` (from
        ``kappa``), ``"vhat_change"`` (from its innovation), ``"last update"`` (the floor);
        ``"measured"`` when settled, ``""`` when there is no step."""
        if self.settled:
            return "measured"
        if not self.extrapolated:
            return ""
        if self.at_floor:
            return "last update"
        if math.isfinite(self.change_estimate) and self.settling_step == self.change_estimate:
            return "vhat_change"
        return "rel_error"

    @property
    def at_floor(self) -> bool:
        """The trace never settled and the estimate is the last update it observed: a lower
        bound set by the trace's length, not by the extrapolation."""
        return self.extrapolated and self.settling_step <= self.last_step

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


def _typical(per_step: FloatArray, rows: int = 5) -> FloatArray:
    # The median of each row's and the rows' before it (up to `rows` in all, nan left out): the
    # typical change, which one large g^2 (a single row's jump) does not move.
    return pd.Series(per_step).rolling(rows, min_periods=1).median().to_numpy(dtype=np.float64)


def newest_weight(step: FloatArray, beta2: float) -> FloatArray:
    """``w_t = (1-beta2)/(1-beta2^t)``, the weight of the newest ``g^2`` in Adam's
    bias-corrected ``v_hat`` after update ``t`` (``1/t`` when ``beta2`` is unknown, i.e. near
    1; ``1`` at ``beta2 = 0``): ``vhat_change`` per update is about ``w_t`` times the
    innovation, the closed form :func:`settling_step` extrapolates."""
    step = np.asarray(step, dtype=np.float64)
    if math.isfinite(beta2) and beta2 > 0.0:
        return (1.0 - beta2) / -np.expm1(step * math.log(beta2))
    if beta2 == 0.0:
        return np.ones_like(step)
    return 1.0 / step


def change_tolerance(beta2: float, change_tol: float = CHANGE_TOL) -> float:
    """The ``vhat_change`` per update below which ``v_hat`` counts as settled: ``change_tol``,
    or Adam's stationary floor ``2(1-beta2)`` where that is larger (see :func:`settling_step`)."""
    return max(change_tol, 2.0 * (1.0 - beta2)) if math.isfinite(beta2) else change_tol


def _innovation(step: FloatArray, per_step: FloatArray, beta2: float) -> float:
    # Median over the second half of the rows of vhat_change per step / w_t (newest_weight).
    ratio = (per_step / newest_weight(step, beta2))[step.size // 2 :]
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else math.nan


def _steps_for_change(innovation: float, tol: float, beta2: float) -> float:
    # Solve w_t * innovation = tol for t (see settling_step); nan when there is no answer: no
    # innovation measured, one above the stationary bound of 2, or a level change above tol.
    if not (math.isfinite(innovation) and 0.0 <= innovation <= 2.0):
        return math.nan
    if not math.isfinite(beta2):  # w_t ~ 1/t
        return innovation / tol
    if beta2 == 0.0:  # w_t = 1
        return 1.0 if innovation <= tol else math.nan
    x = (1.0 - beta2) * innovation / tol
    return math.log1p(-x) / math.log(beta2) if x < 1.0 else math.nan


def _first_settled(ok: npt.NDArray[np.bool_], window: int | None) -> int:
    # First row from which `ok` holds to the end (window None) or for `window` rows; -1 if none.
    if window is None:
        tail = np.logical_and.accumulate(ok[::-1])[::-1]
    elif ok.size >= window:
        tail = np.convolve(ok.astype(np.int64), np.ones(window, np.int64), "valid") == window
    else:
        tail = np.zeros(0, dtype=bool)
    idx = np.flatnonzero(tail)
    return int(idx[0]) if idx.size else -1


def _infer_beta2(step: FloatArray, neff: FloatArray) -> float:
    # n_eff(t, b) rises from 1 (b=0) to t (b->1) for fixed t >= 2: solve it on the last usable
    # row. nan when n_eff ~ t (b2 too close to 1 to tell).
    from scipy.optimize import brentq

    for t, n in zip(step[::-1], neff[::-1], strict=True):
        if t >= 2 and abs(n - 1.0) <= 1e-12:
            return 0.0  # n_eff is 1 from the first update on only at beta2 = 0
        if t >= 2 and 1.0 < n < t * (1.0 - 1e-9):
            try:
                return float(brentq(_n_eff_gap, 0.0, 1.0 - 1e-12, args=(float(t), float(n))))
            except ValueError:  # no sign change: n_eff within rounding of t
                return math.nan
    return math.nan


def _n_eff_gap(beta2: float, t: float, n: float) -> float:
    return n_eff(t, beta2) - n


def settling_step(
    moment_stats: pd.DataFrame,
    *,
    rel_error_tol: float = 0.1,
    drift_band: tuple[float, float] = (2.0 / 3.0, 1.5),
    change_tol: float = CHANGE_TOL,
    saturation: float = 0.8,
    window: int | None = None,
    beta2: float | None = None,
) -> SettlingResult:
    """The first step after which Adam's second moment has settled.

    Reads the per-update frame of :class:`~autowarm.probe._moments.SecondMomentMonitor`
    (``to_frame()``; needed columns ``step, drift, vhat_change, kappa, n_eff, rel_error``, and
    ``beta2`` if present). A row passes when all three criteria hold (``nan`` fails):

    - **rel_error**: ``rel_error`` :math:`\\le` ``rel_error_tol`` (default 0.1: :math:`\\hat v`
      within about 10%, so Adam's step size within about 5%), or ``n_eff`` already at
      ``saturation`` (default 0.8) of its maximum :math:`(1+\\beta_2)/(1-\\beta_2)`, for when the
      tolerance is out of reach at this :math:`\\beta_2` (the floor
      :math:`\\sqrt{\\kappa (1-\\beta_2)/(1+\\beta_2)}` is 0.23 at :math:`\\beta_2=0.95`,
      :math:`\\kappa=2`);
    - **drift** inside ``drift_band`` (default 2/3 to 3/2: the short-window :math:`g^2` within
      a factor 1.5 of :math:`\\hat v`, so the step size within about 22%);
    - **vhat_change**, the change over one optimizer step (as the monitor reports it, also
      when it observes only every k-th update),
      :math:`\\le \\max(` ``change_tol`` :math:`, 2(1-\\beta_2))`; early on the change is
      about :math:`1/t` per step, and once stationary it is
      :math:`(1-\\beta_2)\\,\\mathrm{E}|g^2/\\hat v - 1| \\le 2(1-\\beta_2)` for any gradient
      distribution, the floor that keeps small :math:`\\beta_2` from never settling. The
      change compared is the typical one, the median of the row's and the four rows' before
      it, so that one large :math:`g^2` (a single row's jump) does not hold it unsettled.

    The settling step is the first row from which all rows pass to the end of the trace
    (``window=None``) or for ``window`` consecutive rows. ``last_criterion`` names the
    criterion that settled last by the same rule. If the trace never settles, the estimate is
    the latest of the last step seen and two closed forms, flagged ``extrapolated``:

    - **rel_error**: :math:`\\sqrt{\\kappa / n_\\text{eff}(t)} = ` ``rel_error_tol``
      (:func:`steps_for_n_eff` of :math:`\\min(\\kappa/\\text{tol}^2,\\ \\text{saturation}
      \\cdot (1+\\beta_2)/(1-\\beta_2))`, with the last finite :math:`\\kappa`);
    - **vhat_change**, when it is unsettled: Adam's bias-corrected update moves :math:`\\hat v`
      by :math:`w_t (g_t^2 - \\hat v_{t-1})` with :math:`w_t = (1-\\beta_2)/(1-\\beta_2^t)`, so
      the change per step divided by :math:`w_t` is the *innovation*
      :math:`m = \\lVert g^2 - \\hat v \\rVert_1 / \\lVert \\hat v \\rVert_1`, which stays
      level while :math:`w_t` falls. With :math:`\\hat m` its median over the trace's second
      half, the change reaches its tolerance :math:`c` where :math:`w_t \\hat m = c`:
      :math:`t = \\ln(1 - (1-\\beta_2)\\hat m / c) / \\ln \\beta_2` (``change_estimate``).
      Stationary gradients give :math:`\\hat m \\le 2`; a larger one means the gradient scale
      is still moving, which no closed form follows, and the estimate is not made.

    So the answer does not depend on how long the trace was, only on what it measured. Drift
    cannot be extrapolated: when it (or a vhat_change with no estimate, or rel_error without a
    finite ``kappa``) is unsettled, the estimate is only a lower bound (said in ``reason`` and
    ``not_extrapolated``). Only an empty trace gives ``nan``.

    :math:`\\beta_2` comes from the ``beta2`` argument, else the frame's ``beta2`` column
    (its minimum), else it is solved from ``step`` and ``n_eff``; ``nan`` (no saturation rule,
    :math:`n_\\text{eff}(t) \\approx t`) when :math:`\\beta_2` is too close to 1 to tell.

    Args:
        moment_stats:
            One row per observed update, in step order.
        rel_error_tol:
            Largest relative error of :math:`\\hat v` accepted.
        drift_band:
            ``(low, high)`` accepted for ``drift``.
        change_tol:
            Largest relative change of :math:`\\hat v` per step accepted.
        saturation:
            Fraction of the maximum ``n_eff`` that counts as settled, in ``(0, 1)``.
        window:
            Rows that must pass in a row; ``None``: every row to the end of the trace.
        beta2:
            Adam's :math:`\\beta_2`, overriding the frame.

    Returns:
        The settling step, or the extrapolated estimate, with the reason.

    Raises:
        TypeError: ``moment_stats`` is not a DataFrame.
        ValueError: a needed column is missing, or a setting is out of range.
    """
    if not isinstance(moment_stats, pd.DataFrame):
        raise TypeError(
            "moment_stats must be a pandas.DataFrame, "
            f"but got moment_stats of type {type(moment_stats).__name__}"
        )
    missing = [c for c in _SETTLING_COLUMNS if c not in moment_stats.columns]
    if missing:
        raise ValueError(
            f"moment_stats must have columns {list(_SETTLING_COLUMNS)}, missing {missing}"
        )
    lo, hi = drift_band
    if not (rel_error_tol > 0 and change_tol > 0 and 0 < lo < hi and 0 < saturation < 1):
        raise ValueError(
            "rel_error_tol > 0, change_tol > 0, 0 < drift_band[0] < drift_band[1] and "
            f"0 < saturation < 1 must hold, but got {rel_error_tol=}, {change_tol=}, "
            f"{drift_band=}, {saturation=}"
        )
    if window is not None:
        _check_count(window, "window", 1)
    if beta2 is not None:
        _check_beta(beta2, "beta2")
    df = moment_stats.sort_values("step", kind="stable")
    col = {c: df[c].to_numpy(dtype=np.float64) for c in _SETTLING_COLUMNS}
    step = col["step"]
    if beta2 is None and "beta2" in df.columns and df["beta2"].notna().any():
        beta2 = float(df["beta2"].min())
        _check_beta(beta2, "moment_stats['beta2']")
    b2 = beta2 if beta2 is not None else _infer_beta2(step, col["n_eff"])
    finite_kappa = col["kappa"][np.isfinite(col["kappa"])]
    kappa = float(finite_kappa[-1]) if finite_kappa.size else math.nan
    cap = (1.0 + b2) / (1.0 - b2) if math.isfinite(b2) else math.inf
    change_cap = change_tolerance(b2, change_tol)
    per_step = col["vhat_change"]
    with np.errstate(invalid="ignore", divide="ignore"):
        innovation = _innovation(step, per_step, b2)
        crit = {
            "rel_error": (col["rel_error"] <= rel_error_tol) | (col["n_eff"] >= saturation * cap),
            "drift": (col["drift"] >= lo) & (col["drift"] <= hi),
            "vhat_change": _typical(per_step) <= change_cap,
        }
    change_estimate = _steps_for_change(innovation, change_cap, b2)
    first = {k: _first_settled(ok, window) for k, ok in crit.items()}
    overall = _first_settled(np.logical_and.reduce(list(crit.values())), window)
    last = max(first, key=lambda k: first[k] if first[k] >= 0 else math.inf)
    at = {k: float(step[i]) if i >= 0 else math.nan for k, i in first.items()}
    common: dict[str, Any] = {
        "last_criterion": last if step.size else "",
        "rel_error_step": at["rel_error"],
        "drift_step": at["drift"],
        "change_step": at["vhat_change"],
        "beta2": b2,
        "kappa": kappa,
        "last_step": float(step[-1]) if step.size else math.nan,
        "innovation": innovation,
        "change_estimate": change_estimate,
    }
    detail = ", ".join(
        f"{k} settled at update {v:g}" if math.isfinite(v) else f"{k} not yet"
        for k, v in at.items()
    )
    if overall >= 0:
        reason = f"settled at update {step[overall]:g}; last to settle: {last} ({detail})"
        return SettlingResult(
            settled=True, extrapolated=False, settling_step=float(step[overall]),
            reason=reason, **common,
        )  # fmt: skip
    if not step.size:
        reason = "no settling step: empty trace"
        _logger.info("settling_step: %s", reason)
        return SettlingResult(
            settled=False, extrapolated=False, settling_step=math.nan, reason=reason, **common
        )
    open_ = [k for k, i in first.items() if i < 0] or ["all three together"]
    estimate = float(step[-1])
    unknown = {"drift"} & set(open_)
    if math.isfinite(kappa):
        need = min(kappa / rel_error_tol**2, saturation * cap)
        t_star = steps_for_n_eff(need, b2) if math.isfinite(b2) else need
        estimate = max(t_star, estimate)
        closed = (
            f"rel_error = sqrt(kappa/n_eff(t)) with kappa={kappa:.3g}, beta2={b2:.6g} reaches "
            f"{rel_error_tol:g} (or saturation) at n_eff={need:.4g}, t={t_star:.1f}"
        )
    else:
        # No kappa (every sampled coordinate's mean was zero, or underflowed): rel_error has
        # no closed form, but what vhat_change measured still counts.
        t_star = math.nan
        closed = "kappa unknown: rel_error has no closed form"
        if "rel_error" in open_:
            unknown.add("rel_error")
    reason = f"not settled by update {step[-1]:g} ({', '.join(open_)} unsettled; {detail}); "
    reason += closed
    if "vhat_change" in open_:
        if math.isfinite(change_estimate):
            estimate = max(estimate, change_estimate)
            reason += (
                f"; vhat_change per step = innovation * (1-beta2)/(1-beta2^t) with innovation "
                f"{innovation:.3g} reaches {change_cap:g} at t={change_estimate:.1f}"
            )
        else:
            unknown.add("vhat_change")
            reason += f"; vhat_change has no closed form here (innovation {innovation:.3g})"
    not_extrapolated = "/".join(sorted(unknown))
    if unknown:
        reason += f"; only a lower bound: {not_extrapolated} cannot be extrapolated"
    return SettlingResult(
        settled=False, extrapolated=True, settling_step=estimate, reason=reason,
        rel_error_estimate=t_star, not_extrapolated=not_extrapolated, **common,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Tidy table
# --------------------------------------------------------------------------------------------


def signals_frame(*results: object) -> pd.DataFrame:
    """Tidy table of result dataclasses: one row per field.

    Columns: ``source`` (the dataclass name), ``name``, ``value`` (``float``: numbers and
    booleans as 0/1, ``nan`` for text), ``text`` (the value as text), ``unit`` and
    ``description`` (from the field's metadata, empty when absent).

    Args:
        *results:
            Dataclass instances, e.g. :class:`RangeTestResult`, :class:`BurstSignals`,
            :class:`SettlingResult`, ``MomentStats``.

    Returns:
        The table, with plain ``str`` and ``float`` columns.

    Raises:
        TypeError: an argument is not a dataclass instance.

    Example:
        >>> signals_frame(burst_stability([3.0, 2.0, 1.5, 1.2, 1.0])).loc[1, ["name", "value"]]
        name     unstable
        value         0.0
        Name: 1, dtype: object
    """
    rows = []
    for r in results:
        if not is_dataclass(r) or isinstance(r, type):
            raise TypeError(
                "results must be dataclass instances, "
                f"but got an object of type {type(r).__name__}"
            )
        for f in fields(r):
            v = getattr(r, f.name)
            number = isinstance(v, (bool, int, float, np.number))
            rows.append(
                {
                    "source": type(r).__name__,
                    "name": f.name,
                    "value": float(v) if number else math.nan,
                    "text": str(v),
                    "unit": str(f.metadata.get("unit", "")),
                    "description": str(f.metadata.get("description", "")),
                }
            )
    columns = ["source", "name", "value", "text", "unit", "description"]
    return pd.DataFrame(rows, columns=columns).astype({"value": np.float64})
