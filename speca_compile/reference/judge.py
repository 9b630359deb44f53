"""The digits judge: a small CNN classifier whose penultimate features define digits-FD.

Generated digits are scored the way FID scores photographs: the judge's
accuracy on class-conditional samples says whether the right digit came out,
and the Fréchet distance between its penultimate features on samples and on
held-out real digits says whether they look like the data.  It is trained
with one-pixel shifts and light noise so it does not reward memorised
pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from speca_compile.reference.digits import NUM_CLASSES

FEATURES = 64


class DigitsJudge(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),      # 8x8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),      # 4x4
            nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for images in [-1, 1], shape (N, 64)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@torch.no_grad()
def accuracy(judge: DigitsJudge, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` the judge labels as ``labels``."""
    return float((judge(images.clamp(-1, 1)).argmax(1) == labels).float().mean())


@torch.no_grad()
def frechet_distance(judge: DigitsJudge, images: torch.Tensor, reference: torch.Tensor) -> float:
    """digits-FD: Fréchet distance between Gaussians fitted to judge features of the two sets."""
    from scipy import linalg

    a = judge.features(images.clamp(-1, 1)).double().numpy()
    b = judge.features(reference).double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # ReLU features have dead dimensions, so the covariances are singular: a tiny ridge
    # keeps the matrix square root defined (it moves the distance by ~1e-6 per dimension)
    ridge = np.eye(cov_a.shape[0]) * 1e-6
    covmean = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))
