from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from autowarm.probe._moments import (
    MomentStats,
    SecondMomentMonitor,
    _allocate,
    _n_eff_host,
    has_second_moment,
)
from autowarm.probe.signals import n_eff, settling_step
from tests._tiny import DecayRateAdam, PerTensorSecondMoment


def _lower_median(x: np.ndarray) -> float:
    x = np.sort(x[np.isfinite(x)])
    return float(x[(x.size - 1) // 2]) if x.size else math.nan


def _weighted_lower_median(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values)
    v, w = values[ok], weights[ok]
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, cum[-1] / 2)])


class Reference:
    """numpy recomputation of every MomentStats field from recorded gradients."""

    def __init__(self, sizes: list[int], short_beta: float = 0.9) -> None:
        self.sizes = sizes
        self.bs = short_beta
        self.v = [np.zeros(n) for n in sizes]
        self.t = [0] * len(sizes)
        self.g2 = [[] for _ in sizes]  # history of g^2 per tensor
        self.prev = [None] * len(sizes)

    def step(self, grads: list[np.ndarray | None], beta2: float | list[float]) -> dict[str, float]:
        vhat_all, g2_all, prev_all, kappa_all, ratio, weight = [], [], [], [], [], []
        for i, g in enumerate(grads):
            if g is None:
                continue
            b2 = beta2[i] if isinstance(beta2, list) else beta2  # per tensor, or one for all
            g2 = g.astype(np.float64) ** 2
            self.t[i] += 1
            self.v[i] = b2 * self.v[i] + (1 - b2) * g2
            vhat = self.v[i] / (1 - b2 ** self.t[i])
            self.g2[i].append(g2)
            hist = np.array(self.g2[i])
            k = len(hist)
            ema = np.zeros_like(g2)
            for row in hist:
                ema = self.bs * ema + (1 - self.bs) * row
            s = ema / (1 - self.bs**k)
            if k >= 3:
                mean = hist.mean(0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    kappa = np.where(mean > 0, hist.var(0, ddof=1) / mean**2, np.nan)
                kappa_all.append(kappa)
            if self.prev[i] is not None:
                prev_all.append((vhat, self.prev[i]))
            self.prev[i] = vhat
            vhat_all.append(vhat)
            g2_all.append(g2)
            ratio.append(s.sum() / vhat.sum() if vhat.sum() > 0 else np.nan)
            weight.append(g.size)
        num = sum(np.abs(a - b).sum() for a, b in prev_all)
        den = sum(b.sum() for _, b in prev_all)
        t_max = max(t for t, g in zip(self.t, grads, strict=True) if g is not None)
        return {
            "vhat": np.concatenate(vhat_all),
            "vhat_mean": float(np.concatenate(vhat_all).mean()),
            "g2_mean": float(np.concatenate(g2_all).mean()),
            "drift": _weighted_lower_median(np.array(ratio), np.array(weight, dtype=float)),
            "vhat_change": num / den if prev_all else math.nan,
            "kappa": _lower_median(np.concatenate(kappa_all)) if kappa_all else math.nan,
            "step": t_max,
        }


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def _grads(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.grad.detach().double().numpy().ravel().copy() for p in model.parameters()]


@pytest.mark.parametrize(
    ("opt_cls", "betas", "kwargs"),
    [
        (torch.optim.Adam, (0.9, 0.999), {}),
        (torch.optim.AdamW, (0.9, 0.95), {"weight_decay": 0.1}),
        (torch.optim.NAdam, (0.9, 0.99), {}),
    ],
)
def test_matches_numpy_recomputation(
    opt_cls: type, betas: tuple[float, float], kwargs: dict
) -> None:
    model = _tiny_model()
    opt = opt_cls(model.parameters(), lr=1e-2, betas=betas, **kwargs)
    monitor = SecondMomentMonitor(opt, max_coords=10_000)
    sizes = [p.numel() for p in model.parameters()]
    assert monitor.n_coords == sum(sizes)
    ref = Reference(sizes)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 13):
        opt.zero_grad()
        x = torch.randn(16, 5, generator=gen)
        model(x).pow(2).mean().backward()
        opt.step()
        got = monitor.update()
        want = ref.step(_grads(model), betas[1])
        assert got is not None
        assert got.step == step and got.beta2 == betas[1]
        np.testing.assert_allclose(monitor._prev_vhat.numpy(), want["vhat"], rtol=1e-5)
        for name in ("vhat_mean", "g2_mean", "drift", "vhat_change", "kappa"):
            assert got.to_dict()[name] == pytest.approx(want[name], rel=1e-5, nan_ok=True), (
                f"{name} at step {step} with {opt_cls.__name__}{betas}"
            )
        assert got.n_eff == pytest.approx(n_eff(step, betas[1]), rel=1e-12)
        expected_rel = math.sqrt(want["kappa"] / n_eff(step, betas[1])) if step >= 3 else math.nan
        assert got.rel_error == pytest.approx(expected_rel, rel=1e-5, nan_ok=True)
    assert math.isnan(monitor.history[0].vhat_change)
    assert monitor.history[0].drift == pytest.approx(1.0)  # s_1 = v_hat_1 = g_1^2
    assert math.isnan(monitor.history[1].kappa) and math.isfinite(monitor.history[2].kappa)


