"""Minimal samplers that drive a DiT over a trajectory, for tests and benchmarks.

Two settings, as in the papers: DDIM over integer timesteps with a linear
beta schedule (DiT), and Euler over shifted, non-uniform flow-matching sigmas
(FLUX, SD3).  ``denoise`` calls the model once per step, the way pipelines
do, so the runtime sees real trajectories.
"""

from __future__ import annotations

from typing import Callable, List

import torch


def ddim_timesteps(steps: int, train_steps: int = 1000) -> List[int]:
    """Evenly spaced integer timesteps, high to low (diffusers' 'leading' spacing)."""
    ratio = train_steps // steps
    return [int(t) for t in (torch.arange(steps - 1, -1, -1) * ratio + 1).tolist()]


def alphas_cumprod(train_steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, train_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def flow_sigmas(steps: int, shift: float = 3.0) -> List[float]:
    """Shifted sigmas from 1 to 0 (``steps`` + 1 values): sigma' = s*sigma / (1 + (s-1)*sigma)."""
    sigma = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    shifted = shift * sigma / (1 + (shift - 1) * sigma)
    return [float(s) for s in shifted]


def denoise(model_fn: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
            steps: int, kind: str) -> torch.Tensor:
    """Run a whole trajectory. ``model_fn(x, t)`` returns eps (ddim) or velocity (flow).

    For ``kind="flow"`` the model is called with t = sigma in [0, 1].
    """
    x = noise
    if kind == "ddim":
        abar = alphas_cumprod()
        ts = ddim_timesteps(steps)
        for i, t in enumerate(ts):
            a_t = abar[t].to(x.dtype)
            a_prev = (abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)).to(x.dtype)
            eps = model_fn(x, float(t))
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x
    if kind == "flow":
        sigmas = flow_sigmas(steps)
        for i in range(steps):
            v = model_fn(x, sigmas[i])
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x
    raise ValueError(f"unknown sampler kind {kind!r}; valid: 'ddim', 'flow'")
