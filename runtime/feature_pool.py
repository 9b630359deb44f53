"""Pooled feature caches: the cached rows of many trajectories in one store per feature layout.

Why: a served batch holds one trajectory per request (two rows with guidance), and each had
its own ``FeatureCache``, so a tick's forecast read every request's weights and rows and
concatenated them, and a full step updated every request's forecasters in turn: a few tensor
ops per request, term and stream, about 1 ms of Python per tick with 8 DiT requests (of a
6.7 ms speculative tick; ``examples/serve_tick_profile.py``).  Pooled, the trajectories whose
features have one layout own *slots* (rows) of one forecaster per group, and a call's forecast
and its full steps' update are one gather and one update over all its rows' slots.  The
results are bit-identical: every op of a Taylor or Hermite forecaster is per row.

Where: calls that name their rows (``speca_compile.rows``: the serving step loop), whose
trajectories are small and many.  A trajectory alone in its calls keeps its own
``FeatureCache`` (whole-tensor updates, no gather, no slot bookkeeping), and FoCa (recursive,
``observe``) is never pooled.

Slots: a trajectory takes its slots at its first full step (the features' shapes and dtypes
choose the pool) and gives them back when the router finishes it (``FeatureCache.release``);
slots are cleared (zero rows, empty history) before reuse.  A pool grows by doubling and never
shrinks: it holds the peak of concurrent requests.  Thread-safe: a pool's lock is held around
every op on its tensors (growth replaces them).
"""

from __future__ import annotations

import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from speca_compile.runtime.feature_cache import CACHE_DTYPES, FeatureCache, FeatureGroup, add_base
from speca_compile.runtime.forecaster import Feature

POOLED_FORECASTERS = ("taylor", "hermite")   # weighted sums of per-row state; FoCa is recursive


def layout(cuts: Dict[int, Feature]) -> Tuple:
    """What must match for two trajectories' rows to share storage: each cut's streams'
    shapes (without the batch axis), dtypes and devices."""
    return tuple((c, tuple((tuple(v.shape[1:]), v.dtype, v.device) if isinstance(v, torch.Tensor)
                           else ("value", type(v).__name__) for v in cuts[c]))
                 for c in sorted(cuts))


class FeaturePool:
    """One ``FeatureCache`` whose samples are slots handed to trajectories."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache
        self.free: List[int] = []
        self.lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return next(iter(self.cache.forecasters.values())).batch_size

    def allocate(self, n: int) -> torch.Tensor:
        """``n`` cleared slots, growing the pool (doubling) when too few are free."""
        with self.lock:
            if len(self.free) < n:
                start = self.capacity
                extra = max(n - len(self.free), start)
                for forecaster in self.cache.forecasters.values():
                    forecaster.grow(extra)
                self.free.extend(range(start, start + extra))
            self.free.sort()
            taken, self.free = self.free[:n], self.free[n:]
            slots = torch.tensor(taken, dtype=torch.long)
            for forecaster in self.cache.forecasters.values():
                forecaster.clear(slots)
            return slots

    def release(self, slots: torch.Tensor) -> None:
        with self.lock:
            self.free.extend(slots.tolist())

    def update(self, slots: torch.Tensor, times: torch.Tensor, cuts: Dict[int, Feature]) -> None:
        with self.lock:
            self.cache.update(slots, times, cuts)

    def linear_terms(self, name: str, slots: torch.Tensor, times: torch.Tensor):
        with self.lock:
            return self.cache.linear_terms(name, slots, times)

    def predict(self, name: str, slots: torch.Tensor, times: torch.Tensor) -> Feature:
        with self.lock:
            return self.cache.forecasters[name].predict(slots, times)

    def forget(self, slots: torch.Tensor) -> None:
        with self.lock:
            self.cache.forget(slots)

    def slot_bytes(self) -> int:
        """The bytes one slot's rows take (all groups, storage dtype)."""
        with self.lock:
            return self.cache.nbytes() // max(1, self.capacity)


class FeaturePools:
    """A runner's pools, one per feature layout; ``cache(size)`` makes a trajectory's cache."""

    def __init__(self, groups: Sequence[FeatureGroup], forecaster: str, order: int, sigma: float,
                 cache_dtype: Optional[str]):
        self.groups = tuple(groups)
        self.settings = (forecaster, order, sigma, cache_dtype)
        self._pools: Dict[Tuple, FeaturePool] = {}
        self._lock = threading.Lock()

    def pool(self, key: Tuple) -> FeaturePool:
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                forecaster, order, sigma, cache_dtype = self.settings
                pool = self._pools[key] = FeaturePool(
                    FeatureCache(self.groups, forecaster, order, 0, sigma, cache_dtype))
            return pool

    def cache(self, size: int) -> "PooledCache":
        return PooledCache(self, size)


