"""Forecasters: predict a cached feature at a new timestep from full steps.

``TaylorForecaster`` is TaylorSeer's Taylor expansion done right for
non-uniform schedules: it keeps, per sample, the Newton divided differences
f[t_n], f[t_n, t_{n-1}], ..., f[t_n, ..., t_{n-k}] over the *actual timestep
values* of the last ``order + 1`` full steps, and predicts

    f(t) ~= sum_k f[t_n .. t_{n-k}] * prod_{j<k} (t - t_{n-j})

(TaylorSeer, arXiv 2503.06923; SpeCa, arXiv 2509.11628).  The official code
divides every difference by the last step gap, which is only right for
uniform gaps; with divided differences a polynomial of degree <= order is
reproduced exactly on any spacing.  A sample with fewer cached steps uses
the order its history supports.

Features are tuples of tensors (one per stream), batch first.  Samples are
independent: updates and predictions take the sample indices they concern.

Equal timesteps are allowed (Heun, KDPM2 and DPM-Solver singlestep call the
model twice at one timestep: as a corrector, then for the next step).  A
full step cached at the timestep of a sample's newest cached one *replaces*
it: the later evaluation is the sampler's state at that time, and two points
at one abscissa have no divided difference.  A forecast at a cached
timestep returns the cached value.

Storage dtype (the ``cache_dtype`` option): the rows may be stored in another
dtype than the features they were computed from (bfloat16: half the cache
bytes).  Arithmetic never runs in the storage dtype: new divided differences are
computed from the fresh features and the stored rows upcast (PyTorch's type
promotion: no copy), then rounded once as they are stored; a forecast combines
the rows in float32 at least (``combine_terms``) and comes back in the stream's
own dtype (``predict``; ``feature_cache.add_base`` for rows combined by the
runner).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

Feature = Tuple[torch.Tensor, ...]


class NotLinear(Exception):
    """A forecaster whose prediction is not a weighted sum of cached rows (FoCa's)."""


class Forecaster:
    """Interface: ``update`` at full steps, ``predict`` at speculative ones."""

    def update(self, index: torch.Tensor, times: torch.Tensor, value: Feature) -> None:
        raise NotImplementedError

    def predict(self, index: torch.Tensor, times: torch.Tensor) -> Feature:
        raise NotImplementedError

    def linear_terms(self, index: torch.Tensor, times: torch.Tensor):
        """The prediction as weights and cached rows (``TaylorForecaster.linear_terms``)."""
        raise NotLinear(f"{type(self).__name__} does not forecast as a weighted sum of cached rows")

    def observe(self, index: torch.Tensor, times: torch.Tensor, value: Feature) -> None:
        """The value a speculative step used; only recursive forecasters (FoCa) keep it."""

    def forget(self, index: torch.Tensor) -> None:
        """Drop the history of samples ``index`` (their trajectory restarted)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError


class TaylorForecaster(Forecaster):
    """Per-sample Newton divided differences of one feature, ``order + 1`` terms, stored in
    ``dtype`` (None: each stream's own)."""

    def __init__(self, order: int, batch_size: int, dtype: Optional[torch.dtype] = None):
        self.terms = order + 1
        self.batch_size = batch_size
        self.store_dtype = dtype
        self.dtypes: Optional[List[torch.dtype]] = None   # each stream's own dtype (the features')
        # times[s, j]: timestep of sample s's j-th newest full step.
        self.times = torch.zeros(batch_size, self.terms, dtype=torch.float64)
        self.count = torch.zeros(batch_size, dtype=torch.long)
        self.diffs: Optional[List[List[torch.Tensor]]] = None  # diffs[k][stream]: [B, ...]

    def update(self, index: torch.Tensor, times: torch.Tensor, value: Feature) -> None:
        """Add a full-step feature for samples ``index`` at ``times`` (one per sample).

        The per-sample bookkeeping (timesteps, counts, gaps) is a handful of numbers per
        sample: it is read to Python once and written back once, and every term's scale is
        one small tensor (a column each), so a served request's update (two rows) costs a few
        tensor ops per stream, not a few per sample and term.  The arithmetic on the rows is
        unchanged."""
        value = tuple(v.detach() for v in value)
        if self.diffs is None:
            self.dtypes = [v.dtype for v in value]
            self.diffs = [[torch.zeros((self.batch_size,) + tuple(v.shape[1:]), dtype=self.storage_dtype(v),
                                       device=v.device) for v in value] for _ in range(self.terms)]
        # every sample of the trajectory (a served request's rows, a batch's full step): the
        # stored rows are read and written whole, without a gather and a scatter per term
        whole = self._whole(index)
        new_times = times.to(torch.float64).tolist()
        old_times, count = self._history(index, whole)
        same = [j for j, (t, hist, c) in enumerate(zip(new_times, old_times, count)) if c > 0 and hist[0] == t]
        if same:
            self._pop(index[same])
            old_times, count = self._history(index, whole)
        new = [list(value)]
        # column k - 1: term k's per-sample 1 / (t - t_{k-1}), 0 beyond a sample's history
        terms = range(1, self.terms)
        valid = torch.tensor([[c >= k for k in terms] for c in count])
        gap = torch.tensor([[t - hist[k - 1] if c >= k else 1.0 for k in terms]
                            for t, hist, c in zip(new_times, old_times, count)], dtype=torch.float64)
        scales = {}
        for k in terms:
            row = []
            for s, e_prev in enumerate(new[k - 1]):
                # a stored row in a narrower dtype is upcast by type promotion (no copy)
                d_prev = self.diffs[k - 1][s] if whole else self.diffs[k - 1][s][index]
                scale = scales.get(e_prev.dtype)
                if scale is None:
                    scale = scales[e_prev.dtype] = valid.to(e_prev.dtype) / gap.to(e_prev.dtype)
                row.append((e_prev - d_prev) * _per_sample(scale[:, k - 1], e_prev).to(e_prev.device))
            new.append(row)
        for k in range(self.terms):   # after every term is computed: the old rows are read above
            for s in range(len(value)):
                if whole:
                    self.diffs[k][s].copy_(new[k][s])   # rounds to the storage dtype
                else:
                    self.diffs[k][s][index] = new[k][s].to(self.diffs[k][s].dtype)
        shifted = torch.tensor([[t] + hist[:-1] for t, hist in zip(new_times, old_times)], dtype=torch.float64)
        counted = torch.tensor([min(c + 1, self.terms) for c in count], dtype=torch.long)
        if whole:
            self.times.copy_(shifted.reshape(self.times.shape))
            self.count.copy_(counted)
        else:
            self.times[index] = shifted
            self.count[index] = counted

    def _whole(self, index: torch.Tensor) -> bool:
        """True when ``index`` is every sample, in order (rows read and written without a gather)."""
        return index.tolist() == list(range(self.batch_size))

    def _history(self, index: torch.Tensor, whole: bool) -> Tuple[List[List[float]], List[int]]:
        """Samples ``index``'s cached timesteps (newest first) and counts, as Python numbers."""
        if whole:
            return self.times.tolist(), self.count.tolist()
        return self.times[index].tolist(), self.count[index].tolist()

    def _pop(self, index: torch.Tensor) -> None:
        """Remove the newest cached step of samples ``index``.  From the newest diagonal
        D_k = f[t_n .. t_{n-k}] the previous one is E_k = D_k - D_{k+1} (t_n - t_{n-1-k})
        (the divided-difference recursion solved for its older term), k < count - 1."""
        hist = self.times[index]
        for k in range(self.terms - 1):   # ascending: E_k needs D_k and D_{k+1} as they were
            gap = hist[:, 0] - hist[:, k + 1]
            for s, (d_k, d_k1) in enumerate(zip(self.diffs[k], self.diffs[k + 1])):
                work = self.work_dtype(s)
                scale = _per_sample(gap.to(work), d_k).to(d_k.device)
                d_k[index] = (d_k[index].to(work) - d_k1[index].to(work) * scale).to(d_k.dtype)
        self.times[index] = torch.cat([hist[:, 1:], torch.zeros_like(hist[:, :1])], dim=1)
        self.count[index] = self.count[index] - 1

    def forget(self, index: torch.Tensor) -> None:
        self.count[index] = 0
        self.times[index] = 0.0

    def grow(self, extra: int) -> None:
        """``extra`` more samples, empty (a pooled store's new slots: ``runtime/feature_pool``).
        The stored rows are copied once into larger tensors; what a caller read before stays
        valid (it holds the old tensors)."""
        self.batch_size += extra
        self.times = torch.cat([self.times, self.times.new_zeros(extra, self.terms)])
        self.count = torch.cat([self.count, self.count.new_zeros(extra)])
        if self.diffs is not None:
            self.diffs = [[torch.cat([d, d.new_zeros((extra,) + tuple(d.shape[1:]))]) for d in per_k]
                          for per_k in self.diffs]

    def clear(self, index: torch.Tensor) -> None:
        """``forget`` samples ``index`` and zero their rows: a slot handed to another
        trajectory must not keep a value (a non-finite one would survive a zero weight)."""
        self.forget(index)
        for per_k in self.diffs or ():
            for d in per_k:
                d[index] = 0

    def weight_rows(self, index: torch.Tensor, times: torch.Tensor,
                    history: Optional[Tuple[List[List[float]], List[int]]] = None) -> List[List[float]]:
        """One list of ``terms`` floats per sample (``sample_weights``), zero beyond a sample's
        history.  Python floats (float64): a handful of numbers per sample, where tensor ops
        would cost more in dispatch than in arithmetic; left as lists so that a served batch
        makes one tensor of every request's weights (``linear_terms``).  Computed once per
        distinct (timestep, history, count): the rows of one generation share them, so a batch
        of 50 rows costs one evaluation, not 50 (the same floats either way).  ``history``:
        the samples' ``_history`` where the caller has read it already."""
        hists, counts = history if history is not None else self._history(index, False)
        rows, seen = [], {}
        for t, hist, count in zip(times.tolist(), hists, counts):
            key = (t, tuple(hist), count)
            row = seen.get(key)
            if row is None:
                row = seen[key] = self.sample_weights(t, hist, count)
            rows.append(row)
        return rows

    def sample_weights(self, t: float, hist: List[float], count: int) -> List[float]:
        """Newton basis weights of one sample at ``t`` with full steps at ``hist`` (newest first)."""
        w = [1.0]
        for k in range(1, self.terms):
            w.append(w[k - 1] * (t - hist[k - 1]))
        return [v if k < count else 0.0 for k, v in enumerate(w)]

    def storage_dtype(self, value: torch.Tensor) -> torch.dtype:
        """The dtype a stream's rows are stored in: ``dtype``, or the feature's own."""
        return self.store_dtype if self.store_dtype is not None and value.is_floating_point() else value.dtype

    def work_dtype(self, stream: int) -> torch.dtype:
        """The dtype a stream's arithmetic runs in: the wider of its own and its storage's."""
        return torch.promote_types(self.dtypes[stream], self.diffs[0][stream].dtype)

    def predict(self, index: torch.Tensor, times: torch.Tensor) -> Feature:
        weights, rows = self.linear_terms(index, times)
        return self.in_stream_dtypes(combine_terms(weight_tensor(weights, self.terms), rows))

    def in_stream_dtypes(self, feature: Feature) -> Feature:
        """``feature`` in each stream's own dtype (a no-op unless the rows are stored in another)."""
        return tuple(f.to(d) for f, d in zip(feature, self.dtypes))

    def linear_terms(self, index: torch.Tensor, times: torch.Tensor):
        """The forecast as ``(weights, rows)``: ``weights`` one list of ``terms`` floats per
        sample, ``rows[k][stream]`` the samples' k-th divided difference; the prediction is
        ``sum_k weights[:, k] * rows[k]`` (``combine_terms`` of ``weight_tensor(weights)``).
        Separate so that a batch whose rows belong to many trajectories (a served batch: one
        per request) gathers every trajectory's terms and combines them in one pass instead of
        one small pass per trajectory."""
        whole = self._whole(index)
        history = self._history(index, whole)
        if self.diffs is None or min(history[1], default=1) == 0:
            raise RuntimeError("forecast requested for a sample with no cached full step")
        rows = [[d if whole else d[index] for d in per_k] for per_k in self.diffs]
        return self.weight_rows(index, times, history), rows

    def nbytes(self) -> int:
        if self.diffs is None:
            return 0
        return sum(t.numel() * t.element_size() for row in self.diffs for t in row)


def weight_tensor(weights: List[List[float]], terms: int) -> torch.Tensor:
    """``linear_terms``' weights (lists, of one trajectory or of many concatenated) as a
    [samples, terms] float64 tensor."""
    return torch.tensor(weights, dtype=torch.float64).reshape(len(weights), terms)


def combine_terms(weights: torch.Tensor, rows) -> Feature:
    """``sum_k weights[:, k] * rows[k][stream]`` per stream (``linear_terms``' result).

    Computed in float32 at least: rows stored in bfloat16 or float16 (the ``cache_dtype``
    option, or a half-precision model) are upcast as they are read (type promotion against the
    float32 weights: no copy of the rows), so the weights and the sum are not rounded to 8 bits.
    The result is float32 then; ``feature_cache.add_base`` (or ``predict``) gives it back in the
    stream's own dtype.  Float32 and float64 rows compute in their own dtype, as before."""
    out = []
    for s in range(len(rows[0])):
        ref = rows[0][s]
        columns = weights.to(forecast_dtype(ref.dtype)).to(ref.device)
        acc = None
        for k in range(len(rows)):
            term = rows[k][s] * _per_sample(columns[:, k], ref)
            acc = term if acc is None else acc + term
        out.append(acc)
    return tuple(out)


def forecast_dtype(stored: torch.dtype) -> torch.dtype:
    """The dtype rows stored as ``stored`` are combined in: float32 at least."""
    return torch.promote_types(stored, torch.float32) if stored.is_floating_point else stored


def make_forecaster(kind: str, order: int, batch_size: int, sigma: float = 0.5,
                    dtype: Optional[torch.dtype] = None) -> Forecaster:
    """The forecaster named by the ``forecaster`` option (``sigma``: Hermite's scale; ``dtype``:
    the storage dtype of its rows, None for the features' own)."""
    if kind == "taylor":
        return TaylorForecaster(order, batch_size, dtype)
    if kind == "hermite":
        from speca_compile.runtime.hermite_forecaster import HermiteForecaster
        return HermiteForecaster(order, batch_size, sigma, dtype)
    if kind == "foca":
        from speca_compile.runtime.foca_forecaster import FoCaForecaster
        return FoCaForecaster(order, batch_size, dtype)
    raise ValueError(f"unknown forecaster {kind!r}")


def _per_sample(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [b] vector to broadcast over a [b, ...] tensor."""
    return scale.reshape((-1,) + (1,) * (like.dim() - 1))
