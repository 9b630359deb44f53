"""HiCache's scaled-Hermite forecaster (Feng et al., "HiCache", arXiv 2508.16984, ICLR 2026).

TaylorSeer forecasts with the monomial basis, ``f(t0 + u) ~= sum_m c_m u^m``
(``c_m = f^(m)(t0) / m!``).  HiCache observes that feature derivatives in
DiTs are Gaussian-like and swaps the monomials for scaled physicists' Hermite
polynomials with its dual scaling::

    f(t0 + u) ~= sum_m c_m g^m sigma^m H_m(sigma * u / g)

Here the ``c_m`` come from the same Newton divided differences over the
actual timesteps as the Taylor forecaster (re-expanded around the newest full
step ``t0``), and ``u / g`` measures the distance from ``t0`` in units of the
gap ``g`` between the two newest full steps, so ``sigma`` means the same on
any timestep scale (HiCache counts sampler steps; one full-step gap spans
several of those).  ``sigma = 1/sqrt(2)`` turns ``sigma^m H_m(sigma x)`` into
the probabilists' ``He_m(x)``: exact on linear trajectories, damped beyond
(``He_2(x) = x^2 - 1``); smaller ``sigma`` damps the higher terms more.
Constants are always exact.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from speca_compile.runtime.forecaster import TaylorForecaster


class HermiteForecaster(TaylorForecaster):
    """Taylor's divided differences, evaluated in HiCache's scaled Hermite basis."""

    def __init__(self, order: int, batch_size: int, sigma: float, dtype: Optional[torch.dtype] = None):
        super().__init__(order, batch_size, dtype)
        self.sigma = sigma

    def sample_weights(self, t: float, hist: List[float], count: int) -> List[float]:
        """One sample's weight of each divided difference (``terms`` floats) in the scaled
        Hermite basis (``weight_rows`` calls it once per distinct timestep and history)."""
        terms, sigma = self.terms, self.sigma
        # newton[k][m]: coefficient of u^m in prod_{j<k} (u + (t0 - t_j)), u = t - t0
        newton = [[1.0] + [0.0] * (terms - 1)]
        for k in range(1, terms):
            shift = hist[0] - hist[k - 1]
            prev = newton[k - 1]
            newton.append([(prev[m - 1] if m else 0.0) + shift * prev[m] for m in range(terms)])
        gap = hist[0] - hist[1] if terms > 1 else 1.0
        if not (count >= 2 and gap != 0):
            gap = 1.0
        y = sigma * ((t - hist[0]) / gap)
        hermite = [1.0, 2 * y]
        for n in range(1, terms - 1):
            hermite.append(2 * y * hermite[n] - 2 * n * hermite[n - 1])
        basis = [gap ** m * sigma ** m * hermite[m] for m in range(terms)]   # replaces u^m
        return [sum(c * b for c, b in zip(newton[k], basis)) if k < count else 0.0
                for k in range(terms)]
