"""One fused step program on one static shape, captured as a CUDA graph and replayed.

A fused step (``runtime/fused_step.py``) padded to a bucket has static shapes,
so its kernels can be captured once and replayed: one launch per step instead
of one per kernel (the launch-bound GPU case of issue 18).  The capture
follows ``torch.cuda.graphs``' recipe: warm up on a side stream (the engine
compiles, and its first call is checked against eager there), capture, then
per call copy the inputs into the captured buffers, replay, and clone the
outputs (the next replay overwrites them).

The first replay is compared with the engine's own output on the same
inputs (``engine_check.compare``, float32's bound); a capture that differs
raises ``LoweringError`` and the caller runs that program uncaptured.

Module state (weights) is captured at its own address and not copied: it is
the same tensor every call.  An input whose shape, dtype or device differ, a
weight at another address, or a scalar of another value does not fit, and
the caller captures anew.

Written against ``torch.cuda.CUDAGraph``; not run in this project's CI (no
GPU), so the CPU tests never reach it: see README "What is verified where".
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch

from speca_compile.errors import LoweringError
from speca_compile.runtime.engine_check import FP32_BOUND, compare


class CudaGraphStep:
    def __init__(self, run: Callable[[List], List], values: Sequence, static: Sequence[bool]):
        self.static = list(static)
        self.buffers = [v.clone() if isinstance(v, torch.Tensor) and not fixed else v
                        for v, fixed in zip(values, self.static)]
        self.kinds = [_kind(v) for v in values]
        self.addresses = [v.data_ptr() if isinstance(v, torch.Tensor) and fixed else None
                          for v, fixed in zip(values, self.static)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):   # compile, check, and let lazy initialisation happen outside the capture
                expected = [o.clone() if isinstance(o, torch.Tensor) else o for o in run(self.buffers)]
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = list(run(self.buffers))
        # the capture is a lowering of its own: its first replay must give what the engine gave
        self.graph.replay()
        verdict = compare(expected, self.outputs, FP32_BOUND)
        if not verdict.passed:
            raise LoweringError(verdict.message("captured step", "CUDA graph"))

    def fits(self, values: Sequence) -> bool:
        """Whether ``values`` can replay this capture."""
        if len(values) != len(self.kinds):
            return False
        for value, kind, address in zip(values, self.kinds, self.addresses):
            if _kind(value) != kind:
                return False
            if address is not None and value.data_ptr() != address:
                return False
        return True

    def __call__(self, values: Sequence) -> List:
        for buffer, value, fixed in zip(self.buffers, values, self.static):
            if isinstance(buffer, torch.Tensor) and not fixed:
                buffer.copy_(value)
        self.graph.replay()
        return [o.clone() if isinstance(o, torch.Tensor) else o for o in self.outputs]


def _kind(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    return (type(value).__name__, value)
