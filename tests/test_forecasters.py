"""Each forecaster on synthetic trajectories whose answer is known, computed independently with numpy.

Reference values: the polynomial through the cached points (numpy.polyfit of
degree = order), evaluated at the target by Taylor (its value there) or by
HiCache's formula (its monomial coefficients around the newest point, each
power replaced by numpy's physicists' Hermite series).  Exact methods must
also reach the true function (polynomials of degree <= order).
"""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import hermite as npherm
from numpy.polynomial import polynomial as nppoly

from speca_compile.runtime.forecaster import make_forecaster

UNIFORM = [1.0, 0.9, 0.8, 0.7]
NONUNIFORM = [1.0, 0.93, 0.81, 0.62]                  # shifted-sigma-like spacing
FUNCTIONS = {
    "quadratic": lambda t: 0.3 - 1.2 * t + 2.0 * t ** 2,
    "linear": lambda t: 0.5 + 3.0 * t,
    "exp": lambda t: math.exp(-2.0 * t),
    "sin": lambda t: math.sin(5.0 * t),
}


def _forecast(kind, order, times, f, target, sigma=0.5):
    forecaster = make_forecaster(kind, order, 1, sigma)
    for t in times[:order + 1]:              # in trajectory order: t falls, the newest is the last
        forecaster.update(torch.tensor([0]), torch.tensor([t], dtype=torch.float64),
                          (torch.tensor([[f(t)]], dtype=torch.float64),))
    return float(forecaster.predict(torch.tensor([0]), torch.tensor([target], dtype=torch.float64))[0][0, 0])


def _newest_first(times, order):
    """The cached points, newest first (the trajectory runs towards smaller t)."""
    return list(times[:order + 1])[::-1]


def _target(spacing, order):
    """A speculative step past the newest cached point."""
    return spacing[order] - 0.15


def _taylor_reference(order, times, f, target):
    pts = _newest_first(times, order)
    coef = np.polyfit(pts, [f(t) for t in pts], order)
    return float(np.polyval(coef, target))


def _hermite_reference(order, times, f, target, sigma):
    pts = _newest_first(times, order)
    t0 = pts[0]
    gap = pts[0] - pts[1] if order >= 1 else 1.0
    # monomial coefficients in u = t - t0 of the interpolating polynomial
    c = nppoly.polyfit(np.array(pts) - t0, [f(t) for t in pts], order)
    x = (target - t0) / gap
    return float(sum(c[m] * gap ** m * sigma ** m * npherm.hermval(sigma * x, [0] * m + [1])
                     for m in range(order + 1)))