def test_subsample_matches_recomputation_at_sampled_coordinates() -> None:
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = SecondMomentMonitor(opt, max_coords=20, seed=3)
    idx = [e.index.numpy() for e in monitor._entries]
    assert monitor.n_coords <= 20 and all(i.size >= 1 for i in idx)
    assert all(np.all(np.diff(i) > 0) for i in idx)  # sorted, distinct
    ref = Reference([i.size for i in idx])
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
        got = monitor.update()
        want = ref.step([g[i] for g, i in zip(_grads(model), idx, strict=True)], 0.999)
        np.testing.assert_allclose(monitor._prev_vhat.numpy(), want["vhat"], rtol=1e-5)
        assert got is not None
        assert got.drift == pytest.approx(want["drift"], rel=1e-5)
        assert got.kappa == pytest.approx(want["kappa"], rel=1e-5, nan_ok=True)


def test_mixed_groups_layouts_and_dtypes_match_recomputation() -> None:
    # Two param groups with different beta2: only the tensors of the larger are read (a is
    # not), a non-contiguous (transposed) fp32 tensor and a float64 one: the gathers that
    # cannot go straight into the float32 scratch take the copying path; all must match numpy.
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(4, 2).t())  # (2, 4), not contiguous
    c = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    assert not b.is_contiguous()
    opt = torch.optim.Adam(
        [{"params": [a], "betas": (0.9, 0.95)}, {"params": [b, c], "betas": (0.9, 0.999)}],
        lr=1e-2,
    )
    monitor = SecondMomentMonitor(opt, max_coords=10_000)
    ref = Reference([b.numel(), c.numel()])
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 9):
        opt.zero_grad()
        x = torch.randn(8, 3, generator=gen)
        w = torch.randn(5, generator=gen, dtype=torch.float64)
        torch.autograd.backward([((x @ a @ b.t()) ** 2).mean(), (c * w).pow(2).sum()])
        assert b.grad is not None and not b.grad.is_contiguous()
        opt.step()
        got = monitor.update()
        grads = [np.asarray(p.grad, dtype=np.float64).ravel() for p in (b, c)]
        want = ref.step(grads, [0.999, 0.999])
        assert got is not None
        assert got.step == step and got.beta2 == 0.999
        for name in ("vhat_mean", "g2_mean", "drift", "vhat_change", "kappa"):
            assert got.to_dict()[name] == pytest.approx(want[name], rel=1e-5, nan_ok=True), (
                f"{name} at step {step}"
            )
        assert got.n_eff == pytest.approx(n_eff(step, 0.999), rel=1e-12)


def _fast_and_slow_groups(
    n_fast: int, n_slow: int
) -> tuple[torch.nn.Parameter, torch.nn.Parameter, torch.optim.Optimizer]:
    """Two parameters in groups of beta2 0.95 and 0.999, with an Adam at lr 0 (gradients are
    set by hand)."""
    torch.manual_seed(0)
    fast = torch.nn.Parameter(torch.zeros(n_fast))
    slow = torch.nn.Parameter(torch.zeros(n_slow))
    opt = torch.optim.Adam(
        [{"params": [fast], "betas": (0.9, 0.95)}, {"params": [slow], "betas": (0.9, 0.999)}],
        lr=0.0,
    )
    return fast, slow, opt


