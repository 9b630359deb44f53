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


def image_psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (peak 1), the usual convention for pictures."""
    mse = float(((result.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM (scikit-image, 7x7 window, data range 1) over a batch of (N, C, H, W) images in [0, 1]."""
    from skimage.metrics import structural_similarity

    a, b = result.double().numpy(), reference.double().numpy()
    return float(sum(structural_similarity(x, y, data_range=1.0, channel_axis=0) for x, y in zip(a, b)) / len(a))