class PooledCache:
    """A trajectory's ``FeatureCache`` whose sample ``i`` is row ``slots[i]`` of a pool (the
    same interface: update, forget, observe, predict, linear_terms, nbytes, release)."""

    recursive = False

    def __init__(self, pools: FeaturePools, size: int):
        self.pools = pools
        self.size = size
        self.dtype = CACHE_DTYPES[pools.settings[3]]   # the storage dtype (stats)
        self.pool: Optional[FeaturePool] = None
        self.slots: Optional[torch.Tensor] = None
        self.slot_list: List[int] = []   # the same, as Python ints (a call's rows map to slots in Python)

    @property
    def pairings(self) -> Dict[str, Optional[Tuple[int, ...]]]:
        """``FeatureCache.pairings``: the pool's (its layout, the streams' shapes, decides it)."""
        return self.pool.cache.pairings if self.pool is not None else {}

    def bind(self, cuts: Dict[int, Feature]) -> FeaturePool:
        """The pool of ``cuts``' layout, taking this trajectory's slots there at the first call."""
        if self.pool is None:
            self.pool = self.pools.pool(layout(cuts))
            self.slots = self.pool.allocate(self.size)
            self.slot_list = self.slots.tolist()
        return self.pool

    def update(self, index: torch.Tensor, times: torch.Tensor, cuts: Dict[int, Feature]) -> None:
        self.bind(cuts).update(self.slots[index], times, cuts)

    def forget(self, index: torch.Tensor) -> None:
        if self.pool is not None:
            self.pool.forget(self.slots[index])

    def observe(self, index: torch.Tensor, times: torch.Tensor, cuts: Dict[int, Feature]) -> None:
        """Nothing to record: pooled forecasters are not recursive."""

    def _slots(self, index: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            raise RuntimeError("forecast requested for a sample with no cached full step")
        return self.slots[index]

    def predict(self, name: str, index: torch.Tensor, times: torch.Tensor, base: Feature) -> Feature:
        slots = self._slots(index)
        return add_base(self.pool.predict(name, slots, times), base)

    def linear_terms(self, name: str, index: torch.Tensor, times: torch.Tensor):
        slots = self._slots(index)
        return self.pool.linear_terms(name, slots, times)

    def nbytes(self) -> int:
        return self.pool.slot_bytes() * self.size if self.pool is not None else 0

    def release(self) -> None:
        if self.pool is not None:
            self.pool.release(self.slots)
            self.pool, self.slots, self.slot_list = None, None, []


def shared_pool(caches: Iterable, cuts: Optional[Dict[int, Feature]] = None) -> Optional[FeaturePool]:
    """The one pool every cache of ``caches`` keeps its rows in, else None (a cache of its
    own, or several pools).  With ``cuts`` (a full step's state), caches not yet in a pool
    take their slots in the pool of that layout first."""
    pool = None
    for cache in caches:
        if not isinstance(cache, PooledCache):
            return None
        if cache.pool is None:
            if cuts is None:
                return None
            cache.bind(cuts)
        if pool is None:
            pool = cache.pool
        elif cache.pool is not pool:
            return None
    return pool


def pooled_rows(owner: Dict, rows: Sequence[int], cuts: Optional[Dict[int, Feature]] = None):
    """``(pool, slots, times)`` for call rows ``rows`` whose trajectories keep their features in
    one pool: each row's slot and its trajectory's scaled timestep, in the order of ``rows``
    (so the pool's rows come back in call order: no regrouping, no scatter); None where the
    rows' caches are not one pool's.  ``owner`` maps a call row to ``(part, sample)``
    (``runtime/forecast_rows``); ``cuts`` as in ``shared_pool``."""
    parts = {}
    for row in rows:
        part = owner[row][0]
        parts.setdefault(id(part), part)
    pool = shared_pool((part.traj.cache for part in parts.values()), cuts)
    if pool is None:
        return None
    scaled = {key: part.scaled.tolist() for key, part in parts.items()}
    slots, times = [], []
    for row in rows:
        part, sample = owner[row]
        slots.append(part.traj.cache.slot_list[sample])
        times.append(scaled[id(part)][sample])
    return pool, torch.tensor(slots, dtype=torch.long), torch.tensor(times, dtype=torch.float64)