def test_groups_of_different_beta2_settle_as_the_slowest_whatever_the_trace_length() -> None:
    # Pooled over a beta2=0.95 group and a beta2=0.999 one, n_eff (the least over tensors)
    # stopped at the fast group's cap and vhat_change at its floor, so a stationary trace
    # never settled and its "lower bound" grew with the trace's length.
    def settle(n: int) -> tuple[float, float, bool]:
        big, small, opt = _fast_and_slow_groups(2000, 50)
        monitor = SecondMomentMonitor(opt, max_coords=4096)
        t = torch.distributions.StudentT(6.0)
        for _ in range(n):
            big.grad, small.grad = t.sample((2000,)), t.sample((50,))
            opt.step()
            monitor.update()
        frame = monitor.to_frame()
        assert set(frame["beta2"]) == {0.999}
        r = settling_step(frame, rel_error_tol=0.25, drift_band=(1e-3, 1.5))
        return r.settling_step, r.beta2, r.settled

    short, long = settle(200), settle(400)
    assert short[2] and long[2]
    assert short[0] == long[0] < 200 and short[1] == long[1] == 0.999


def test_direct_gathers_equal_the_copying_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The usual path gathers contiguous float32 tensors straight into the scratch vectors; the
    # general one gathers and then copies. Same numbers, to the bit.
    import autowarm.probe._moments as moments

    def run() -> pd.DataFrame:
        model = _tiny_model()
        opt = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95))
        monitor = SecondMomentMonitor(opt, max_coords=40, seed=2)
        gen = torch.Generator().manual_seed(0)
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(8, 5, generator=gen)).pow(2).mean().backward()
            opt.step()
            monitor.update()
        return monitor.to_frame()

    direct = run()
    monkeypatch.setattr(
        moments, "_gather_into", lambda t, index, out: out.copy_(moments._gather(t, index))
    )
    copied = run()
    pd.testing.assert_frame_equal(direct, copied, check_exact=True)


def test_n_eff_host_matches_signals() -> None:
    for beta2 in (0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 0.9999):
        for t in (0.0, 1.0, 2.0, 3.0, 10.0, 77.0, 1000.0, 12345.0, 1e9):
            assert _n_eff_host(t, beta2) == pytest.approx(n_eff(t, beta2), rel=1e-14, abs=0)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\)"):
        _n_eff_host(3.0, 1.0)
    with pytest.raises(ValueError, match="t must be >= 0"):
        _n_eff_host(-1.0, 0.9)


def test_scratch_is_reused_across_updates() -> None:
    monitor = _manual_run(_gaussian, 2, size=256, max_coords=64)
    buffers = [monitor._scratch, monitor._short, monitor._mean, monitor._m2, monitor._prev_vhat]
    ptrs = [b.data_ptr() for b in buffers]
    w = monitor.optimizer.param_groups[0]["params"][0]
    for _ in range(3):
        w.grad = torch.randn(256)
        monitor.optimizer.step()
        monitor.update()
    assert [b.data_ptr() for b in buffers] == ptrs
    assert len(monitor.history) == 5


def test_tensor_without_grad_is_skipped_and_steps_stay_per_tensor() -> None:
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = SecondMomentMonitor(opt, max_coords=10_000)
    ref = Reference([p.numel() for p in model.parameters()])
    last = list(model.parameters())[-1]
    for step in range(8):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        grads: list[np.ndarray | None] = list(_grads(model))
        if step in (2, 3):  # the last bias misses two updates: Adam skips it entirely
            last.grad = None
            grads[-1] = None
        opt.step()
        got = monitor.update()
        want = ref.step(grads, 0.999)
        assert got is not None
        assert got.n_coords == sum(g.size for g in grads if g is not None)
        for name in ("vhat_mean", "g2_mean", "drift", "vhat_change", "kappa"):
            assert got.to_dict()[name] == pytest.approx(want[name], rel=1e-5, nan_ok=True), name
    assert int(opt.state[last]["step"]) == 6
    assert got.n_eff == pytest.approx(n_eff(6, 0.999))  # min over tensors


