"""The engine interface every lowering implements, and the lowering dispatcher.

An engine runs one segment: ``run(inputs) -> outputs``, positional lists in
the segment's input and output name order.  Keeping the interface this small
lets each lowering (eager, ONNX Runtime, TensorRT, Inductor) be one file.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from speca_compile.options import Options
from speca_compile.passes.partition import Segment, SpeculativeProgram


class Engine:
    """Runs one segment."""

    name = "engine"
    info: Dict[str, object] = {}   # what the engine reports in stats (build time, cache)

    def run(self, inputs: Sequence) -> List:
        raise NotImplementedError


def lower(program: SpeculativeProgram, options: Options) -> Dict[str, Engine]:
    """One engine per segment, keyed by segment name."""
    if options.lowering == "eager":
        from speca_compile.runtime.eager_engine import EagerEngine

        return {seg.name: EagerEngine(seg) for seg in program.segments}
    if options.lowering == "onnxruntime":
        from speca_compile.runtime.engine_cache import EngineCache
        from speca_compile.runtime.onnxruntime_engine import OnnxRuntimeEngine, import_onnxruntime

        import_onnxruntime()  # a missing package fails at compile time, naming the extra
        cache = EngineCache(options.cache_dir)
        return {seg.name: OnnxRuntimeEngine(seg, options, cache) for seg in program.segments}
    raise ValueError(f"lowering {options.lowering!r} is not available")
