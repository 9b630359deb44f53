"""Per-sample verification error between a forecast and the real block output.

``rel_l2`` (default): ||pred - real||_2 / ||real||_2 per sample, all streams
together.  ``rel_l1``: ||pred - real||_1 / ||real||_1 per sample, the scale of
the official SpeCa code's relative-L1 check (its FLUX threshold is on that
scale).  A per-sample error lets each sample of a batch decide alone.
"""

from __future__ import annotations

from typing import Sequence

import torch

_EPS = 1e-12


def relative_error(pred: Sequence[torch.Tensor], real: Sequence[torch.Tensor], metric: str) -> torch.Tensor:
    """Error per sample (float64 on CPU), shape [batch]."""
    return per_sample_error(pred, real, metric).cpu()


def per_sample_error(pred: Sequence[torch.Tensor], real: Sequence[torch.Tensor], metric: str) -> torch.Tensor:
    """``relative_error`` on the tensors' device: tensor methods only, so a fused step traces
    it into its graph (``passes/fuse_step.py``) and both paths share one definition."""
    num = 0.0
    den = 0.0
    for p, r in zip(pred, real):
        diff = (p - r).flatten(1).double()
        ref = r.flatten(1).double()
        if metric == "rel_l2":
            num = num + diff.square().sum(1)
            den = den + ref.square().sum(1)
        elif metric == "rel_l1":
            num = num + diff.abs().sum(1)
            den = den + ref.abs().sum(1)
        else:
            raise ValueError(f"unknown error metric {metric!r}")
    if metric == "rel_l2":
        num, den = num.sqrt(), den.sqrt()
    return num / (den + _EPS)
