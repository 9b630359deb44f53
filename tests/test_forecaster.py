"""Acceptance 6: divided differences reproduce polynomials of degree <= order
exactly on non-uniform timesteps, per sample, with any history length."""

import pytest
import torch

from speca_compile.runtime.feature_cache import FeatureCache, FeatureGroup, feature_groups, residual_pairing
from speca_compile.runtime.forecaster import TaylorForecaster
from speca_compile.runtime.threshold import progress, threshold
from speca_compile.runtime.verify import relative_error


def _poly(coef, t):
    return sum(coef[:, k] * t[:, None] ** k for k in range(coef.shape[1]))


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_polynomial_of_degree_order_is_exact_on_nonuniform_times(order):
    torch.manual_seed(order)
    batch = 3
    f = TaylorForecaster(order, batch)
    coef = torch.randn(batch, order + 1, 7, dtype=torch.float64)
    # shifted flow-matching-like spacing, different per sample
    base = torch.tensor([1.0, 0.97, 0.9, 0.72, 0.55, 0.5, 0.31], dtype=torch.float64)
    for i, t in enumerate(base):
        times = t * torch.tensor([1.0, 0.8, 1.3], dtype=torch.float64)
        f.update(torch.arange(batch), times, (_poly(coef, times),))
    query = torch.tensor([0.2, 0.05, 0.25], dtype=torch.float64)
    pred = f.predict(torch.arange(batch), query)[0]
    assert torch.allclose(pred, _poly(coef, query), atol=1e-9, rtol=1e-9)


def test_higher_degree_is_not_exact_so_the_test_can_fail():
    f = TaylorForecaster(1, 1)
    for t in [1.0, 0.7]:
        tt = torch.tensor([t], dtype=torch.float64)
        f.update(torch.arange(1), tt, ((tt ** 2)[:, None],))
    q = torch.tensor([0.2], dtype=torch.float64)
    assert abs(float(f.predict(torch.arange(1), q)[0]) - 0.04) > 0.1


def test_short_history_uses_the_order_it_supports():
    f = TaylorForecaster(3, 1)
    idx = torch.arange(1)
    f.update(idx, torch.tensor([1.0]), (torch.tensor([[5.0]]),))
    assert float(f.predict(idx, torch.tensor([0.5]))[0]) == 5.0  # order 0: copy
    f.update(idx, torch.tensor([0.8]), (torch.tensor([[4.0]]),))
    assert abs(float(f.predict(idx, torch.tensor([0.6]))[0]) - 3.0) < 1e-12  # linear


def test_per_sample_updates_are_independent():
    torch.manual_seed(0)
    f = TaylorForecaster(2, 2)
    alone = TaylorForecaster(2, 1)
    coef = torch.randn(1, 3, 4, dtype=torch.float64)
    for t in [1.0, 0.8, 0.5]:
        tt = torch.tensor([t], dtype=torch.float64)
        f.update(torch.tensor([1]), tt, (_poly(coef, tt),))
        alone.update(torch.tensor([0]), tt, (_poly(coef, tt),))
        # sample 0 gets unrelated values at other times
        f.update(torch.tensor([0]), tt * 0.9, (torch.randn(1, 4, dtype=torch.float64),))
    q = torch.tensor([0.3], dtype=torch.float64)
    assert torch.equal(f.predict(torch.tensor([1]), q)[0], alone.predict(torch.tensor([0]), q)[0])


@pytest.mark.parametrize("kind", ["taylor", "hermite"])
def test_weights_shared_by_rows_with_one_history_are_each_rows_own(kind):
    """Weights are computed once per distinct (timestep, history, count): rows that share one
    get it, rows that differ in any of the three get their own, as if computed one by one."""
    from speca_compile.runtime.forecaster import make_forecaster

    f = make_forecaster(kind, 2, 4)
    value = lambda n: (torch.randn(n, 3, dtype=torch.float64),)
    f.update(torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 0.95], dtype=torch.float64), value(4))
    f.update(torch.tensor([0, 1, 3]), torch.tensor([0.8, 0.8, 0.8], dtype=torch.float64), value(3))
    f.update(torch.tensor([0, 1]), torch.tensor([0.6, 0.6], dtype=torch.float64), value(2))
    # rows 0 and 1 share everything; row 2 has one cached step; row 3 another first step
    query = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    rows = f.weight_rows(torch.arange(4), query)
    assert rows[0] == rows[1]
    hists, counts = f.times.tolist(), f.count.tolist()
    assert counts == [3, 3, 1, 2]
    for r in range(4):
        assert rows[r] == f.sample_weights(0.5, hists[r], counts[r])
    assert len({tuple(r) for r in rows}) == 3
    # a different query time for one row: its own weights
    other = f.weight_rows(torch.arange(2), torch.tensor([0.5, 0.4], dtype=torch.float64))
    assert other[0] == rows[0] and other[1] != rows[1]


