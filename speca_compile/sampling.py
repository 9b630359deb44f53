"""Minimal samplers that drive a DiT over a trajectory, for tests and benchmarks.

Two settings, as in the papers: DDIM over integer timesteps with a linear
beta schedule (DiT), and Euler over shifted, non-uniform flow-matching sigmas
(FLUX, SD3).  ``denoise`` calls the model once per step, the way pipelines
do, so the runtime sees real trajectories.
"""

from __future__ import annotations

import functools
from typing import Callable, List

import torch


def ddim_timesteps(steps: int, train_steps: int = 1000) -> List[int]:
    """Evenly spaced integer timesteps, high to low (diffusers' 'leading' spacing)."""
    ratio = train_steps // steps
    return [int(t) for t in (torch.arange(steps - 1, -1, -1) * ratio + 1).tolist()]


@functools.lru_cache(maxsize=4)
def alphas_cumprod(train_steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, train_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def flow_sigmas(steps: int, shift: float = 3.0) -> List[float]:
    """Shifted sigmas from 1 to 0 (``steps`` + 1 values): sigma' = s*sigma / (1 + (s-1)*sigma)."""
    sigma = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    shifted = shift * sigma / (1 + (shift - 1) * sigma)
    return [float(s) for s in shifted]


def ddim_step(x: torch.Tensor, eps: torch.Tensor, t: int, t_next) -> torch.Tensor:
    """One deterministic DDIM update from timestep ``t`` to ``t_next`` (``None``: to clean)."""
    abar = alphas_cumprod()
    a_t = abar[t].to(x.dtype)
    a_prev = (abar[t_next] if t_next is not None else torch.tensor(1.0, dtype=torch.float64)).to(x.dtype)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def denoise(model_fn: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
            steps: int, kind: str) -> torch.Tensor:
    """Run a whole trajectory. ``model_fn(x, t)`` returns eps (ddim) or velocity (flow).

    For ``kind="flow"`` the model is called with t = sigma in [0, 1].  The run is one
    speca generation (``speca_compile.generation``): what every sampling loop should do.
    """
    import speca_compile   # the package imports nothing from here; lazily, to stay a leaf module

    with speca_compile.generation():
        return _denoise(model_fn, noise, steps, kind)


def _denoise(model_fn, noise: torch.Tensor, steps: int, kind: str) -> torch.Tensor:
    x = noise
    if kind == "ddim":
        ts = ddim_timesteps(steps)
        for i, t in enumerate(ts):
            x = ddim_step(x, model_fn(x, float(t)), t, ts[i + 1] if i + 1 < len(ts) else None)
        return x
    if kind == "flow":
        sigmas = flow_sigmas(steps)
        for i in range(steps):
            v = model_fn(x, sigmas[i])
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x
    raise ValueError(f"unknown sampler kind {kind!r}; valid: 'ddim', 'flow'")
