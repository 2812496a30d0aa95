"""The probe's plan: a range test, a ladder of peak bursts, a warmup check, then the decision.

1. **Range test** (Smith, 2017): an exponential LR sweep from the initial weights, stopped at
   divergence. Its lowest smoothed loss (held within two decades of the divergence LR) is the
   *edge*: the largest LR worth trying as a peak.
2. **Peak ladder**: equal bursts from the initial weights (a short linear ramp, then the
   candidate peak) at a tenth and a third of the edge, then one half-decade further in the
   better direction. Bursts that blow up or trip a stability rule (non-finite loss, a catapult
   above the starting loss, spikes, oscillation; ``signals.burst_stability``) are out; among
   the rest, the smallest peak whose tail loss is within one standard error of the lowest wins.
3. **Warmup**: a burst at the chosen peak without any ramp, compared step for step with the
   ladder's ramped burst at that peak (same initial weights, same batches, so the difference is
   paired and its noise is small). If the no-ramp burst is unstable or worse beyond noise, the
   peak needs the ramp, and the ramp carries to the run as the same *fraction* of it: the
   ladder's bursts are the start of the schedule compressed, and compressed trials predict a
   full run best when warmup keeps its fraction (Wu et al. 2018; the study's rank benchmark).
   If no candidate was stable at all, a warmup search (``W`` doubling, then one bisection,
   halving the peak when no affordable ramp is stable) takes over at the range test's rule of
   thumb (edge / 10); its answer is the smallest stable ramp in steps, a lower bound.
4. **Second moment**: Adam's ``v_hat`` statistics recorded during the bursts (noise ``kappa``,
   drift of ``g^2`` against ``v_hat``, step-to-step change) give the step at which the
   preconditioner has settled (``signals.settling_step``; when the bursts are shorter,
   extrapolated in closed form from ``kappa`` and from the size of ``v_hat``'s updates, so the
   answer does not grow with the budget). Warmup shorter than that leaves Adam's first updates
   normalised by a poor estimate of the gradient scale.

The warmup is the larger of the loss signals' answer and the settling step, so the rationale can
say which signal decided.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from autowarm.probe import signals as sig
from autowarm.probe._bursts import MOMENT_COLUMNS, BurstResult, ProbeRunner

_log = logging.getLogger("autowarm")


class NoUsableLR(Exception):
    """Every LR the probe tried diverged; the caller attaches the trace."""


@dataclass(frozen=True)
class SearchSettings:
    """Knobs of the probe plan (all relative, so they carry to a model never seen)."""

    lr_min: float = 1e-7
    lr_max: float = 10.0
    range_test_share: float = 0.25  # of the budget, for the sweep
    range_test_min_steps: int = 16
    range_test_max_steps: int = 150
    # The sweep's loss EMA averages about this many decades of LR, whatever the sweep's length,
    # so its lag, and the edge read from it, do not move with the budget: 10 points (EMA factor
    # 0.9, as LR finders smooth) of a 50-point sweep over the 8 decades from lr_min to lr_max.
    range_test_smooth_decades: float = 10 * 8 / 49
    ladder_share: float = 0.2  # of the budget, per peak-ladder burst (3 bursts, 4 if refined)
    # Of each ladder burst, the linear ramp to its peak; also the warmup, as a fraction of the
    # run, when the no-ramp burst shows the chosen peak needs its ramp.
    ladder_ramp_fraction: float = 0.25
    tie_se: float = 1.0  # the one-standard-error rule between peak candidates
    refine: bool = False  # a quarter-decade burst between the best and the next larger peak
    ladder_min_steps: int = 12
    peak_divisor: float = 10.0  # fallback peak = sweep's min-loss LR / this (choose_peak)
    max_warmup_fraction: float = 0.5  # of total_steps
    # Settled when v_hat is within ~25% of E[g^2] (Adam's step within ~12%), and the gradient
    # scale is not running ahead of v_hat by more than 1.5x. Shrinking gradients (drift < 1)
    # make Adam's steps smaller than intended, which is safe, so the band is open below.
    rel_error_tol: float = 0.25
    # kappa read over the coordinates with a gradient at every update only (a variant, off)
    dense_kappa: bool = False
    drift_band: tuple[float, float] = (1e-3, 1.5)


_ACTIVE: contextvars.ContextVar[SearchSettings | None] = contextvars.ContextVar(
    "autowarm_search_settings", default=None
)


def active_settings() -> SearchSettings:
    """The plan ``suggest`` runs: the defaults, or those of an enclosing :func:`use_settings`."""
    return _ACTIVE.get() or SearchSettings()


@contextlib.contextmanager
def use_settings(settings: SearchSettings) -> Iterator[SearchSettings]:
    """Within the block (this thread or task only), ``suggest`` plans its probe with ``settings``.

    For measuring a variant of the probe with the benchmark (``autowarm bench eval
    --probe-setting``), not a user-facing knob: the defaults are what the benchmark supports.
    """
    token = _ACTIVE.set(settings)
    try:
        yield settings
    finally:
        _ACTIVE.reset(token)


def parse_settings(pairs: Iterable[str]) -> dict[str, Any]:
    """``["lr_min=1e-6", "refine=true"]`` as typed :class:`SearchSettings` overrides.

    Each value is read as the type of the field's default (``true``/``false`` for flags, two
    numbers separated by ``,`` or ``:`` for ``drift_band``); the result builds
    ``SearchSettings(**result)``.

    Raises:
        ValueError: For a pair without ``=``, an unknown field (the message lists them), or a
            value that does not read as the field's type.
    """
    defaults = SearchSettings()
    names = [f.name for f in dataclasses.fields(SearchSettings)]
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key:
            raise ValueError(f"a probe setting is KEY=VALUE such as lr_min=1e-6, but got {pair!r}")
        if key not in names:
            raise ValueError(
                f"unknown probe setting {key!r}; the settings are: {', '.join(names)}"
            )
        out[key] = _read_as(getattr(defaults, key), text, key)
    return out


def _read_as(default: Any, text: str, key: str) -> Any:
    try:
        return _convert(default, text)
    except ValueError:
        raise ValueError(
            f"probe setting {key!r} takes a value like its default "
            f"{settings_label({key: default})}, but got {text!r}"
        ) from None


def _convert(default: Any, text: str) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, tuple):
        values = tuple(float(x) for x in text.replace(":", ",").split(","))
        if len(values) != len(default):
            raise ValueError(text)
        return values
    raise TypeError(f"a setting of type {type(default).__name__} cannot be read from text")


def settings_label(overrides: dict[str, Any]) -> str:
    """``key=value`` pairs, sorted and comma-joined (a pair's tuple joined by ``:``).

    ``parse_settings(label.split(","))`` reads it back.
    """

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, tuple):
            return ":".join(fmt(x) for x in v)
        return repr(v) if isinstance(v, float) else str(v)  # repr: exact, so it reads back

    return ",".join(f"{k}={fmt(overrides[k])}" for k in sorted(overrides))


@dataclass
class BurstVerdict:
    """One warmup burst and what the stability rules said about it."""

    burst: BurstResult
    signals: sig.BurstSignals

    @property
    def stable(self) -> bool:
        return not self.signals.unstable and not self.burst.diverged


@dataclass
class ProbeOutcome:
    """The decision and the evidence behind it."""

    peak_lr: float
    warmup_steps: int
    deciding_signal: str
    confidence: str  # "high" or "low"
    reasons: list[str]
    range_test: sig.RangeTestResult
    verdicts: list[BurstVerdict]
    settling: sig.SettlingResult | None
    peak_reductions: int
    warmup_from_bursts: int | None
    notes: list[str] = field(default_factory=list)
    # the no-ramp check at the chosen peak, in words (None when it did not run)
    warmup_why: str | None = None


def range_test_lrs(n: int, lr_min: float, lr_max: float) -> list[float]:
    """``n`` log-spaced LRs from ``lr_min`` to ``lr_max``."""
    return [float(x) for x in np.geomspace(lr_min, lr_max, n)]


def choose_peak(rt: sig.RangeTestResult, divisor: float) -> tuple[float, str]:
    """Peak LR from the range test, and the sentence that explains it.

    The LR of minimum smoothed loss is the last LR of the sweep that still improved the loss
    (it is at most the divergence LR). A full run spends thousands of steps at its peak,
    starting from the initial weights rather than from a model the sweep has already trained,
    so the peak is set ``divisor`` below that edge: fastai's "minimum / 10" rule (Smith's
    range test read conservatively). The steepest-descent point is reported but not used: on
    a fast sweep it lags into the unstable region.
    """
    edge = rt.min_loss_lr
    if rt.diverged and math.isfinite(rt.diverge_lr):
        # The loss minimum of a sweep sits at most about two decades below the LR where it
        # diverges; an earlier minimum is batch noise on the flat start of the sweep.
        edge = rt.diverge_lr if not math.isfinite(edge) else edge
        edge = min(max(edge, rt.diverge_lr / 100.0), rt.diverge_lr)
    peak = edge / divisor
    why = (
        f"peak = {peak:.3g}: the sweep's lowest smoothed loss at lr {edge:.3g}, divided by "
        f"{divisor:.3g}"
    )
    return peak, why


def ramp_lrs(peak: float, warmup: int, hold: int) -> list[float]:
    """Linear warmup from 0 over ``warmup`` steps (the schedule convention), then ``hold``."""
    ramp = [peak * (s / warmup) for s in range(warmup)] if warmup > 0 else []
    return ramp + [peak] * hold


def _judge(burst: BurstResult, start_loss: float | None = None) -> BurstVerdict:
    # The start is the loss at the initial weights over several batches (``start_loss``, from
    # the range test), else the median-filtered first losses: one easy first batch must not
    # make the rest of the burst look like a catapult, and a catapult from the first update
    # must not become the start.
    signals = sig.burst_stability(burst.losses, start_loss=start_loss)
    if burst.diverged:
        last = burst.rows[-1]
        what = "a non-finite loss" if not last["finite"] else f"loss {last['loss']:.4g}"
        signals = dataclasses.replace(
            signals,
            unstable=True,
            reason=f"blew up: {what} at step {last['step']} (lr {last['lr']:.3g}), stopped early",
        )
    return BurstVerdict(burst, signals)


def _drop_isolated_nonfinite(
    lrs: list[float], losses: list[float]
) -> tuple[list[float], list[float], list[int]]:
    # A non-finite loss followed by a finite one is a bad batch (the step was skipped), not the
    # sweep's divergence; only the trailing run of non-finite losses marks divergence. Also
    # returns the sweep step of each kept point, to map positions back to the trace.
    kept = [
        i
        for i, x in enumerate(losses)
        if math.isfinite(x) or i == len(losses) - 1 or not math.isfinite(losses[i + 1])
    ]
    return [lrs[i] for i in kept], [losses[i] for i in kept], kept


def _moment_frame(
    runner: ProbeRunner, verdicts: list[BurstVerdict], chosen: BurstVerdict | None = None
) -> pd.DataFrame | None:
    # Settling is read on the longest stable burst (else the longest one), and among equally
    # long ones on the chosen peak's: its ramp and its peak are the regime the real run will
    # see (the ladder's bursts are equally long; the smallest peak's used to be read).
    if not verdicts or runner.has_second_moment is False:
        return None
    stable = [v for v in verdicts if v.stable]
    pool = stable or verdicts
    longest = max(v.burst.steps for v in pool)
    pool = [v for v in pool if v.burst.steps == longest]
    pick = next((v for v in pool if v is chosen), pool[0]).burst
    frame = pd.DataFrame(pick.rows)
    if frame.empty or frame["vhat_mean"].isna().all():
        return None
    # Statistics are read after each update that stepped: not after a non-finite step, nor one
    # the AMP loss scaler skipped (its row has no statistics, and Adam's count did not move,
    # so a skipped row read as a failed one would hold the trace unsettled to its end). The
    # monitor observes every update, so the k-th kept row is Adam's update k.
    stepped = frame["finite"].astype(bool)
    if "skipped" in frame:
        stepped &= ~frame["skipped"].astype(bool)
    frame = frame.loc[stepped, ["step", *MOMENT_COLUMNS]].reset_index(drop=True)
    frame["step"] = np.arange(1, len(frame) + 1)
    return frame


def _range_test(
    runner: ProbeRunner, settings: SearchSettings, reasons: list[str]
) -> sig.RangeTestResult:
    budget = runner.budget.total
    n_rt = int(
        min(
            settings.range_test_max_steps,
            max(settings.range_test_min_steps, round(settings.range_test_share * budget)),
        )
    )
    beta = sweep_smoothing(n_rt, settings)
    rt_burst = runner.run(
        range_test_lrs(n_rt, settings.lr_min, settings.lr_max),
        phase="range_test",
        peak_lr=math.nan,
        warmup_steps=0,
        smooth_beta=beta,
    )
    norms = [r["grad_norm"] for r in rt_burst.rows if r.get("finite")]
    if len(norms) >= 2 and all(n == 0.0 for n in norms):
        # No LR can move a parameter: a bug in the loss, not a property of the model.
        raise ValueError(
            f"the gradient was 0 for every parameter at all {len(norms)} steps of the range "
            "test, so no LR can train the model: check that the loss depends on the model's "
            "parameters (not a detached output, a product with 0, or an integer loss)"
        )
    skip_begin = max(1, min(10, n_rt // 10))
    runner.start_loss = _initial_loss(rt_burst, max(3, skip_begin))
    rt_lrs, rt_losses, rt_steps = _drop_isolated_nonfinite(rt_burst.lrs, rt_burst.losses)
    rt = sig.range_test(rt_lrs, rt_losses, smooth_beta=beta, skip_begin=skip_begin, skip_end=1)
    if rt.diverged:
        # range_test counts the points it was given; the trace counts the sweep's steps.
        rt = dataclasses.replace(rt, diverge_index=rt_steps[rt.diverge_index])
    if rt_burst.diverged and not rt.diverged and rt_burst.rows:
        # The runner stopped the sweep (a non-finite loss, or smoothed loss past the factor)
        # before the analysis window saw it: that LR is the divergence edge.
        rt = dataclasses.replace(
            rt, diverged=True, diverge_lr=rt_burst.lrs[-1], diverge_index=len(rt_burst.rows) - 1
        )
    if not rt.ok:
        reasons.append(f"range test inconclusive: {rt.reason}")
    if rt.flat and not rt.diverged:
        # a slow starter (a recurrent net, a deep narrow one) more often than a trained
        # model, which mostly diverges somewhere in the sweep before it moves
        reasons.append(
            f"the loss hardly moved in the range test (down {rt.descent:.1%} at most): a model "
            "that learns little in so few steps, or one already trained; the peak rests on the "
            "bursts alone"
        )
    if rt.diverged and rt.flat and _early_minimum(rt, settings.lr_min):
        raise NoUsableLR(
            f"the range test diverged at lr {rt.diverge_lr:.3g} and no LR before it lowered "
            f"the loss (descent {rt.descent:.1%}, lowest at the start of the sweep)"
        )
    if rt.diverged and rt.flat:
        # Slow starters hardly move in a short sweep, but their lowest loss comes late in it;
        # the bursts below test the LRs under that point.
        reasons.append(
            f"the range test diverged at lr {rt.diverge_lr:.3g} before the loss fell much "
            f"(descent {rt.descent:.1%}): a model that learns little in so few steps; the "
            "peak rests on the bursts below that LR"
        )
    return rt


def sweep_smoothing(n: int, settings: SearchSettings) -> float:
    """EMA factor of an ``n``-point sweep that averages ``range_test_smooth_decades`` of LR.

    A fixed factor (0.9, about 10 points) lags a fixed number of points, which is 1.3 decades
    of a 16-point sweep over 8 decades and 0.5 of a 150-point one: the sweep's edge, and every
    peak the ladder tries below it, would move with the budget alone.
    """
    decades_per_point = math.log10(settings.lr_max / settings.lr_min) / max(1, n - 1)
    return max(0.0, 1.0 - decades_per_point / settings.range_test_smooth_decades)


def _initial_loss(sweep: BurstResult, n: int) -> float | None:
    """The loss at the initial weights: the median over the sweep's first ``n`` batches.

    The sweep starts ``lr_min`` (1e-7) low, so its first steps leave the weights as they were,
    and every later burst replays the same batches from the same weights: its first losses
    are these. A median over several batches, not the first batch alone, is the reference of
    the bursts' blow-up and catapult rules.
    """
    first = [x for x in sweep.losses[:n] if math.isfinite(x)]
    return float(np.median(first)) if first else None


def _early_minimum(rt: sig.RangeTestResult, lr_min: float) -> bool:
    # The lowest smoothed loss sits in the first quarter (in log LR) of the swept range.
    if not (math.isfinite(rt.min_loss_lr) and math.isfinite(rt.diverge_lr)):
        return False
    span = math.log(rt.diverge_lr / lr_min)
    return span > 0 and math.log(rt.min_loss_lr / lr_min) < 0.25 * span


def _tail_width(n: int) -> int:
    # The tail every burst comparison reads: the last quarter, at least 5 steps (at most n).
    return min(n, max(5, n // 4))


def _tail_loss(burst: BurstResult) -> float:
    # Mean raw loss over the last quarter of the burst (at least 5 steps): the comparison
    # between candidate peaks. Non-finite or blown-up bursts lose.
    losses = burst.losses
    if burst.diverged or not losses:
        return math.inf
    tail = losses[len(losses) - _tail_width(len(losses)) :]
    return float(np.mean(tail)) if all(math.isfinite(x) for x in tail) else math.inf


def _paired_tails(a: BurstResult, b: BurstResult) -> tuple[np.ndarray, np.ndarray, str]:
    # The last quarter of ``a`` (at least 5 steps) and the same steps of ``b``. Probe bursts
    # start from the same weights and see the same batches, so step-for-step differences
    # cancel the batch noise that both share.
    n = len(a.losses)
    width = _tail_width(n)
    tail_a = np.asarray(a.losses[n - width : n], dtype=float)
    tail_b = np.asarray(b.losses[n - width : n], dtype=float)
    return tail_a, tail_b, f"steps {n - width}-{n - 1}"  # the trace's numbering, from 0


def _paired_se(diff: np.ndarray) -> float:
    # Standard error of the mean paired difference (inf when it cannot be measured).
    if diff.size < 2 or not np.isfinite(diff).all():
        return math.inf
    return float(diff.std(ddof=1)) / math.sqrt(diff.size)


def needs_ramp(
    no_ramp: BurstVerdict, ramped: BurstVerdict, *, tie_se: float = 1.0
) -> tuple[bool, str]:
    """Does the peak need its ramp? The no-ramp burst against the ramped one, step for step.

    Both bursts start from the same weights and see the same batches, so their losses at the
    same step differ by the schedule alone plus a little noise: the mean paired difference over
    the last quarter of the no-ramp burst (at least 5 steps) is compared with its standard
    error. The ramp is needed when the no-ramp burst is unstable, non-finite there, or worse
    by more than ``tie_se`` standard errors. Returns the answer and the sentence behind it.
    """
    a, b, where = _paired_tails(no_ramp.burst, ramped.burst)
    if not no_ramp.stable:
        return True, f"without a ramp the peak was unstable ({no_ramp.signals.reason})"
    if a.size < 2 or a.size != b.size or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return True, f"without a ramp the loss was not finite over {where}"
    diff = a - b
    mean = float(diff.mean())
    se = _paired_se(diff)
    verdict = (
        f"without a ramp the loss over {where} was {a.mean():.4g} against {b.mean():.4g} with "
        f"it (paired difference {mean:+.3g}, standard error {se:.2g})"
    )
    return mean > tie_se * se, verdict


def _peak_ladder(
    runner: ProbeRunner,
    edge: float,
    length: int,
    ramp: int,
    reasons: list[str],
    *,
    tie_se: float = 1.0,
    refine: bool = True,
) -> tuple[list[BurstVerdict], BurstVerdict | None]:
    """Equal bursts at peaks up to the sweep's edge; the one-standard-error rule picks one.

    Every candidate gets the same short ramp and the same number of steps from the initial
    weights, so their tail losses compare like with like. Candidates are ``edge / 10**(k/4)``:
    first ``k = 4`` and ``k = 2`` (a tenth and a third of the edge), then one half-decade step
    in the better direction (``k = 0``, the edge itself, or ``k = 6``), then the quarter-decade
    point between the best and the next larger peak tried. A candidate that blows up or trips
    a stability rule is out. Short bursts flatter large LRs (instability can take longer to
    show), so the choice is the smallest peak whose tail loss is within one standard error of
    the lowest: the one-standard-error rule. The bursts replay the same batches, so the
    difference is taken step for step and its standard error is that of the paired
    differences (the batch noise both bursts share cancels).
    """
    verdicts: dict[int, BurstVerdict] = {}

    def tried(k: int) -> BurstVerdict | None:
        if k in verdicts:
            return verdicts[k]
        if runner.budget.left < length:
            return None
        peak = edge / 10 ** (k / 4)
        burst = runner.run(
            ramp_lrs(peak, ramp, length - ramp),
            phase="peak_ladder",
            peak_lr=peak,
            warmup_steps=ramp,
        )
        verdicts[k] = _judge(burst, runner.start_loss)
        return verdicts[k]

    def score(v: BurstVerdict | None) -> float:
        return math.inf if v is None or not v.stable else _tail_loss(v.burst)

    def within_noise(v: BurstVerdict, best: BurstVerdict) -> bool:
        mine, theirs, _ = _paired_tails(v.burst, best.burst)
        diff = mine - theirs
        return float(diff.mean()) <= tie_se * _paired_se(diff)

    def pick() -> int | None:
        finite = {k: v for k, v in verdicts.items() if math.isfinite(score(v))}
        if not finite:
            return None
        best = finite[min(finite, key=lambda k: score(finite[k]))]
        tied = [k for k, v in finite.items() if within_noise(v, best)]
        return max(tied)  # largest k = smallest peak

    low, high = tried(4), tried(2)
    third = 0 if score(high) < score(low) else 6
    if tried(third) is None:
        # Without the third candidate the pick may sit at the edge of what was searched.
        untried = [edge / 10 ** (j / 4) for j in (4, 2, third) if j not in verdicts]
        reasons.append(
            f"the budget ran out before the peak ladder could try "
            f"{', '.join(f'{p:.3g}' for p in untried)}, so the peak may lie outside the "
            f"candidates tried: pass budget_steps of at least "
            f"{runner.budget.total - runner.budget.left + len(untried) * length} "
            f"(the range test and three {length}-step bursts)"
        )
    k = pick()
    if refine and k is not None and k - 2 in verdicts and k - 1 not in verdicts:
        tried(k - 1)
        k = pick()
    if k is None:
        reasons.append("no peak candidate trained stably in the ladder")
    ordered = [verdicts[j] for j in sorted(verdicts, reverse=True)]
    return ordered, (None if k is None else verdicts[k])


def run_search(
    runner: ProbeRunner, *, total_steps: int, settings: SearchSettings, beta2: float | None = None
) -> ProbeOutcome:
    """Run the probe's bursts within ``runner.budget`` and decide warmup and peak."""
    reasons: list[str] = []
    rt = _range_test(runner, settings, reasons)
    edge, _ = choose_peak(rt, 1.0)
    if not math.isfinite(edge) or edge <= 0:
        raise NoUsableLR(
            f"the range test found no LR that lowered the loss (sweep from {settings.lr_min:g}; "
            f"{rt.reason})"
        )
    budget = runner.budget.total
    length = max(settings.ladder_min_steps, round(settings.ladder_share * budget))
    ramp = int(length * settings.ladder_ramp_fraction)
    ladder, best = _peak_ladder(
        runner, edge, length, ramp, reasons, tie_se=settings.tie_se, refine=settings.refine
    )
    hold = length - ramp
    warmup_why: str | None = None
    if best is None:
        # Fall back on the range-test rule and look for a ramp that makes it stable.
        peak, peak_why = choose_peak(rt, settings.peak_divisor)
        warm, w_stable, reductions, peak = _warmup_search(runner, peak, hold, reasons)
        verdicts = ladder + warm
    else:
        peak = best.burst.peak_lr
        tails = ", ".join(
            f"{v.burst.peak_lr:.3g}: {_tail_loss(v.burst):.4g}"
            + ("" if v.stable else " (unstable)")
            for v in ladder
        )
        peak_why = (
            f"peak = {peak:.3g}: the smallest peak within noise of the lowest loss after "
            f"{length}-step bursts (a {ramp}-step ramp, then the peak) among peaks up to the "
            f"sweep's edge {edge:.3g} (tail losses {tails})"
        )
        verdicts = list(ladder)
        w_stable, reductions = ramp, 0
        n0 = min(length, runner.budget.left)
        if ramp > 0 and n0 >= settings.ladder_min_steps:
            v0 = _judge(
                runner.run(ramp_lrs(peak, 0, n0), phase="warmup", peak_lr=peak, warmup_steps=0),
                runner.start_loss,
            )
            verdicts.append(v0)
            needed, why = needs_ramp(v0, best, tie_se=settings.tie_se)
            if needed:
                w_stable = round(ramp / length * total_steps)
                warmup_why = (
                    f"{why}; the ladder's {ramp}-step ramp is {ramp / length:.0%} of its "
                    f"{length}-step bursts, which carries to the run as {w_stable} steps"
                )
            else:
                w_stable = 0
                warmup_why = f"{why}, so the peak trains without a ramp"
        elif ramp > 0:
            warmup_why = (
                f"no budget was left for a burst without a ramp ({n0} steps); the ladder's "
                f"{ramp}-step ramp stands, in steps"
            )
    settling = _settling(runner, verdicts, settings, beta2, best)
    return _decide(
        peak,
        peak_why,
        warmup_why,
        rt,
        verdicts,
        w_stable,
        reductions,
        settling,
        total_steps,
        settings,
        reasons,
    )