def _manual_run(
    grad_fn, steps: int, *, size: int = 4096, betas=(0.9, 0.999), **monitor_kwargs
) -> SecondMomentMonitor:
    w = torch.nn.Parameter(torch.zeros(size))
    opt = torch.optim.Adam([w], lr=1e-8, betas=betas)
    monitor = SecondMomentMonitor(opt, **monitor_kwargs)
    gen = torch.Generator().manual_seed(0)
    for t in range(1, steps + 1):
        w.grad = grad_fn(t, gen, size)
        opt.step()
        monitor.update()
    return monitor


def _gaussian(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
    return torch.randn(size, generator=gen)


def test_kappa_is_two_for_gaussian_gradients() -> None:
    monitor = _manual_run(_gaussian, 400)
    assert monitor.history[-1].kappa == pytest.approx(2.0, rel=0.12)


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_kappa_does_not_depend_on_the_gradient_scale(scale: float) -> None:
    # Var(g^2)/E[g^2]^2 is scale-free, but in float32 the squares of g^2 underflow below
    # |g| ~ 1e-10 (and overflow above ~1e9): the running moments must not square raw g^2.
    def scaled(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen) * scale

    want = _manual_run(_gaussian, 60).history[-1]
    got = _manual_run(scaled, 60).history[-1]
    assert math.isfinite(got.kappa)
    assert got.kappa == pytest.approx(want.kappa, rel=1e-4)
    assert got.rel_error == pytest.approx(want.rel_error, rel=1e-4)


def test_kappa_keeps_its_scale_when_the_first_gradient_is_all_zero() -> None:
    # A zero-initialised next layer (LoRA's B = 0) gives the layer before it an all-zero first
    # gradient: the scale that keeps g^2's squares inside float32 must come from the first
    # update that has a gradient, not fall back to 1 for good.
    def late(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        g = torch.randn(size, generator=gen)
        return torch.zeros(size) if t == 1 else g * 1e-12

    def late_unit(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        g = torch.randn(size, generator=gen)
        return torch.zeros(size) if t == 1 else g

    want = _manual_run(late_unit, 60).history[-1]
    got = _manual_run(late, 60).history[-1]
    assert math.isfinite(want.kappa)
    assert got.kappa == pytest.approx(want.kappa, rel=1e-4)


def test_kappa_is_large_for_heavy_tailed_gradients() -> None:
    def sparse(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        # nonzero with probability 0.1: E[g^2]=0.1, E[g^4]=0.3 -> kappa = 0.29/0.01 = 29
        return torch.randn(size, generator=gen) * (torch.rand(size, generator=gen) < 0.1)

    monitor = _manual_run(sparse, 400)
    assert monitor.history[-1].kappa > 15


def test_dense_kappa_reads_only_coordinates_with_a_gradient_at_every_update() -> None:
    # three quarters of the coordinates get a gradient one update in ten (embedding rows of
    # rare items), a quarter at every update (Gaussian): the default median reads the sparse
    # ones (kappa ~29), the dense-only variant the Gaussian ones (~2)
    def mixed(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        g = torch.randn(size, generator=gen)
        rare = torch.arange(size) >= size // 4
        return torch.where(rare & (torch.rand(size, generator=gen) >= 0.1), 0.0, g)

    assert _manual_run(mixed, 400).history[-1].kappa > 15
    dense = _manual_run(mixed, 400, dense_kappa=True).history[-1]
    assert dense.kappa == pytest.approx(2.0, rel=0.15)

    # with no coordinate non-zero at every update, no kappa: the settling reads the others
    def half(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen) * (torch.rand(size, generator=gen) < 0.5)

    assert math.isnan(_manual_run(half, 40, dense_kappa=True).history[-1].kappa)
    # an update with no gradient at all is not a sparse pattern: it masked every coordinate,
    # and the settling then read the kappa of the first three updates. With zeros on every
    # second update, the dense quarter's g^2 is 0 half the time: kappa = 2 * 3 - 1 = 5
    skip = _manual_run(lambda t, gen, size: mixed(t, gen, size) * (t % 2), 400, dense_kappa=True)
    assert skip.history[-1].kappa == pytest.approx(5.0, rel=0.2)


@pytest.mark.parametrize("b_misses_the_first_update", [False, True])
def test_dense_kappa_excludes_a_sparse_tensor_whatever_its_observation_count(
    b_misses_the_first_update: bool,
) -> None:
    # a is dense Gaussian, b gets a gradient every second update. When b missed an update it
    # is worked on apart from a (another observation count); the zeros of b were then taken
    # for an update with no gradient at all and kept, and its g^2 raised the median (3.0)
    a, b = torch.nn.Parameter(torch.zeros(2048)), torch.nn.Parameter(torch.zeros(2048))
    opt = torch.optim.Adam([a, b], lr=1e-8)
    monitor = SecondMomentMonitor(opt, dense_kappa=True)
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 301):
        a.grad = torch.randn(2048, generator=gen)
        b.grad = torch.randn(2048, generator=gen) * (t % 2)
        if t == 1 and b_misses_the_first_update:
            b.grad = None
        opt.step()
        monitor.update()
    assert monitor.history[-1].kappa == pytest.approx(2.0, rel=0.15)


def test_drift_near_one_when_stationary_and_large_when_growing() -> None:
    stationary = _manual_run(_gaussian, 200)
    assert stationary.history[-1].drift == pytest.approx(1.0, abs=0.1)

    def growing(t: int, gen: torch.Generator, size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen) * 1.05**t

    grow = _manual_run(growing, 60)
    assert grow.history[-1].drift > 2.0
    drifts = [s.drift for s in grow.history[10:]]
    assert drifts == sorted(drifts)  # the lag only widens while the growth goes on


def test_betas_095_saturates_and_settles() -> None:
    monitor = _manual_run(_gaussian, 300, betas=(0.9, 0.95))
    last = monitor.history[-1]
    assert last.n_eff == pytest.approx(1.95 / 0.05, rel=1e-6)
    assert last.rel_error == pytest.approx(math.sqrt(2 / 39), rel=0.1)
    frame = monitor.to_frame()
    result = settling_step(frame)
    assert result.settled and not result.extrapolated
    # rel_error <= 0.1 is out of reach; n_eff >= 0.8 * 39 first holds at t = 42.
    assert result.settling_step == pytest.approx(42, abs=2)
    assert result.beta2 == 0.95


def test_every_k_updates() -> None:
    monitor = _manual_run(_gaussian, 10, every=3)
    assert [s.step for s in monitor.history] == [1, 4, 7, 10]
    assert [s.update for s in monitor.history] == [0, 1, 2, 3]


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.95)])
def test_every_k_reports_the_one_step_change(betas: tuple[float, float]) -> None:
    # Observed every third update, vhat_change is still the change over the last step,
    # rebuilt from Adam's update rule: equal to what an every-update monitor reads there.
    every = _manual_run(_gaussian, 30, betas=betas)
    sparse = _manual_run(_gaussian, 30, betas=betas, every=3)
    by_step = {s.step: s.vhat_change for s in every.history}
    assert [s.step for s in sparse.history] == list(range(1, 31, 3))
    assert math.isnan(sparse.history[0].vhat_change)  # Adam's first update: no v_{t-1}
    for s in sparse.history[1:]:
        assert s.vhat_change == pytest.approx(by_step[s.step], rel=1e-3), s.step


def test_a_low_precision_second_moment_is_not_rebuilt() -> None:
    # bfloat16 exp_avg_sq rounds by ~2^-9, as much as one step's change late in a run: a
    # rebuilt v_{t-1} would read 30-60% off, so every > 1 gives no change there (nan).
    def run(every: int) -> list[float]:
        w = torch.nn.Parameter(torch.zeros(512, dtype=torch.bfloat16))
        opt = torch.optim.Adam([w], lr=1e-8)
        monitor = SecondMomentMonitor(opt, every=every)
        gen = torch.Generator().manual_seed(0)
        for _ in range(8):
            w.grad = torch.randn(512, generator=gen).to(torch.bfloat16)
            opt.step()
            monitor.update()
        return [s.vhat_change for s in monitor.history]

    assert all(math.isnan(c) for c in run(2))
    assert all(math.isfinite(c) for c in run(1)[1:])  # read from the stored states as they are


def test_update_called_by_hand_every_few_steps_reads_the_one_step_change() -> None:
    # every=1, but update() after every third step only: the gap is read from Adam's count
    w = torch.nn.Parameter(torch.zeros(4096))
    opt = torch.optim.Adam([w], lr=1e-8)
    monitor, every = SecondMomentMonitor(opt), _manual_run(_gaussian, 30)
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 31):
        w.grad = torch.randn(4096, generator=gen)
        opt.step()
        if t % 3 == 1:
            monitor.update()
    want = {s.step: s.vhat_change for s in every.history}
    for s in monitor.history[1:]:
        assert s.vhat_change == pytest.approx(want[s.step], rel=1e-3), s.step


