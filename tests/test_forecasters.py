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