def _settling_description(st: sig.SettlingResult) -> str:
    if st.settled:
        return "v_hat settled (measured)"
    if st.at_floor:
        return "v_hat not settled by the last update observed (a lower bound)"
    if not st.extrapolated:
        return "no settling step could be read (nan)"
    bound = (
        f"; only a lower bound: {st.not_extrapolated} cannot be extrapolated"
        if st.not_extrapolated
        else ""
    )
    return f"v_hat settled (extrapolated from {st.decided_by}{bound})"


def _ceil_steps(settling: sig.SettlingResult | None) -> int:
    if settling is None or not math.isfinite(settling.settling_step):
        return 0
    return math.ceil(settling.settling_step)


def _settling(
    runner: ProbeRunner,
    verdicts: list[BurstVerdict],
    settings: SearchSettings,
    beta2: float | None,
    chosen: BurstVerdict | None = None,
) -> sig.SettlingResult | None:
    frame = _moment_frame(runner, verdicts, chosen)
    if frame is None or len(frame) < 3:
        return None
    return sig.settling_step(
        frame, rel_error_tol=settings.rel_error_tol, drift_band=settings.drift_band, beta2=beta2
    )


def _warmup_search(
    runner: ProbeRunner, peak: float, hold: int, reasons: list[str]
) -> tuple[list[BurstVerdict], int | None, int, float]:
    verdicts: list[BurstVerdict] = []
    unstable_w: int | None = None
    stable_w: int | None = None
    reductions = 0
    w = 0
    while runner.budget.left >= hold + w and stable_w is None:
        v = _judge(
            runner.run(ramp_lrs(peak, w, hold), phase="warmup", peak_lr=peak, warmup_steps=w),
            runner.start_loss,
        )
        verdicts.append(v)
        if v.stable:
            stable_w = w
            break
        unstable_w = w
        w = max(hold, 2 * w)
        if runner.budget.left < hold + w and runner.budget.left >= hold + unstable_w:
            # The next ramp does not fit: a lower peak is the cheaper fix.
            peak /= 2.0
            reductions += 1
            w = unstable_w
    if stable_w is not None and unstable_w is not None and stable_w - unstable_w > 2:
        mid = (stable_w + unstable_w) // 2
        if runner.budget.left >= hold + mid:
            v = _judge(
                runner.run(
                    ramp_lrs(peak, mid, hold),
                    phase="warmup_bisect",
                    peak_lr=peak,
                    warmup_steps=mid,
                ),
                runner.start_loss,
            )
            verdicts.append(v)
            if v.stable:
                stable_w = mid
    if stable_w is None:
        reasons.append("no burst within the budget trained stably at the peak")
    return verdicts, stable_w, reductions, peak


