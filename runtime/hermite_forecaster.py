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

import torch

from speca_compile.runtime.forecaster import TaylorForecaster


def physicists_hermite(y: torch.Tensor, degree: int) -> torch.Tensor:
    """[..., degree + 1]: H_0(y) .. H_degree(y), by H_{n+1} = 2y H_n - 2n H_{n-1}."""
    values = [torch.ones_like(y), 2 * y]
    for n in range(1, degree):
        values.append(2 * y * values[n] - 2 * n * values[n - 1])
    return torch.stack(values[:degree + 1], dim=-1)


class HermiteForecaster(TaylorForecaster):
    """Taylor's divided differences, evaluated in HiCache's scaled Hermite basis."""

    def __init__(self, order: int, batch_size: int, sigma: float):
        super().__init__(order, batch_size)
        self.sigma = sigma

    def weights(self, index: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Per sample, the weight of each divided difference ([len(index), terms])."""
        times = times.to(torch.float64)
        hist = self.times[index]
        count = self.count[index]
        terms = self.terms
        # newton[k, m]: coefficient of u^m in prod_{j<k} (u + (t0 - t_j)), u = t - t0
        newton = torch.zeros(len(index), terms, terms, dtype=torch.float64)
        newton[:, 0, 0] = 1.0
        for k in range(1, terms):
            shift = (hist[:, 0] - hist[:, k - 1])[:, None]
            newton[:, k, 1:] = newton[:, k - 1, :-1]
            newton[:, k] += shift * newton[:, k - 1]
        gap = hist[:, 0] - hist[:, 1] if terms > 1 else torch.ones(len(index), dtype=torch.float64)
        gap = torch.where((count >= 2) & (gap != 0), gap, torch.ones_like(gap))
        x = (times - hist[:, 0]) / gap
        powers = gap[:, None] ** torch.arange(terms, dtype=torch.float64)
        basis = powers * self.sigma ** torch.arange(terms, dtype=torch.float64) \
            * physicists_hermite(self.sigma * x, terms - 1)          # [n, m]: replaces u^m
        w = torch.einsum("nkm,nm->nk", newton, basis)
        usable = torch.arange(terms)[None, :] < count[:, None]
        return torch.where(usable, w, torch.zeros_like(w))
