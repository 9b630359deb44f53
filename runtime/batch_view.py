"""A view of some rows of one call's batch: binds their inputs, selects and merges rows.

A path (full, speculative) runs on a subset of the samples.  Where the
batched graph inputs are known, the view slices exactly those inputs to the
subset and the engines compute a true sub-batch (so a sample's result does
not depend on its batch companions).  Where they are not (a graph whose
views bake in the batch size), the engines compute every row and the view
cuts the results to its rows afterwards.  Either way the caller sees values
with one row per sample of the view, in the view's order.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

Env = Dict[str, object]


class BatchView:
    """Rows ``rows`` (ascending indices into a batch of ``batch``) of one call."""

    def __init__(self, placeholders: Sequence[str], batch_inputs: Optional[Tuple[int, ...]],
                 args: Sequence, rows: Sequence[int], batch: int):
        self.placeholders = placeholders
        self.batch_inputs = batch_inputs
        self.args = args
        self.batch = batch
        self.rows = torch.tensor(list(rows), dtype=torch.long)
        self.whole = len(self.rows) == batch
        # computed rows: the view's own rows when the inputs can be sliced, else the whole batch
        self.sliced = self.whole or batch_inputs is not None
        self.work = self.rows if self.sliced else torch.arange(batch)

    def bind(self) -> Env:
        """The value environment of the graph inputs for the computed rows."""
        env: Env = dict(zip(self.placeholders, self.args))
        if self.whole or not self.sliced:
            return env
        for i in self.batch_inputs:
            name, value = self.placeholders[i], self.args[i]
            if isinstance(value, torch.Tensor):
                env[name] = value.index_select(0, self.rows.to(value.device))
            else:
                env[name] = len(self.rows)   # a symbolic batch size
        return env

    def spread(self, per_row: Sequence[bool]) -> torch.Tensor:
        """A bool mask over the computed rows from one flag per view row (False elsewhere)."""
        flags = torch.tensor(list(per_row), dtype=torch.bool)
        if self.sliced:
            return flags
        mask = torch.zeros(self.batch, dtype=torch.bool)
        mask[self.rows] = flags
        return mask

    def select(self, value):
        """``value`` (one row per computed row) cut to the view's rows."""
        return value if self.sliced else take_rows(value, self.rows)

    def select_env(self, env: Env, names: Sequence[str]) -> Env:
        if self.sliced:
            return env
        out = dict(env)
        for name in names:
            out[name] = take_rows(env[name], self.rows)
        return out


def take_rows(value, rows: torch.Tensor):
    """``value``'s rows ``rows``.  A one-row tensor in a larger batch is shared by every
    sample (a prompt embedding broadcast over the images) and, like a non-tensor, stays."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] != 1:
        return value.index_select(0, rows.to(value.device))
    return value


def merge(pieces: List[Tuple[BatchView, Env]], names: Sequence[str], batch: int) -> Env:
    """One environment of the ``names`` over the whole batch from the views that cover it."""
    if len(pieces) == 1 and pieces[0][0].whole:
        return pieces[0][1]
    merged: Env = {}
    for name in names:
        for view, env in pieces:
            value = env[name]
            if name not in merged:
                merged[name] = value.new_empty((batch,) + tuple(value.shape[1:]))
            merged[name].index_copy_(0, view.rows.to(value.device), value)
    return merged
