"""The cached features of one trajectory, grouped around the verify block.

Default memory layout (DESIGN.md): O(order) state-sized tensors per sample
for the whole stack, not O(depth x order).  With verify block v among L:

* ``prefix``: state at cut v  relative to the stream input (cut 0), v > 0;
* ``verify``: state at cut v+1 relative to cut v (the verify block's residual);
* ``rest``:   state at cut L  relative to cut v+1, v < L-1.

A feature is the residual ``target - base`` when every target stream has a
base stream of the same shape (the residual a stack of blocks adds to its
streams; streams are paired by shape, since two stacks may list them in
different orders), else the raw target (e.g. when a stack merges streams).

``cache_dtype`` (the option): the dtype the forecasters store their rows in.
``None`` keeps the features' own dtype; ``"bf16"`` halves the cache bytes
(``nbytes``, the ``cache_bytes`` of ``stats``) on any device.  Features are
computed in the stream's dtype and rounded once as they are stored; forecasts
are computed in float32 at least and come back in the stream's dtype
(``add_base``), so the verify block and the epilogue see the dtype they would
see without the option.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import torch

from speca_compile.runtime.forecaster import Feature, make_forecaster

# the ``cache_dtype`` option's values: the storage dtype (None: the features' own)
CACHE_DTYPES = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    """A forecast target: the state at cut ``target`` given the state at cut ``base``."""

    name: str
    base: int
    target: int


def feature_groups(verify_unit: int, num_units: int) -> Tuple[FeatureGroup, ...]:
    groups = []
    if verify_unit > 0:
        groups.append(FeatureGroup("prefix", 0, verify_unit))
    groups.append(FeatureGroup("verify", verify_unit, verify_unit + 1))
    if verify_unit + 1 < num_units:
        groups.append(FeatureGroup("rest", verify_unit + 1, num_units))
    return tuple(groups)


def cache_cuts(groups: Sequence[FeatureGroup]) -> Tuple[int, ...]:
    """The cuts whose state a full step must hand the cache (each group's base and target)."""
    return tuple(sorted({c for g in groups for c in (g.base, g.target)}))


def residual_pairing(target: Sequence[torch.Tensor], base: Sequence[torch.Tensor]) -> Optional[Tuple[int, ...]]:
    """For each target stream, the index of the base stream it is a residual of; None if unpaired."""
    return pair_by_shape([tuple(t.shape) for t in target],
                         [tuple(b.shape) if isinstance(b, torch.Tensor) else None for b in base])


def pair_by_shape(target: Sequence, base: Sequence) -> Optional[Tuple[int, ...]]:
    """``residual_pairing`` on shapes (None: a base that is no tensor): each target stream pairs
    with the first unused base stream of its shape.  Shapes may be expressions (a fused step
    pairs the streams' symbolic shapes, ``runtime/fused_step.py``)."""
    if len(target) != len(base) or any(t is None for t in target):
        return None
    unused = list(range(len(base)))
    pairing = []
    for shape in target:
        match = next((i for i in unused if base[i] is not None and base[i] == shape), None)
        if match is None:
            return None
        unused.remove(match)
        pairing.append(match)
    return tuple(pairing)


class FeatureCache:
    """One forecaster per feature group, all samples of one trajectory."""

    def __init__(self, groups: Sequence[FeatureGroup], forecaster: str, order: int, batch_size: int,
                 sigma: float = 0.5, cache_dtype: Optional[str] = None):
        self.groups = {g.name: g for g in groups}
        self.dtype = CACHE_DTYPES[cache_dtype]   # storage dtype; None: as given
        self.forecasters = {g.name: make_forecaster(forecaster, order, batch_size, sigma, self.dtype)
                            for g in groups}
        # per group, which base stream each target stream was a residual of at the latest update
        # (None: the raw state); a fused step checks its own pairing against it
        self.pairings: Dict[str, Optional[Tuple[int, ...]]] = {}
        # FoCa's predictor runs on the trajectory as used, speculative steps included
        self.recursive = forecaster == "foca"

    def update(self, index: torch.Tensor, times: torch.Tensor, cuts: Dict[int, Feature]) -> None:
        """Cache the full-step state of samples ``index`` (``cuts`` maps cut -> values)."""
        for name, group in self.groups.items():
            target, base = cuts[group.target], cuts[group.base]
            self.pairings[name] = residual_pairing(target, base)
            self.forecasters[name].update(index, times, self._feature(group, cuts))

    def forget(self, index: torch.Tensor) -> None:
        """Empty the window of samples ``index`` (restarted samples)."""
        for forecaster in self.forecasters.values():
            forecaster.forget(index)

    def observe(self, index: torch.Tensor, times: torch.Tensor, cuts: Dict[int, Feature]) -> None:
        """Record the state a speculative step used (for recursive forecasters such as FoCa)."""
        for name, group in self.groups.items():
            self.forecasters[name].observe(index, times, self._feature(group, cuts))

    @staticmethod
    def _feature(group: FeatureGroup, cuts: Dict[int, Feature]) -> Feature:
        target, base = cuts[group.target], cuts[group.base]
        pairing = residual_pairing(target, base)
        return (tuple(t - base[i] for t, i in zip(target, pairing))
                if pairing is not None else tuple(target))

    def predict(self, name: str, index: torch.Tensor, times: torch.Tensor, base: Feature) -> Feature:
        """Forecast the target state of group ``name`` given its (exact or forecast) base."""
        return add_base(self.forecasters[name].predict(index, times), base)

    def linear_terms(self, name: str, index: torch.Tensor, times: torch.Tensor):
        """Group ``name``'s forecast of samples ``index`` as weights and rows (``Forecaster.
        linear_terms``; raises ``NotLinear`` for a forecaster that is not a weighted sum); the
        caller combines them (``combine_terms``) and adds the base (``add_base``)."""
        return self.forecasters[name].linear_terms(index, times)

    def nbytes(self) -> int:
        """The bytes the cached rows take, in their storage dtype."""
        return sum(f.nbytes() for f in self.forecasters.values())

    def release(self) -> None:
        """The trajectory is finished (the router drops the cache); a pooled cache gives its
        slots back (``runtime/feature_pool``), this one is freed with its last reference."""


def add_base(feature: Feature, base: Feature) -> Feature:
    """The target state from a forecast feature: ``base + feature`` where the feature is a
    residual of the base's streams, else the feature itself (``FeatureCache._feature``); in the
    base streams' dtype either way (a forecast combined in float32 from rows stored in bfloat16,
    ``forecaster.combine_terms``, goes back to a bfloat16 model's dtype; a no-op otherwise)."""
    pairing = residual_pairing(feature, base)
    if pairing is not None:
        return tuple(_as(base[i] + f, base[i].dtype) for f, i in zip(feature, pairing))
    dtypes = {b.dtype for b in base if isinstance(b, torch.Tensor) and b.is_floating_point()}
    if len(dtypes) == 1:   # a raw target: the streams' dtype, where they share one
        (dtype,) = dtypes
        return tuple(_as(f, dtype) for f in feature)
    return feature


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype or not t.is_floating_point() else t.to(dtype)
