"""The check on a token subset (``passes/token_subset.py``'s segment): the forecast's tokens
that the segment computed, and the forecast with those tokens replaced by the real ones.

Kept apart from the runner so both of its check paths (a step of one path, ``_speculate``; a
step of mixed paths, ``_mixed_step``) slice the same tokens the segment computed."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch


def checked_tokens(forecast: Sequence[torch.Tensor], strides: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """Each stream's tokens ``0::stride`` (axis 1 of a batch-first stream), as the segment outputs them."""
    return tuple(f if k == 1 else f[:, ::k] for f, k in zip(forecast, strides))


def with_real_tokens(forecast: Sequence[torch.Tensor], real: Sequence[torch.Tensor], strides: Sequence[int],
                     rows: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """The forecast with the checked tokens replaced by the block's real output: what is known
    exactly is used.  ``rows`` (a bool per row) limits it to the checked rows."""
    merged = []
    for f, r, k in zip(forecast, real, strides):
        if rows is not None:
            mask = rows.to(f.device).reshape((-1,) + (1,) * (f.dim() - 1))
            r = torch.where(mask, r, f[:, ::k])
        g = f.clone()
        g[:, ::k] = r
        merged.append(g)
    return tuple(merged)