def _decide(
    peak: float,
    peak_why: str,
    warmup_why: str | None,
    rt: sig.RangeTestResult,
    verdicts: list[BurstVerdict],
    w_stable: int | None,
    reductions: int,
    settling: sig.SettlingResult | None,
    total_steps: int,
    settings: SearchSettings,
    reasons: list[str],
) -> ProbeOutcome:
    notes: list[str] = []
    tested = [v.burst.warmup_steps for v in verdicts]
    if w_stable is None:
        # Extrapolate: twice the longest ramp tried, at the (possibly lowered) peak.
        w_bursts = 2 * max(tested) if tested else 0
        notes.append(f"no stable ramp found; extrapolated warmup {w_bursts} from {tested}")
    else:
        w_bursts = w_stable
    w_moment = _ceil_steps(settling)
    deciding = "loss bursts" if w_bursts >= w_moment else "second moment"
    if w_bursts == 0 and w_moment == 0:
        deciding = "none needed"
    warmup = max(w_bursts, w_moment)
    cap = int(settings.max_warmup_fraction * total_steps)
    if warmup > cap:
        notes.append(
            f"warmup {warmup} capped at {cap} ({settings.max_warmup_fraction:.0%} of run)"
        )
        reasons.append("the signals asked for more warmup than half the run")
        warmup = cap
    if reductions:
        notes.append(f"peak halved {reductions}x because no affordable ramp was stable")
    notes.insert(0, peak_why)
    return ProbeOutcome(
        peak_lr=peak,
        warmup_steps=warmup,
        deciding_signal=deciding,
        confidence="low" if reasons else "high",
        reasons=reasons,
        range_test=rt,
        verdicts=verdicts,
        settling=settling,
        peak_reductions=reductions,
        warmup_from_bursts=w_stable,
        notes=notes,
        warmup_why=warmup_why,
    )


