"""Counted FLOPs and peak live tensor memory of a run, by watching the aten ops it executes.

Why not ``FlopCounterMode`` around a sampler: Dynamo does not run compiled
code while a dispatch mode is active, so a compiled model would silently fall
back to eager and be counted as such.  The meter is therefore entered by the
speca runtime itself inside each compiled call (``speca_compile.metered``),
and around the model call for uncompiled rows; both see the same ops.

FLOPs use PyTorch's own formulas (``torch.utils.flop_counter``: matmuls,
convolutions, attention) plus the CPU flash-attention kernel, which that
registry lacks.  Memory is the peak of bytes held by tensors the ops created
and that are still referenced (activations, cached features), not weights.
Only aten ops are seen: ONNX Runtime engines are invisible to it.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

_SKIP = {torch.ops.aten.size.default, torch.ops.aten.stride.default, torch.ops.aten.dim.default,
         torch.ops.aten.numel.default, torch.ops.aten.is_contiguous.default,
         torch.ops.aten.sym_size.default, torch.ops.aten.sym_stride.default,
         torch.ops.aten.storage_offset.default, torch.ops.prim.layout.default}


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


_EXTRA = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


class OpMeter(TorchDispatchMode):
    """Counts FLOPs (total and per named section) and peak live bytes while active.

    Can be entered many times; counts accumulate over every entry.
    """

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.section_flops: Dict[str, int] = {}
        self._section = None
        self._live: Dict[int, list] = {}   # data_ptr -> [nbytes, live tensor count]
        self.live_bytes = 0
        self.peak_bytes = 0

    @contextlib.contextmanager
    def section(self, name: str):
        """Attribute the FLOPs of the enclosed ops to ``name`` as well as to the total."""
        previous, self._section = self._section, name
        try:
            yield
        finally:
            self._section = previous

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SKIP:
            return out
        packet = func._overloadpacket
        formula = flop_registry.get(packet) or _EXTRA.get(packet)
        if formula is not None:
            count = int(formula(*args, **kwargs, out_val=out))
            self.flops += count
            if self._section is not None:
                self.section_flops[self._section] = self.section_flops.get(self._section, 0) + count
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        ptr = storage.data_ptr()
        if ptr == 0:
            return
        entry = self._live.get(ptr)
        if entry is None:
            entry = self._live[ptr] = [storage.nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[ptr]
            self.live_bytes -= entry[0]
