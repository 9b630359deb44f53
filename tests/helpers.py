"""Shared helpers: run whole trajectories through eager or compiled models."""

from __future__ import annotations

import torch

from speca_compile import sampling, zoo
from tests.reference_dit import ReferenceDiT


def reference_dit_zoo(seed: int = 0) -> zoo.ZooModel:
    torch.manual_seed(seed)
    model = ReferenceDiT().eval()

    def make_inputs(batch, s):
        g = torch.Generator().manual_seed(s)
        return {"y": torch.randint(0, 10, (batch,), generator=g)}

    def call(m, x, t, extra):
        return m(x, torch.full((x.shape[0],), t, device=x.device), **extra)

    return zoo.ZooModel("reference_dit", model, "ddim", make_inputs, lambda b: (b, 4, 8, 8), call)


def build(name: str) -> zoo.ZooModel:
    return reference_dit_zoo() if name == "reference_dit" else zoo.build(name)


ALL_MODELS = ["dit", "pixart", "sd3", "flux", "reference_dit"]


def noise_for(z: zoo.ZooModel, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(z.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


def trajectory(z: zoo.ZooModel, model, batch: int, steps: int, seed: int = 0, extra=None, noise=None,
               device: str = "cpu"):
    """One whole sampling run; same seed -> same noise and conditioning (drawn on the CPU, then moved)."""
    extra = zoo.to_device(z.make_inputs(batch, seed + 1) if extra is None else extra, device)
    noise = (noise_for(z, batch, seed) if noise is None else noise).to(device)
    with torch.no_grad():
        return sampling.denoise(lambda x, t: z.call(model, x, t, extra), noise, steps, z.kind)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
