"""The engine interface every lowering implements, and the lowering dispatcher.

An engine runs one segment: ``run(inputs) -> outputs``, positional lists in
the segment's input and output name order.  Keeping the interface this small
lets each lowering (eager, ONNX Runtime, TensorRT, Inductor) be one file.
"""

from __future__ import annotations

import threading
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from speca_compile.errors import LoweringError

from speca_compile.options import Options, check_precision
from speca_compile.passes.partition import Segment, SpeculativeProgram


class Engine:
    """Runs one segment."""

    name = "engine"
    info: Dict[str, object] = {}   # what the engine reports in stats (build time, cache)

    def run(self, inputs: Sequence) -> List:
        raise NotImplementedError

    def built(self) -> bool:
        """Whether a call runs at once, with no export or compile first (engines that build
        count their builds in ``info``; one that counts none needs none)."""
        return int(self.info.get("builds", 1)) > 0


class EagerFallback(Engine):
    """Runs a lowered engine; if it fails to build, runs the segment eagerly instead.

    Only with ``on_lowering_error="eager"``, and never silently: a warning names
    the segment and the error, and ``stats`` reports ``fallback`` for it.
    Threads whose calls fail at the same time switch to eager once, with one warning.
    """

    def __init__(self, engine: Engine, segment: Segment):
        self.engine, self.segment = engine, segment
        self.info = engine.info
        self._switch_lock = threading.Lock()

    @property
    def name(self):
        return self.engine.name

    def built(self) -> bool:
        return self.engine.built()   # after a fallback, the eager engine: nothing to build

    def run(self, inputs: Sequence) -> List:
        engine = self.engine
        try:
            return engine.run(inputs)
        except LoweringError as exc:
            with self._switch_lock:
                if self.engine is engine:   # not already switched by a thread that failed first
                    warnings.warn(f"speca: running segment {self.segment.name!r} eagerly "
                                  f"(on_lowering_error='eager'): {exc}", stacklevel=2)
                    self.info = {**dict(engine.info), "segment": self.segment.name,
                                 "fallback": f"eager ({exc})"}
                    self.engine = EagerEngine(self.segment)
            return self.engine.run(inputs)


def resolve_lowering(options: Options, example_inputs: Sequence) -> Tuple[Options, Optional[str]]:
    """``lowering="auto"`` made concrete for one graph, and a note for ``stats`` saying why.

    ONNX Runtime is the default engine, but its CPU build on GPU inputs would copy every
    segment's inputs to the host and compute there: on a GPU without onnxruntime-gpu's CUDA
    provider the segments run eagerly on the GPU instead, and the note names the extra."""
    options, note = _resolve(options, example_inputs)
    check_precision(options)   # "auto" may have resolved to eager, which has no fp16 graphs
    return options, note


def _resolve(options: Options, example_inputs: Sequence) -> Tuple[Options, Optional[str]]:
    if options.lowering != "auto":
        return options.replace(on_lowering_error=options.on_lowering_error or "raise"), None
    # under "auto" a segment ONNX cannot export runs eagerly, with a warning and "fallback" in stats
    options = options.replace(on_lowering_error=options.on_lowering_error or "eager")
    devices = {v.device.type for v in example_inputs if isinstance(v, torch.Tensor)}
    gpu = sorted(d for d in devices if d != "cpu")
    if not gpu:
        return options.replace(lowering="onnxruntime"), "lowering 'auto': onnxruntime (inputs on the cpu)"
    from speca_compile.runtime.onnxruntime_engine import cuda_provider_available

    if gpu == ["cuda"] and cuda_provider_available():
        return (options.replace(lowering="onnxruntime"),
                "lowering 'auto': onnxruntime with the CUDA execution provider")
    return (options.replace(lowering="eager"),
            f"lowering 'auto': eager (inputs on {', '.join(gpu)} and onnxruntime has no execution "
            f"provider there; pip install 'speca-compile[gpu]' for ONNX Runtime on CUDA)")


def lower(program: SpeculativeProgram, options: Options) -> Dict[str, Engine]:
    """One engine per segment, keyed by segment name."""
    engines = _lower(program, options)
    if options.on_lowering_error == "eager" and options.lowering != "eager":
        segments = {seg.name: seg for seg in program.all_segments}
        return {name: EagerFallback(engine, segments[name]) for name, engine in engines.items()}
    return engines


def _lower(program: SpeculativeProgram, options: Options) -> Dict[str, Engine]:
    if options.lowering == "eager":
        return {seg.name: EagerEngine(seg) for seg in program.all_segments}
    if options.lowering == "inductor":
        from speca_compile.runtime.inductor_engine import InductorEngine

        return {seg.name: InductorEngine(seg) for seg in program.all_segments}
    if options.lowering == "onnxruntime":
        from speca_compile.runtime.engine_cache import EngineCache
        from speca_compile.runtime.onnxruntime_engine import OnnxRuntimeEngine, import_onnxruntime

        import_onnxruntime()  # a missing package fails at compile time, naming the extra
        cache = EngineCache(options.cache_dir)
        return {seg.name: OnnxRuntimeEngine(seg, options, cache) for seg in program.all_segments}
    if options.lowering == "tensorrt":
        from speca_compile.runtime.engine_cache import EngineCache
        from speca_compile.runtime.tensorrt_engine import TensorRTEngine, import_tensorrt

        import_tensorrt()  # no TensorRT or no GPU: fails at compile time, naming the extra
        cache = EngineCache(options.cache_dir)
        return {seg.name: TensorRTEngine(seg, options, cache) for seg in program.all_segments}
    raise ValueError(f"lowering {options.lowering!r} is not available")


from speca_compile.runtime.eager_engine import EagerEngine  # noqa: E402  (it subclasses Engine)