def test_a_monitor_attached_mid_run_reads_the_change_at_once() -> None:
    w = torch.nn.Parameter(torch.zeros(4096))
    opt = torch.optim.Adam([w], lr=1e-8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        w.grad = torch.randn(4096, generator=gen)
        opt.step()
    before = opt.state[w]["exp_avg_sq"] / (1 - 0.999**5)
    monitor = SecondMomentMonitor(opt)
    w.grad = torch.randn(4096, generator=gen)
    opt.step()
    after = opt.state[w]["exp_avg_sq"] / (1 - 0.999**6)
    want = float((after - before).abs().sum() / before.sum())
    got = monitor.update()
    assert got is not None and got.step == 6
    assert got.vhat_change == pytest.approx(want, rel=1e-4)


def test_to_frame_columns() -> None:
    monitor = _manual_run(_gaussian, 4, size=16)
    frame = monitor.to_frame()
    assert list(frame.columns) == [
        "update", "step", "beta2", "n_coords", "vhat_mean", "g2_mean", "drift",
        "vhat_change", "kappa", "n_eff", "rel_error",
    ]  # fmt: skip
    assert len(frame) == 4 and frame["step"].tolist() == [1, 2, 3, 4]
    assert all(frame[c].dtype.kind in "if" for c in frame.columns)
    empty = SecondMomentMonitor(torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]))
    assert list(empty.to_frame().columns) == list(frame.columns)


