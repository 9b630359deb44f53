"""The pooled feature store (runtime/feature_pool.py): trajectories' rows in one store give
exactly what caches of their own give; slots are reused, cleared before reuse, kept through
growth; one layout per pool."""

import pytest
import torch

from speca_compile.runtime.feature_cache import FeatureCache, feature_groups
from speca_compile.runtime.feature_pool import FeaturePools, pooled_rows, shared_pool

GROUPS = feature_groups(1, 3)          # prefix, verify, rest
SHAPE = (5, 4)                         # tokens, channels


def _cuts(rows, seed):
    """A full step's state at every cut the groups read, ``rows`` samples."""
    g = torch.Generator().manual_seed(seed)
    return {c: (torch.randn((rows,) + SHAPE, generator=g, dtype=torch.float64),) for c in (0, 1, 2, 3)}


def _caches(kind, sizes, pooled):
    if pooled:
        pools = FeaturePools(GROUPS, kind, 2, 0.5, None)
        return pools, [pools.cache(n) for n in sizes]
    return None, [FeatureCache(GROUPS, kind, 2, n, 0.5, None) for n in sizes]


def _history(caches):
    """Full steps at uneven times, a restart and a repeated timestep (a corrector's second call)."""
    sizes = [c.size if hasattr(c, "size") else next(iter(c.forecasters.values())).batch_size for c in caches]
    for step, t in enumerate([1.0, 0.93, 0.81, 0.81, 0.62]):
        for j, (cache, n) in enumerate(zip(caches, sizes)):
            index = torch.arange(n)
            cache.update(index, torch.full((n,), t, dtype=torch.float64), _cuts(n, 10 * step + j))
        if step == 2:
            caches[0].forget(torch.tensor([0]))


@pytest.mark.parametrize("kind", ["taylor", "hermite"])
def test_pooled_forecasts_equal_caches_of_their_own(kind):
    _, own = _caches(kind, [2, 1, 3], pooled=False)
    pools, pooled = _caches(kind, [2, 1, 3], pooled=True)
    _history(own)
    _history(pooled)
    # one pool for one layout, grown by doubling: 2, 4, 8 slots for 2 + 1 + 3 rows
    assert len(pools._pools) == 1 and pools.pool(next(iter(pools._pools))).capacity == 8
    for a, b in zip(own, pooled):
        n = b.size
        for group in GROUPS:
            index, times = torch.arange(n), torch.full((n,), 0.5, dtype=torch.float64)
            base = (torch.ones((n,) + SHAPE, dtype=torch.float64),)
            for x, y in zip(a.predict(group.name, index, times, base), b.predict(group.name, index, times, base)):
                assert torch.equal(x, y)
            wa, ra = a.linear_terms(group.name, index, times)
            wb, rb = b.linear_terms(group.name, index, times)
            assert wa == wb
            assert all(torch.equal(x, y) for ka, kb in zip(ra, rb) for x, y in zip(ka, kb))
        assert a.pairings == b.pairings
        assert b.nbytes() == a.nbytes()


def test_released_slots_are_reused_and_cleared():
    pools, (first, second) = _caches("taylor", [2, 2], pooled=True)
    for cache in (first, second):
        cache.update(torch.arange(2), torch.full((2,), 1.0, dtype=torch.float64), _cuts(2, 0))
    pool = first.pool
    slots = first.slot_list
    forecaster = pool.cache.forecasters["verify"]
    forecaster.diffs[0][0][first.slots] = float("inf")   # a value a zero weight would not hide
    first.release()
    assert first.pool is None and first.nbytes() == 0
    third = pools.cache(2)
    third.update(torch.arange(2), torch.full((2,), 0.9, dtype=torch.float64), _cuts(2, 1))
    assert third.slot_list == slots and pool.capacity == 4      # reused, not grown
    assert forecaster.count[third.slots].tolist() == [1, 1]      # a fresh history
    assert bool(torch.isfinite(forecaster.diffs[1][0][third.slots]).all())
    with pytest.raises(RuntimeError, match="no cached full step"):
        pools.cache(1).linear_terms("verify", torch.arange(1), torch.ones(1, dtype=torch.float64))


def test_growth_keeps_what_the_pool_held():
    pools, (first,) = _caches("taylor", [1], pooled=True)
    cuts = _cuts(1, 3)
    first.update(torch.arange(1), torch.full((1,), 1.0, dtype=torch.float64), cuts)
    before = first.predict("rest", torch.arange(1), torch.full((1,), 0.7, dtype=torch.float64), cuts[2])
    later = [pools.cache(3) for _ in range(3)]
    for cache in later:
        cache.update(torch.arange(3), torch.full((3,), 1.0, dtype=torch.float64), _cuts(3, 4))
    assert first.pool.capacity >= 10
    after = first.predict("rest", torch.arange(1), torch.full((1,), 0.7, dtype=torch.float64), cuts[2])
    assert torch.equal(before[0], after[0])


class _Traj:
    def __init__(self, cache):
        self.cache = cache


class _Part:
    def __init__(self, cache, times):
        self.traj = _Traj(cache)
        self.scaled = torch.tensor(times, dtype=torch.float64)


def test_rows_of_one_pool_read_in_call_order_and_other_layouts_apart():
    pools, (a, b) = _caches("taylor", [2, 1], pooled=True)
    a.update(torch.arange(2), torch.ones(2, dtype=torch.float64), _cuts(2, 5))
    b.update(torch.arange(1), torch.ones(1, dtype=torch.float64), _cuts(1, 6))
    pa, pb = _Part(a, [0.5, 0.5]), _Part(b, [0.4])
    owner = {0: (pb, 0), 1: (pa, 1), 2: (pa, 0)}             # call rows interleave the trajectories
    pool, slots, times = pooled_rows(owner, [0, 1, 2])
    assert slots.tolist() == [b.slot_list[0], a.slot_list[1], a.slot_list[0]]
    assert times.tolist() == [0.4, 0.5, 0.5]
    other = pools.cache(1)
    other.update(torch.arange(1), torch.ones(1, dtype=torch.float64),
                 {c: (torch.zeros((1, 7, 4), dtype=torch.float64),) for c in (0, 1, 2, 3)})
    assert other.pool is not a.pool                            # another token count: another pool
    assert shared_pool([a, other]) is None and shared_pool([a, b]) is a.pool
    assert shared_pool([a, FeatureCache(GROUPS, "taylor", 2, 1)]) is None
