"""The Inductor lowering: each segment compiled by TorchInductor into fused C++/Triton kernels.

The runner executes inside a Dynamo-compiled frame, where ``torch.compile``
does not trace again, so the segment's fx graph goes to Inductor directly
(``compile_fx``, the function ``torch.compile``'s default backend calls).
Inductor code is specialised to the shapes it was compiled for and has no
guards of its own, so the engine keeps one compiled variant per input
signature (tensor shapes, strides, dtypes and devices, scalar values): a new batch or
sub-batch size compiles once and is reused afterwards; nothing runs with a
shape it was not compiled for.  Compiled kernels persist in Inductor's own
on-disk cache, so a second process recompiles quickly.

A segment that returns Python numbers (the prologue, when sizes or scalars are
hoisted into it) runs eagerly: Inductor compiles tensor programs only.  That
segment is the timestep and patch embedding, a small part of a step, and
``stats`` reports it as ``eager (returns non-tensor values)``.

Each compiled variant's first call is checked against eager
(``engine.CheckedEngine``), once per signature, in memory.

Concurrent first calls with one signature compile once: the build runs under
the engine's lock and the threads that waited use its result (``info["builds"]``
counts compilations).  Calls that find their variant compiled take no lock.
Compilations of different engines do not overlap either: they hold Dynamo's
``compile_lock``, as Inductor's own lazy backward compilation does, because
Inductor patches process-wide config and state while it compiles.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from speca_compile.errors import LoweringError
from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.onnx_export import prepare_for_export
from speca_compile.runtime.segment_io import analyze_segment


def _signature(inputs: Sequence) -> Tuple:
    return tuple((tuple(v.shape), v.stride(), v.dtype, v.device.type) if isinstance(v, torch.Tensor) else
                 (type(v).__name__, v) for v in inputs)


def _compile_lock():
    """Dynamo's process-wide compile lock (an RLock), or a lock of our own if torch moved it."""
    try:
        from torch._dynamo.convert_frame import compile_lock
    except ImportError:
        return _FALLBACK_COMPILE_LOCK
    return compile_lock


_FALLBACK_COMPILE_LOCK = threading.RLock()


class InductorEngine(Engine):
    name = "inductor"

    def __init__(self, segment: Segment):
        self.segment = segment
        self.variants: Dict[Tuple, Callable] = {}
        self.info = {"segment": segment.name, "builds": 0, "build_seconds": 0.0}
        self._build_lock = threading.Lock()   # one compilation per signature, however many threads ask

    def run(self, inputs: Sequence) -> List:
        key = _signature(inputs)
        compiled = self.variants.get(key)
        if compiled is None:
            with self._build_lock:
                compiled = self.variants.get(key)   # built by the thread this one waited for?
                if compiled is None:
                    compiled = self.variants[key] = self._build(list(inputs))
        return list(compiled(*inputs))

    def variant_key(self, inputs: Sequence):
        """The compiled variant's signature, checked once (in memory: Inductor's own cache holds
        kernels, not verdicts); None for a segment that runs eagerly anyway."""
        key = _signature(inputs)
        return None if self.variants.get(key) is self.segment.module else key

    def _build(self, inputs: List) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        io_spec = analyze_segment(self.segment, inputs)
        if io_spec.scalar_outputs:
            self.info["runs"] = "eager (returns non-tensor values)"
            return self.segment.module
        start = time.perf_counter()
        try:
            # .item() of one-element constants (an eps, a rope theta) becomes its number,
            # as for ONNX export: Inductor cannot trace data-dependent scalars
            module = prepare_for_export(self.segment.module, io_spec, inputs)
            with _compile_lock():
                compiled = compile_fx(module, inputs)
        except Exception as exc:
            raise LoweringError(f"segment {self.segment.name!r}: Inductor could not compile it: "
                                f"{type(exc).__name__}: {exc}") from exc
        self.info.update(builds=int(self.info["builds"]) + 1,
                         build_seconds=round(float(self.info["build_seconds"]) + time.perf_counter() - start, 3))
        return compiled