def test_attach_reset_and_new_optimizer_keep_the_sample() -> None:
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters())
    monitor = SecondMomentMonitor(opt, max_coords=10, seed=5)
    before = [e.index.clone() for e in monitor._entries]
    with monitor:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(4, 5)).sum().backward()
            opt.step()
    assert len(monitor.history) == 4
    opt.step()  # detached: not observed
    assert len(monitor.history) == 4
    opt2 = torch.optim.AdamW(model.parameters())
    monitor.reset(opt2)
    assert monitor.history == [] and monitor.optimizer is opt2
    assert all(torch.equal(a, e.index) for a, e in zip(before, monitor._entries, strict=True))
    monitor.attach()
    opt2.zero_grad()
    model(torch.randn(4, 5)).sum().backward()
    opt2.step()
    monitor.detach()
    (first,) = monitor.history
    assert first.step == 1 and math.isnan(first.kappa) and math.isnan(first.vhat_change)


def test_update_before_any_step_and_state_untouched() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([w])
    monitor = SecondMomentMonitor(opt)
    assert monitor.update() is None
    assert len(opt.state) == 0  # reading never inserts keys into the state defaultdict


def test_has_second_moment() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam):
        assert has_second_moment(cls([w]))
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    assert not has_second_moment(sgd)
    w.grad = torch.ones(3)
    sgd.step()
    assert not has_second_moment(sgd)  # momentum_buffer only
    adamax = torch.optim.Adamax([w])
    assert not has_second_moment(adamax)
    adamax.step()
    assert not has_second_moment(adamax)  # exp_inf is not a second moment

    class MyAdam(torch.optim.Adam):
        pass

    assert has_second_moment(MyAdam([w]))
    custom = torch.optim.SGD([w], lr=0.1)
    custom.state[w]["exp_avg_sq"] = torch.zeros(3)  # an unlisted class, known by its state
    assert not has_second_moment(custom)  # ... in a group with Adam's betas
    custom.param_groups[0]["betas"] = (0.9, 0.99)
    assert has_second_moment(custom)
    custom.state[w]["exp_avg_sq"] = torch.zeros(())  # one per tensor: not readable
    assert not has_second_moment(custom)


