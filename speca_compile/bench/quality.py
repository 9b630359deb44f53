"""Quality of a speculative result against the full-compute result of the same seed."""

from __future__ import annotations

import math

import torch


def relative_l2(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).norm() / reference.norm().clamp_min(1e-12))


def psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB with the reference's own value range as the peak (inf when identical)."""
    mse = float(((result.double() - reference.double()) ** 2).mean())
    peak = float(reference.max() - reference.min())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)