def outcome_signals(outcome: ProbeOutcome) -> list[dict[str, Any]]:
    """Rows (name, value, unit, description) of the derived measurements."""
    rows: list[dict[str, Any]] = []
    rt = outcome.range_test
    rows += [
        {
            "name": "range_test.steepest_lr",
            "value": rt.steepest_lr,
            "unit": "lr",
            "description": "LR of steepest descent of the smoothed loss (against log LR)",
        },
        {
            "name": "range_test.valley_lr",
            "value": rt.valley_lr,
            "unit": "lr",
            "description": "fastai-style valley LR",
        },
        {
            "name": "range_test.min_loss_lr",
            "value": rt.min_loss_lr,
            "unit": "lr",
            "description": (
                "LR of the minimum smoothed loss in the analysed window (the sweep before it "
                "diverged, less its first points and its last one)"
            ),
        },
        {
            "name": "range_test.diverge_lr",
            "value": rt.diverge_lr,
            "unit": "lr",
            "description": "LR at which the sweep diverged (nan if it did not)",
        },
    ]
    starts = [v.signals.start_loss for v in outcome.verdicts if v.burst.phase != "range_test"]
    if starts and math.isfinite(starts[0]) and all(x == starts[0] for x in starts):
        rows.append(
            {
                "name": "bursts.start_loss",
                "value": float(starts[0]),
                "unit": "loss",
                "description": (
                    "loss at the initial weights (median over the sweep's first batches): the "
                    "start every burst's stability rules measure a rise from"
                ),
            }
        )
    for v in outcome.verdicts:
        s = v.signals
        tag = f"burst{v.burst.burst}.W{v.burst.warmup_steps}"
        rows += [
            {
                "name": f"{tag}.stable",
                "value": float(v.stable),
                "unit": "bool",
                "description": f"peak {v.burst.peak_lr:.3g}: {s.reason}",
            },
            {
                "name": f"{tag}.tv_ratio",
                "value": s.tv_ratio,
                "unit": "ratio",
                "description": (
                    "total variation of smoothed loss / its first-to-last fall (1 = monotone)"
                ),
            },
            {
                "name": f"{tag}.rise_above_start",
                "value": s.rise_above_start,
                "unit": "ratio",
                "description": "(max smoothed loss - starting loss) / |starting loss| (catapult)",
            },
            {
                "name": f"{tag}.n_spikes",
                "value": float(s.n_spikes),
                "unit": "count",
                "description": "loss jumps above a robust running scale",
            },
        ]
    st = outcome.settling
    if st is not None:
        rows += [
            {
                "name": "second_moment.settling_step",
                "value": float(st.settling_step),
                "unit": "steps",
                "description": _settling_description(st),
            },
            {
                "name": "second_moment.kappa",
                "value": float(st.kappa),
                "unit": "ratio",
                "description": "Var(g^2)/E[g^2]^2 of sampled coordinates (2 = Gaussian noise)",
            },
            {
                "name": "second_moment.lower_bound",
                "value": float(st.lower_bound),
                "unit": "bool",
                "description": "the settling step is only a lower bound",
            },
            {
                "name": "second_moment.rel_error_estimate",
                "value": float(st.rel_error_estimate),
                "unit": "steps",
                "description": "closed form: rel_error = sqrt(kappa/n_eff(t)) reaches its "
                "tolerance (nan when the bursts settled)",
            },
            {
                "name": "second_moment.innovation",
                "value": float(st.innovation),
                "unit": "ratio",
                "description": "|g^2 - v_hat| / v_hat, from vhat_change over Adam's averaging "
                "weight (at most 2 for stationary gradients)",
            },
            {
                "name": "second_moment.change_estimate",
                "value": float(st.change_estimate),
                "unit": "steps",
                "description": "closed form: vhat_change per step, innovation x "
                "(1-beta2)/(1-beta2^t), reaches its tolerance",
            },
        ]
    rows.append(
        {
            "name": "decision.warmup_steps",
            "value": float(outcome.warmup_steps),
            "unit": "steps",
            "description": (
                "no signal asked for warmup"
                if outcome.deciding_signal == "none needed"
                else f"decided by the {outcome.deciding_signal}"
            ),
        }
    )
    rows.append(
        {
            "name": "decision.peak_lr",
            "value": outcome.peak_lr,
            "unit": "lr",
            "description": "peak LR of the suggested schedule",
        }
    )
    return rows