@pytest.mark.parametrize("cls", [PerTensorSecondMoment, DecayRateAdam])
def test_a_second_moment_the_monitor_cannot_read_is_skipped(cls: type) -> None:
    # exp_avg_sq of another shape (one per tensor) or a group without betas (Adafactor's
    # decay_rate): no statistics, and no IndexError or KeyError from reading them.
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 1))
    opt = cls(model.parameters(), lr=1e-2)
    monitor = SecondMomentMonitor(opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
        assert monitor.update() is None
    assert not has_second_moment(opt) and monitor.history == []


def test_allocate() -> None:
    assert _allocate([10, 5], 100) == [10, 5]
    counts = _allocate([1000, 10, 1], 100)
    assert counts == [96, 1, 1] and sum(counts) <= 100
    assert _allocate([7, 7, 7], 2) == [1, 1, 1]  # one per tensor wins over the budget
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.integers(1, 10_000, size=rng.integers(1, 30)).tolist()
        budget = int(rng.integers(30, 20_000))
        c = _allocate(sizes, budget)
        assert sum(c) <= max(budget, len(sizes)) and all(
            1 <= k <= n for k, n in zip(c, sizes, strict=True)
        )


def test_seeded_sample() -> None:
    w = torch.nn.Parameter(torch.zeros(100_000))
    opt = torch.optim.Adam([w])
    a = SecondMomentMonitor(opt, max_coords=500, seed=1)._entries[0].index
    b = SecondMomentMonitor(opt, max_coords=500, seed=1)._entries[0].index
    c = SecondMomentMonitor(opt, max_coords=500, seed=2)._entries[0].index
    assert torch.equal(a, b) and not torch.equal(a, c) and a.numel() == 500


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_coords": 0}, "max_coords must be a positive integer, but got max_coords=0"),
        ({"every": 1.5}, "every must be a positive integer"),
        ({"short_beta": 1.0}, r"short_beta must be in \[0, 1\)"),
    ],
)
def test_bad_settings(kwargs: dict, match: str) -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=match):
        SecondMomentMonitor(opt, **kwargs)


def test_bad_optimizer() -> None:
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        SecondMomentMonitor("adam")  # type: ignore[arg-type]
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    with pytest.raises(ValueError, match="requires_grad"):
        SecondMomentMonitor(torch.optim.Adam([frozen]))


def test_stats_are_plain_python() -> None:
    monitor = _manual_run(_gaussian, 3, size=8)
    s = monitor.history[-1]
    assert isinstance(s, MomentStats)
    assert all(type(v) in (int, float) for v in s.to_dict().values())


@pytest.mark.parametrize("every", [1, 2])
def test_device_scalar_steps_give_the_same_stats(
    monkeypatch: pytest.MonkeyPatch, every: int
) -> None:
    # capturable/fused Adam keeps `step` on the accelerator; emulate that path on CPU by making
    # the monitor treat every step as a (float32) device tensor: equal up to float32 rounding
    # (every=2 reads vhat_change through Adam's update rule, with the step as a tensor).
    import autowarm.probe._moments as moments

    def run() -> list[MomentStats]:
        model = _tiny_model()
        opt = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95))
        monitor = SecondMomentMonitor(opt, max_coords=30, every=every)
        gen = torch.Generator().manual_seed(0)
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(8, 5, generator=gen)).pow(2).mean().backward()
            opt.step()
            monitor.update()
        return monitor.history

    on_host = run()
    monkeypatch.setattr(
        moments, "_step_value", lambda s: torch.as_tensor(s, dtype=torch.float32).clone()
    )
    on_device = run()
    for a, b in zip(on_host, on_device, strict=True):
        for name, value in a.to_dict().items():
            assert b.to_dict()[name] == pytest.approx(value, rel=1e-4, nan_ok=True), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("capturable", [False, True])
