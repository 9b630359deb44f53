"""The ONNX Runtime lowering: each segment runs as an ONNX Runtime session.

Built lazily at the segment's first call, when its inputs are concrete:
export to ONNX (``onnx_export``), through the on-disk ``EngineCache``, then an
``InferenceSession`` with full graph optimisation and torch's thread count.
Inputs and outputs share memory with torch tensors on CPU (numpy views), so
no copy is made between segments.  The CUDA execution provider is used when
the inputs live on a GPU and ``onnxruntime-gpu`` provides it.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from speca_compile.errors import LoweringError, MissingExtraError
from speca_compile.options import Options
from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.engine_cache import EngineCache, cache_key, weights_digest
from speca_compile.runtime.onnx_export import EXPORT_VERSION, export_segment, input_names
from speca_compile.runtime.segment_io import (SegmentIO, analyze_segment, baked_values, merge_outputs,
                                              tensor_values)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("lowering='onnxruntime' needs the onnxruntime package: "
                                "pip install speca-compile (it is a base dependency) or "
                                "pip install 'speca-compile[gpu]' for onnxruntime-gpu") from exc
    return onnxruntime


def onnx_cache_key(segment: Segment, io_spec: SegmentIO, values: Sequence, options: Options) -> str:
    import onnx
    import onnxruntime

    weights = [values[i] for i, s in enumerate(io_spec.inputs) if s.kind == "weight"]
    return cache_key("onnx", EXPORT_VERSION, segment.module.code, io_spec.describe(), options.precision,
                     torch.__version__, onnx.__version__, onnxruntime.__version__,
                     weights_digest(weights))


class _Variant:
    """One built session: for one tuple of baked-in scalar inputs."""

    def __init__(self, io_spec: SegmentIO, session):
        self.io = io_spec
        self.session = session
        self.input_names = input_names(io_spec)
        self.output_names = [o.name for o in session.get_outputs()]


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, segment: Segment, options: Options, cache: EngineCache):
        self.segment = segment
        self.options = options
        self.cache = cache
        self.io: Optional[SegmentIO] = None
        self.variants: Dict[tuple, _Variant] = {}
        self.info: Dict[str, object] = {"segment": segment.name, "builds": 0}

    def run(self, inputs: Sequence) -> List:
        if self.io is None:
            self.io = analyze_segment(self.segment, inputs)
        baked = baked_values(self.io, inputs)
        variant = self.variants.get(baked)
        if variant is None:
            variant = self.variants[baked] = self._build(inputs)
        outputs = self._execute(variant, tensor_values(variant.io, inputs))
        return merge_outputs(variant.io, outputs, inputs)

    def _execute(self, variant, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        return run_session(variant.session, variant.input_names, variant.output_names, tensors)

    def _onnx_file(self, inputs: Sequence):
        """The segment's ONNX file (from the engine cache), its input specs and the cache event."""
        io_spec = analyze_segment(self.segment, inputs)
        key = onnx_cache_key(self.segment, io_spec, inputs, self.options)
        before = len(self.cache.events)
        path = self.cache.get_or_build(key, ".onnx", lambda p: export_segment(self.segment, io_spec, inputs, p))
        return path, io_spec, key, self.cache.events[before][0]

    def _build(self, inputs: Sequence) -> _Variant:
        start = time.perf_counter()
        path, io_spec, _, event = self._onnx_file(inputs)
        on_gpu = any(isinstance(v, torch.Tensor) and v.is_cuda for v in inputs)
        session = make_session(path, on_gpu, f"segment {self.segment.name!r}")
        self.info.update(builds=int(self.info["builds"]) + 1, cache=event, file=str(path),
                         build_seconds=round(time.perf_counter() - start, 3))
        return _Variant(io_spec, session)


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime (onnxruntime-gpu) can run sessions on CUDA."""
    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


def make_session(path, on_gpu: bool, what: str):
    """An ONNX Runtime session for ``path`` with the options every speca engine uses."""
    ort = import_onnxruntime()
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.intra_op_num_threads = torch.get_num_threads()
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3
    # ORT's worker threads spin after each run by default; between engine calls the
    # runtime runs torch ops (forecast, merge), which the spinning threads starve
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                 if on_gpu and cuda_provider_available() else ["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as exc:
        raise LoweringError(f"{what}: ONNX Runtime could not load {path}: {exc}") from exc


def run_session(session, input_names: Sequence[str], output_names: Sequence[str],
                tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Run ``session`` on torch tensors (CPU: shared memory, no copy); outputs on the inputs' device."""
    feed = {name: _as_numpy(t) for name, t in zip(input_names, tensors)}
    outputs = [torch.from_numpy(a) for a in session.run(list(output_names), feed)]
    device = tensors[0].device if tensors else torch.device("cpu")
    if device.type != "cpu":
        outputs = [o.to(device) for o in outputs]
    return outputs


def _as_numpy(t: torch.Tensor):
    return t.detach().to("cpu").contiguous().numpy()