@pytest.mark.parametrize("spacing", [UNIFORM, NONUNIFORM], ids=["uniform", "nonuniform"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("order", [1, 2])
def test_taylor_reaches_the_interpolating_polynomial(spacing, name, order):
    target = _target(spacing, order)
    got = _forecast("taylor", order, spacing, FUNCTIONS[name], target)
    assert got == pytest.approx(_taylor_reference(order, spacing, FUNCTIONS[name], target), abs=1e-9)
    if name == "linear" or (name == "quadratic" and order == 2):
        assert got == pytest.approx(FUNCTIONS[name](target), abs=1e-9)     # exact


@pytest.mark.parametrize("spacing", [UNIFORM, NONUNIFORM], ids=["uniform", "nonuniform"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("sigma", [0.5, 1 / math.sqrt(2), 1.0])
def test_hermite_reaches_hicache_formula(spacing, name, order, sigma):
    target = _target(spacing, order)
    got = _forecast("hermite", order, spacing, FUNCTIONS[name], target, sigma)
    assert got == pytest.approx(_hermite_reference(order, spacing, FUNCTIONS[name], target, sigma), abs=1e-9)


@pytest.mark.parametrize("spacing", [UNIFORM, NONUNIFORM], ids=["uniform", "nonuniform"])
def test_hermite_is_exact_where_the_method_is(spacing):
    target = _target(spacing, 2)
    constant = lambda t: 1.7   # noqa: E731
    assert _forecast("hermite", 2, spacing, constant, target) == pytest.approx(1.7, abs=1e-12)
    # sigma = 1/sqrt(2): sigma^m H_m(sigma x) = He_m(x); He_1(x) = x, so linear is exact
    linear = FUNCTIONS["linear"]
    assert _forecast("hermite", 1, spacing[1:], linear, target, 1 / math.sqrt(2)) == pytest.approx(linear(target))
    # ... and He_2(x) = x^2 - 1 damps a quadratic by exactly its c2 * gap^2
    quad = FUNCTIONS["quadratic"]
    pts = _newest_first(spacing, 2)
    expected = quad(target) - 2.0 * (pts[0] - pts[1]) ** 2
    assert _forecast("hermite", 2, spacing, quad, target, 1 / math.sqrt(2)) == pytest.approx(expected)
    # the default sigma = 0.5 damps the linear term: 2 sigma^2 = 1/2 of Taylor's
    t0 = spacing[1]
    assert _forecast("hermite", 1, spacing, linear, target, 0.5) == pytest.approx(
        linear(t0) + 0.5 * 3.0 * (target - t0))


def test_hermite_is_per_sample_and_uses_the_history_a_sample_has():
    forecaster = make_forecaster("hermite", 2, 2, 0.5)
    forecaster.update(torch.tensor([0, 1]), torch.tensor([1.0, 1.0], dtype=torch.float64),
                      (torch.tensor([[1.0], [2.0]], dtype=torch.float64),))
    forecaster.update(torch.tensor([0]), torch.tensor([0.9], dtype=torch.float64),
                      (torch.tensor([[1.5]], dtype=torch.float64),))
    out = forecaster.predict(torch.tensor([0, 1]), torch.tensor([0.8, 0.8], dtype=torch.float64))[0]
    assert float(out[1, 0]) == 2.0                       # one point: the constant
    assert float(out[0, 0]) == pytest.approx(1.5 + 0.5 * -5.0 * -0.1)   # c0 + 2 sigma^2 c1 u


# ---------------------------------------------------------------- FoCa
def _foca(order, full, observed, f, target):
    """FoCa after full steps at ``full`` and speculative steps recorded at ``observed`` (values f(t))."""
    forecaster = make_forecaster("foca", order, 1)
    one = lambda t: (torch.tensor([[f(t)]], dtype=torch.float64),)   # noqa: E731
    for t in full:
        forecaster.update(torch.tensor([0]), torch.tensor([t], dtype=torch.float64), one(t))
    for t in observed:
        forecaster.observe(torch.tensor([0]), torch.tensor([t], dtype=torch.float64), one(t))
    return float(forecaster.predict(torch.tensor([0]), torch.tensor([target], dtype=torch.float64))[0][0, 0])


def _foca_reference(order, full, observed, f, target):
    """The FoCa formula (runtime/foca_forecaster.py) on numpy: the anchor slope from the derivative of
    numpy's interpolating polynomial, BDF2 with that slope frozen, Heun's trapezoid from the anchor."""
    pts = list(full[-(order + 1):])
    t_b = pts[-1]
    g_b = float(np.polyval(np.polyder(np.polyfit(pts, [f(t) for t in pts], order)), t_b))
    t1, t0 = (list(full) + list(observed))[-2:]
    x1, x0 = f(t1), f(t0)
    h = target - t0
    w = h / (t0 - t1)
    pred = ((1 + w) ** 2 * x0 - w ** 2 * x1 + (1 + w) * h * g_b) / (1 + 2 * w)
    return f(t_b) + (target - t_b) / 2 * (g_b + (pred - x0) / h)


@pytest.mark.parametrize("spacing", [UNIFORM, NONUNIFORM], ids=["uniform", "nonuniform"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("observed", [0, 1, 2], ids=["after-full", "1-observed", "2-observed"])
def test_foca_reaches_its_formula(spacing, name, order, observed):
    full = spacing[:order + 1]
    seen = [full[-1] - 0.07 * (k + 1) for k in range(observed)]
    target = (seen or full)[-1] - 0.09
    got = _foca(order, full, seen, FUNCTIONS[name], target)
    assert got == pytest.approx(_foca_reference(order, full, seen, FUNCTIONS[name], target), abs=1e-9)
    if name == "linear":
        assert got == pytest.approx(FUNCTIONS[name](target), abs=1e-9)     # exact on any spacing


@pytest.mark.parametrize("spacing", [UNIFORM, NONUNIFORM], ids=["uniform", "nonuniform"])
def test_foca_is_exact_where_the_method_is_and_damps_curvature(spacing):
    constant = lambda t: -0.4   # noqa: E731
    assert _foca(2, spacing[:3], [0.6], constant, 0.5) == pytest.approx(-0.4, abs=1e-12)
    # order 1 right after a full step: BDF2 with the secant slope is the secant line, and so is Heun
    quad = FUNCTIONS["quadratic"]
    target = spacing[1] - 0.2
    assert _foca(1, spacing[:2], [], quad, target) == pytest.approx(_forecast("taylor", 1, spacing, quad, target))
    # order 2 on a quadratic c t^2 + ...: Taylor is exact; BDF2 with the slope frozen at t_b misses by
    # 2 c h^2 (1 + w) / (1 + 2 w), Heun keeps half of the predictor's leg, so FoCa reaches
    #   F_b + h g_b + c h^2 (1/2 - (1 + w) / (1 + 2 w))  (c = 2, h = t - t_b, w = h / (t_b - t_a))
    full = spacing[:3]
    t_a, t_b = full[1], full[2]
    h = target - t_b
    w = h / (t_b - t_a)
    g_b = -1.2 + 4.0 * t_b
    expected = quad(t_b) + h * g_b + 2.0 * h ** 2 * (0.5 - (1 + w) / (1 + 2 * w))
    assert _foca(2, full, [], quad, target) == pytest.approx(expected, abs=1e-12)
    # calibration: a verified point on the trajectory pulls the forecast towards the curve
    assert abs(_foca(2, full, [t_b - 0.05], quad, target) - quad(target)) < abs(expected - quad(target))


def test_foca_is_per_sample_and_a_full_step_restarts_the_window():
    forecaster = make_forecaster("foca", 1, 2)
    f = lambda t: 1.0 + 2.0 * t * t       # noqa: E731
    col = lambda *ts: (torch.tensor([[f(t)] for t in ts], dtype=torch.float64),)   # noqa: E731
    both = torch.tensor([0, 1])
    forecaster.update(both, torch.tensor([1.0, 1.0], dtype=torch.float64), col(1.0, 1.0))
    forecaster.update(both, torch.tensor([0.9, 0.9], dtype=torch.float64), col(0.9, 0.9))
    forecaster.observe(torch.tensor([1]), torch.tensor([0.8], dtype=torch.float64), col(0.8))
    out = forecaster.predict(both, torch.tensor([0.7, 0.7], dtype=torch.float64))[0]
    assert float(out[0, 0]) == pytest.approx(_foca_reference(1, [1.0, 0.9], [], f, 0.7))
    assert float(out[1, 0]) == pytest.approx(_foca_reference(1, [1.0, 0.9], [0.8], f, 0.7))
    # a full step for sample 1: its window is (observed 0.8, full 0.7), its anchor the new full step
    forecaster.update(torch.tensor([1]), torch.tensor([0.7], dtype=torch.float64), col(0.7))
    got = float(forecaster.predict(torch.tensor([1]), torch.tensor([0.6], dtype=torch.float64))[0][0, 0])
    t1, t0, h = 0.8, 0.7, -0.1
    g_b = (f(0.7) - f(0.9)) / (0.7 - 0.9)
    w = h / (t0 - t1)
    pred = ((1 + w) ** 2 * f(t0) - w ** 2 * f(t1) + (1 + w) * h * g_b) / (1 + 2 * w)
    assert got == pytest.approx(f(0.7) + h / 2 * (g_b + (pred - f(t0)) / h))


def test_runner_gives_foca_every_step_it_used():
    """FoCa's window must end at each sample's last step, speculative or full (the runner records
    accepted and unchecked forecasts with ``observe``, full and recomputed steps with ``update``)."""
    import speca_compile
    from tests import helpers

    z = helpers.build("dit")
    compiled = torch.compile(z.model, backend="speca", options={"forecaster": "foca", "lowering": "eager"})
    helpers.trajectory(z, compiled, batch=3, steps=20, seed=2)
    runner = speca_compile.registry.runners_for(compiled)[0]
    traj = runner.router.all()[-1]
    decisions = speca_compile.stats(compiled)["trajectories"][-1]["decisions"]
    assert any(set(d) & {"S", "A"} for d in decisions)
    last = traj.steps[-1].timestep / traj.t_scale
    for forecaster in traj.cache.forecasters.values():
        assert forecaster.win_count.tolist() == [2, 2, 2]
        assert forecaster.win_times[:, 0].tolist() == pytest.approx([last] * 3)