@pytest.mark.parametrize("kind", ["taylor", "hermite", "foca"])
def test_a_full_step_at_a_cached_timestep_replaces_it(kind):
    """Heun-type samplers evaluate one timestep twice (corrector, then next step): the later
    value replaces the earlier one, so the forecaster equals one that only saw the later value
    (no division by zero, no error)."""
    from speca_compile.runtime.forecaster import make_forecaster

    curve = lambda t: torch.tensor([[1 + 2 * t + 3 * t * t, -t]], dtype=torch.float64)
    idx = torch.arange(1)
    twice, once = make_forecaster(kind, 2, 1), make_forecaster(kind, 2, 1)
    for t in (0.9, 0.7, 0.5):
        if t == 0.5:
            twice.update(idx, torch.tensor([t], dtype=torch.float64), (curve(t) + 5.0,))
        for f in (twice, once):
            f.update(idx, torch.tensor([t], dtype=torch.float64), (curve(t),))
    q = torch.tensor([0.3], dtype=torch.float64)
    assert torch.allclose(twice.predict(idx, q)[0], once.predict(idx, q)[0], rtol=0, atol=1e-12)
    assert twice.count.tolist() == once.count.tolist() == [3]
    if kind == "taylor":   # exact on a quadratic at order 2, as if the first value never was
        assert torch.allclose(twice.predict(idx, q)[0], curve(0.3), atol=1e-12)
    # a forecast at the cached timestep itself is the cached value (not for Hermite, whose
    # scaled basis is nonzero at the anchor beyond degree 1: H_2(0) = -2, by design)
    if kind != "hermite":
        assert torch.allclose(once.predict(idx, torch.tensor([0.5], dtype=torch.float64))[0], curve(0.5), atol=1e-12)


def test_forget_restarts_a_sample_alone():
    f = TaylorForecaster(1, 2)
    f.update(torch.arange(2), torch.tensor([0.9, 0.9], dtype=torch.float64), (torch.ones(2, 3),))
    f.forget(torch.tensor([1]))
    assert f.count.tolist() == [1, 0]
    with pytest.raises(RuntimeError, match="no cached full step"):
        f.predict(torch.tensor([1]), torch.tensor([0.5], dtype=torch.float64))
    assert torch.equal(f.predict(torch.tensor([0]), torch.tensor([0.5], dtype=torch.float64))[0], torch.ones(1, 3))


def test_feature_groups_cover_the_stack_around_the_verify_block():
    assert [(g.name, g.base, g.target) for g in feature_groups(5, 6)] == [("prefix", 0, 5), ("verify", 5, 6)]
    assert [(g.name, g.base, g.target) for g in feature_groups(0, 6)] == [("verify", 0, 1), ("rest", 1, 6)]
    assert [g.name for g in feature_groups(2, 6)] == ["prefix", "verify", "rest"]


def test_streams_pair_by_shape_across_orders():
    a, b = torch.zeros(2, 16, 8), torch.zeros(2, 4, 8)
    assert residual_pairing((b, a), (a, b)) == (1, 0)
    assert residual_pairing((torch.zeros(2, 20, 8),), (a, b)) is None


def test_cache_forecasts_residual_relative_to_the_exact_base():
    cache = FeatureCache([FeatureGroup("verify", 0, 1)], "taylor", 1, 1)
    idx = torch.arange(1)
    for t in [1.0, 0.5]:
        base = torch.full((1, 3), 100.0 * t)
        cache.update(idx, torch.tensor([t]), {0: (base,), 1: (base + 2 * t,)})
    new_base = torch.full((1, 3), 7.0)
    out = cache.predict("verify", idx, torch.tensor([0.25]), (new_base,))[0]
    assert torch.allclose(out, new_base + 0.5)
    assert cache.nbytes() == 2 * 3 * 4


def test_threshold_tightens_over_the_trajectory():
    assert threshold(0.1, 0.01, 999.0, 999.0) == pytest.approx(0.1)
    assert threshold(0.1, 0.01, 0.0, 999.0) == pytest.approx(0.001)
    assert progress(500.0, 1000.0) == pytest.approx(0.5)
    assert progress(5.0, 0.0) == 0.0


def test_relative_errors_are_per_sample():
    real = (torch.ones(2, 3, 4),)
    pred = (torch.stack([torch.ones(3, 4), torch.ones(3, 4) * 1.5]),)
    l2 = relative_error(pred, real, "rel_l2")
    l1 = relative_error(pred, real, "rel_l1")
    assert l2.tolist() == pytest.approx([0.0, 0.5])
    assert l1.tolist() == pytest.approx([0.0, 0.5])