def test_one_host_sync_per_update_on_cuda(capturable: bool) -> None:
    import warnings

    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).cuda()
    # capturable Adam may hold its betas as device tensors: beta2 is read once, not per update
    betas: Any = (
        (torch.tensor(0.9, device="cuda"), torch.tensor(0.999, device="cuda"))
        if capturable
        else (0.9, 0.999)
    )
    opt = torch.optim.Adam(model.parameters(), betas=betas, capturable=capturable)
    monitor = SecondMomentMonitor(opt, max_coords=1000)
    x = torch.randn(32, 64, device="cuda")

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    for _ in range(3):  # warm up lazy initialisation
        step()
        monitor.update()
    step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stats = monitor.update()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # torch also warns, once per process, that the debug mode is a prototype: not a sync.
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert stats is not None and stats.step == 4 and math.isfinite(stats.kappa)


class _GroupStepAdam(torch.optim.Optimizer):
    """Adam that counts its updates in the param group, as timm's Lamb and FusedAdam do."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def,override]
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            b1, b2 = group["betas"]
            t = group["step"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
                p.addcdiv_(st["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))
        return None


@pytest.mark.parametrize("where", ["group", "nowhere"])
def test_step_counted_in_the_param_group_or_nowhere(where: str) -> None:
    # The bias correction needs the update count: from the group when the state has none, else
    # from the monitor's own calls. Reading t = 0 made v_hat infinite and drift 0.
    model = _tiny_model()
    opt = _GroupStepAdam(model.parameters(), lr=1e-2)
    monitor = SecondMomentMonitor(opt, max_coords=10_000)
    ref = Reference([p.numel() for p in model.parameters()])
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        grads = _grads(model)
        opt.step()
        if where == "nowhere":
            for group in opt.param_groups:
                group["step_count"] = group.pop("step")  # the optimizer keeps it elsewhere
        got = monitor.update()
        if where == "nowhere":
            for group in opt.param_groups:
                group["step"] = group.pop("step_count")
        want = ref.step(grads, 0.999)
        assert got is not None
        for name in ("vhat_mean", "g2_mean", "drift", "vhat_change", "kappa"):
            assert got.to_dict()[name] == pytest.approx(want[name], rel=1e-5, nan_ok=True), name
        assert got.n_eff == pytest.approx(n_eff(ref.t[0], 0.999))


def test_complex_parameters_are_read_without_a_cast_warning() -> None:
    # spectral layers (FNO-style) keep complex weights; Adam treats real and imaginary parts
    # as coordinates of their own, and the monitor reads the real ones
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 8, dtype=torch.complex64))
    opt = torch.optim.Adam([w], lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SecondMomentMonitor(opt) as monitor:
            for _ in range(3):
                opt.zero_grad()
                (w.abs() ** 2).sum().backward()
                opt.step()
    frame = monitor.to_frame()
    assert len(frame) == 3 and (frame["n_coords"] == 64).all()
    v = opt.state[w]["exp_avg_sq"].real
    t = 3
    assert frame["vhat_mean"].iloc[-1] == pytest.approx(float(v.mean()) / (1 - 0.999**t), rel=1e-5)


def test_steps_without_a_gradient_of_the_slowest_group_are_not_read_from_another() -> None:
    # they used to read the faster group instead: rows alternated beta2 and scale
    big, small, opt = _fast_and_slow_groups(200, 20)
    monitor = SecondMomentMonitor(opt)
    seen = []
    for step in range(20):
        big.grad = torch.randn(200)
        small.grad = 100 * torch.randn(20) if step % 2 == 0 else None
        opt.step()
        seen.append(monitor.update())
    assert [s is not None for s in seen] == [step % 2 == 0 for step in range(20)]
    frame = monitor.to_frame()
    assert set(frame["beta2"]) == {0.999} and len(frame) == 10
    assert frame["vhat_mean"].min() > 100  # the slow group's scale on every row
