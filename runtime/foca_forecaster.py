"""FoCa's forecast-then-calibrate forecaster (Zheng et al., "Forecast then Calibrate:
Feature Caching as ODE for Efficient Diffusion Transformers", arXiv 2508.16211).

FoCa reads the cached feature ``F(t)`` as the solution of a feature ODE
``dF/dt = g(F, t)`` and integrates it across skipped steps with a linear
multistep predictor-corrector instead of extrapolating a polynomial from one
anchor.  The paper's code was not released when this was written and its
text fixes the structure (BDF2 predictor, Heun corrector, recursion over the
trajectory) but not every detail for non-uniform steps; this is our
formulation, generalised to the actual timestep values (cache-dit's
``FoCaCalibrator`` is the uniform-step reading, ``h = 1``).

Per sample, with ``t_b`` the newest full step and ``g_b`` the feature's slope
there (derivative at ``t_b`` of the Newton interpolant over the last
``order + 1`` full steps: the secant for order 1), and ``(t1, X1), (t0, X0)``
the two newest points of the trajectory (full steps, *or* speculative steps
recorded with :meth:`observe`), a forecast at ``t`` is

* predictor, variable-step BDF2 with the slope frozen at ``g_b``
  (``h = t - t0``, ``w = h / (t0 - t1)``)::

      P = ((1 + w)^2 X0 - w^2 X1 + (1 + w) h g_b) / (1 + 2 w)

* corrector, Heun's trapezoid from the newest full step, averaging the slope
  there with the slope of the predictor's last leg ``g_P = (P - X0) / h``::

      F(t) = F_b + (t - t_b) / 2 * (g_b + g_P)

The calibration is the recursion: the runtime records every speculative step
with :meth:`observe` -- the verify block's *computed* output where a sample
was checked, the forecast elsewhere -- so the next predictor starts from the
calibrated trajectory while the corrector stays anchored to computed full
steps.  Constants and linear trajectories are reproduced exactly on any
spacing.  Curvature is damped, not extrapolated: right after full steps, on
``F = c t^2 + ...`` with order 2, FoCa reaches ``F_b + h g_b + c h^2 (1/2 -
(1 + w) / (1 + 2 w))`` where Taylor reaches the exact ``F_b + h g_b + c h^2``
(tests/test_forecasters.py checks this and the general formula against numpy).
Whether that damping pays off on a model's features is measured, not assumed:
``speca bench --forecasters taylor,hermite,foca`` / ``speca tune``.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from speca_compile.runtime.forecaster import Feature, NotLinear, TaylorForecaster, _per_sample


class FoCaForecaster(TaylorForecaster):
    """Full-step divided differences (inherited) plus a two-point trajectory window."""

    def __init__(self, order: int, batch_size: int, dtype: Optional[torch.dtype] = None):
        super().__init__(order, batch_size, dtype)
        # window times [B, 2] (newest first) and values win[j][stream]: [B, ...]
        self.win_times = torch.zeros(batch_size, 2, dtype=torch.float64)
        self.win_count = torch.zeros(batch_size, dtype=torch.long)
        self.win: Optional[List[List[torch.Tensor]]] = None

    def update(self, index: torch.Tensor, times: torch.Tensor, value: Feature) -> None:
        super().update(index, times, value)
        self._push(index, times, value)

    def observe(self, index: torch.Tensor, times: torch.Tensor, value: Feature) -> None:
        """Record the value a speculative step used (computed where verified)."""
        self._push(index, times, value)

    def forget(self, index: torch.Tensor) -> None:
        super().forget(index)
        self.win_count[index] = 0

    def _push(self, index: torch.Tensor, times: torch.Tensor, value: Feature) -> None:
        """Add a point to the window; one at the newest point's timestep replaces it (two
        points at one time would make the BDF2 span zero)."""
        value = tuple(v.detach() for v in value)
        times = times.to(torch.float64)
        same = (self.win_times[index, 0] == times) & (self.win_count[index] > 0)
        if bool(same.any()):
            if self.win is not None:
                for s, v in enumerate(value):
                    self.win[0][s][index[same]] = v[same.to(v.device)].to(self.win[0][s].dtype)
            keep = ~same
            index, times = index[keep], times[keep]
            value = tuple(v[keep.to(v.device)] for v in value)
            if not len(index):
                return
        if self.win is None:
            self.win = [[torch.zeros((self.batch_size,) + tuple(v.shape[1:]), dtype=self.storage_dtype(v),
                                     device=v.device) for v in value] for _ in range(2)]
        for s, v in enumerate(value):
            self.win[1][s][index] = self.win[0][s][index]
            self.win[0][s][index] = v.to(self.win[0][s].dtype)
        old = self.win_times[index]
        self.win_times[index] = torch.stack([times, old[:, 0]], dim=1)
        self.win_count[index] = torch.clamp(self.win_count[index] + 1, max=2)

    def anchor_slope_weights(self, index: torch.Tensor) -> torch.Tensor:
        """[n, terms]: g_b = sum_k w_k * f[t_b .. t_{b-k}] (derivative of the Newton form at t_b)."""
        hist = self.times[index]
        count = self.count[index]
        w = torch.zeros(len(index), self.terms, dtype=torch.float64)
        if self.terms > 1:
            w[:, 1] = 1.0
        for k in range(2, self.terms):
            w[:, k] = w[:, k - 1] * (hist[:, 0] - hist[:, k - 1])
        usable = torch.arange(self.terms)[None, :] < count[:, None]
        return torch.where(usable, w, torch.zeros_like(w))

    def linear_terms(self, index: torch.Tensor, times: torch.Tensor):
        raise NotLinear("FoCa's predictor corrects with its window: not a weighted sum of rows")

    def predict(self, index: torch.Tensor, times: torch.Tensor) -> Feature:
        if self.diffs is None or bool((self.count[index] == 0).any()):
            raise RuntimeError("forecast requested for a sample with no cached full step")
        times = times.to(torch.float64)
        t_b = self.times[index, 0]
        t0, t1 = self.win_times[index, 0], self.win_times[index, 1]
        two = self.win_count[index] >= 2
        h = times - t0
        span = torch.where(two, t0 - t1, torch.ones_like(t0))
        w = h / span
        slope_w = self.anchor_slope_weights(index)
        # coefficients of P: a*X0 + b*X1 + c*g_b ; where the window has one point, P = X0 + h g_b
        a = torch.where(two, (1 + w) ** 2 / (1 + 2 * w), torch.ones_like(w))
        b = torch.where(two, -w ** 2 / (1 + 2 * w), torch.zeros_like(w))
        c = torch.where(two, (1 + w) * h / (1 + 2 * w), h)
        safe_h = torch.where(h != 0, h, torch.ones_like(h))
        half = (times - t_b) / 2
        out = []
        for s in range(len(self.diffs[0])):
            # the stored rows, gathered, in the dtype the arithmetic runs in (the stream's own, or
            # the wider storage dtype): rows stored in bfloat16 are upcast as they are gathered
            work = self.work_dtype(s)
            ref = self.diffs[0][s][index].to(work)
            g_b = None
            for k in range(1, self.terms):
                term = self.diffs[k][s][index].to(work) * self._col(slope_w[:, k], ref)
                g_b = term if g_b is None else g_b + term
            f_b = ref
            if g_b is None:  # order 0: the newest full value
                out.append(f_b)
                continue
            x0, x1 = self.win[0][s][index].to(work), self.win[1][s][index].to(work)
            pred = x0 * self._col(a, ref) + x1 * self._col(b, ref) + g_b * self._col(c, ref)
            g_p = (pred - x0) * self._col(torch.where(h != 0, 1 / safe_h, torch.zeros_like(h)), ref)
            g_p = torch.where(self._col(h != 0, ref), g_p, g_b)
            out.append(f_b + (g_b + g_p) * self._col(half, ref))
        return self.in_stream_dtypes(tuple(out))

    @staticmethod
    def _col(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if values.dtype != torch.bool:
            values = values.to(like.dtype)
        return _per_sample(values, like).to(like.device)

    def nbytes(self) -> int:
        window = 0 if self.win is None else sum(t.numel() * t.element_size() for row in self.win for t in row)
        return super().nbytes() + window
