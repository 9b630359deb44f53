"""The forecast of a view's rows, each row from its own trajectory's cache.

A call's rows may belong to many trajectories (a served batch: one per
request), so a forecast gathers every trajectory's weights and cached rows
and combines them in one pass, instead of one small pass per trajectory.
Where the trajectories keep their rows in one pool (``runtime/feature_pool``:
calls that name their rows), that gather is one read of the pool in call
order.
``forecast`` returns the forecast state (the runner's segment-by-segment
path); ``forecast_terms`` returns the weights and rows themselves, in the
view's row order, for a fused step that does the arithmetic inside its graph
(``runtime/fused_step.py``).

``owner`` maps a call row to ``(part, sample)``: the ``runner.Part`` (the
rows of one call that continue one trajectory) and the row's sample index in
that trajectory.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from speca_compile.runtime.batch_view import BatchView, take_rows
from speca_compile.runtime.feature_cache import add_base
from speca_compile.runtime.feature_pool import pooled_rows
from speca_compile.runtime.forecaster import NotLinear, combine_terms, weight_tensor


def by_part(owner: Dict, rows: Sequence[int], positions: Sequence[int]):
    """(part, positions, samples) for the ``rows`` of a call (``positions``: where each sits in
    the values at hand), grouped by the trajectory that owns them."""
    grouped: Dict[int, Tuple[object, List[int], List[int]]] = {}
    for row, position in zip(rows, positions):
        part, sample = owner[int(row)]
        entry = grouped.setdefault(id(part), (part, [], []))
        entry[1].append(int(position))
        entry[2].append(sample)
    return [(part, torch.tensor(pos, dtype=torch.long), torch.tensor(smp, dtype=torch.long))
            for part, pos, smp in grouped.values()]


def take(value, at: torch.Tensor):
    """``value``'s rows ``at``; ``value`` itself where ``at`` is all of its rows in order."""
    if (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == len(at)
            and torch.equal(at, torch.arange(len(at)))):
        return value
    return take_rows(value, at)


def forecast(owner: Dict, group: str, view: BatchView, base):
    """The forecast of ``group`` for the rows the engines compute, each row's from its own
    trajectory's cache.  Only the view's samples are forecast: where the engines compute every
    row (inputs not sliceable), the other rows are zeros (a sample restarted this step has no
    cache to forecast from); they are computed through and discarded, and no op of a DiT
    mixes rows."""
    rows = view.rows.tolist()
    size = len(view.work)
    pooled = _pooled_terms(owner, group, rows)
    if pooled is not None:   # the rows came back in call order
        feature = combine_terms(*pooled)
        if not view.sliced and rows != list(range(size)):
            feature = _scatter(feature, view.rows, size)
        return add_base(feature, base)
    positions = range(len(rows)) if view.sliced else rows
    parts = by_part(owner, rows, positions)
    if len(parts) == 1 and torch.equal(parts[0][1], torch.arange(size)):
        part, _, samples = parts[0]    # one trajectory computes every row: no gather or scatter
        return part.traj.cache.predict(group, samples, part.scaled[samples], base)
    try:
        weights, rows, at = _gathered_terms(parts, group)
    except NotLinear:
        return _forecast_each(parts, group, size, base)
    feature = combine_terms(weights, rows)
    if len(at) != size or not torch.equal(at, torch.arange(size)):
        feature = _scatter(feature, at, size)
    return add_base(feature, base)


def _scatter(feature, at: torch.Tensor, size: int):
    """``feature``'s rows placed at rows ``at`` of ``size`` rows, zeros elsewhere."""
    return tuple(f.new_zeros((size,) + tuple(f.shape[1:])).index_copy_(0, at.to(f.device), f) for f in feature)


def _pooled_terms(owner: Dict, group: str, rows: Sequence[int]):
    """``(weights, terms)`` of call rows ``rows`` read from their shared pool in one gather,
    in the order of ``rows`` (``feature_pool.pooled_rows``); None where they have no one pool."""
    pooled = pooled_rows(owner, rows)
    if pooled is None:
        return None
    pool, slots, times = pooled
    weights, terms = pool.linear_terms(group, slots, times)
    return weight_tensor(weights, len(terms)), terms


def forecast_terms(owner: Dict, group: str, rows: Sequence[int]):
    """``group``'s forecast of the call rows ``rows`` as ``(weights, terms)``: a ``[rows,
    terms]`` float64 tensor and ``terms[k][stream]`` with one row per call row, in the order
    of ``rows``; the forecast is ``sum_k weights[:, k] * terms[k]`` plus the base.  Raises
    ``NotLinear`` for a forecaster that is not a weighted sum."""
    pooled = _pooled_terms(owner, group, [int(r) for r in rows])
    if pooled is not None:   # already in the order of rows
        return pooled
    parts = by_part(owner, rows, range(len(rows)))
    weights, terms, at = _gathered_terms(parts, group)
    if not torch.equal(at, torch.arange(len(rows))):
        order = torch.empty_like(at)
        order[at] = torch.arange(len(at))
        weights = weights[order]
        terms = [[t.index_select(0, order.to(t.device)) for t in per_k] for per_k in terms]
    return weights, terms


def _gathered_terms(parts, group: str):
    """Every part's weights and cached rows, concatenated in part order, and the positions
    they belong at (rows of one pool are read at once instead: ``pooled_rows``)."""
    at = torch.cat([at for _, at, _ in parts])
    terms = [part.traj.cache.linear_terms(group, samples, part.scaled[samples]) for part, _, samples in parts]
    weights = weight_tensor([w for ws, _ in terms for w in ws], len(terms[0][1]))
    if len(terms) == 1:
        rows = terms[0][1]
    else:
        rows = [[torch.cat([r[k][s] for _, r in terms]) for s in range(len(terms[0][1][0]))]
                for k in range(len(terms[0][1]))]
    return weights, rows, at


def _forecast_each(parts, group: str, size: int, base):
    """``forecast`` one trajectory at a time (a forecaster that is not a weighted sum: FoCa)."""
    out = None
    for part, at, samples in parts:
        predicted = part.traj.cache.predict(group, samples, part.scaled[samples],
                                            tuple(take_rows(b, at) for b in base))
        if out is None:
            out = tuple(p.new_zeros((size,) + tuple(p.shape[1:])) for p in predicted)
        for o, p in zip(out, predicted):
            o.index_copy_(0, at.to(p.device), p)
    return out
