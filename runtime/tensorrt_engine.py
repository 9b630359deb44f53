"""The TensorRT lowering: each segment's ONNX graph built into a serialized TensorRT engine.

Same ONNX files as the ONNX Runtime lowering (so the graphs are the ones CI
runs), then, per segment:

* ``trt.OnnxParser`` into a strongly typed network: precision comes from the
  ONNX graph itself, which is what TensorRT 11 requires (it dropped the
  FP16/BF16 builder flags) and TensorRT 10 supports.  The parser reads the
  cached file with ``parse_from_file`` (never ``parse(bytes)``), which resolves
  external data relative to the file: a segment over 1.5 GiB keeps its weights
  in ``<key>.onnx.data`` beside it (``onnx_files``), which the cache verified
  with the file;
* one optimization profile covering the dynamic axes: from 1 to twice the
  largest size seen so far (a larger input rebuilds once with a wider range);
* ``build_serialized_network``, the plan stored in the engine cache beside
  the ONNX file (key: the ONNX key, TensorRT version, GPU name, profile);
* execution with ``execute_async_v3`` on torch's current CUDA stream, inputs
  and outputs bound by device pointer, so nothing is copied to the host.

Builds happen under the engine's lock (``OnnxRuntimeEngine._variant``), and so
does a rebuild for a larger input: threads that hit the same too-small profile
wait for one rebuild and use it.  Execution itself is not made thread-safe: a
variant has one execution context, which concurrent calls would share.

Written against the TensorRT 10/11 Python API; not run here (no TensorRT, no
GPU in this project's CI). Its tests skip with the reason when either is
missing.
"""

from __future__ import annotations

import time
from typing import Dict, List, Sequence, Tuple

import torch

from speca_compile.errors import LoweringError, MissingExtraError
from speca_compile.options import Options
from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine_cache import EngineCache, cache_key
from speca_compile.runtime.onnx_export import input_names
from speca_compile.runtime.onnxruntime_engine import OnnxRuntimeEngine

WORKSPACE_BYTES = 4 << 30


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingExtraError("lowering='tensorrt' needs TensorRT: pip install 'speca-compile[tensorrt]' "
                                "(and an NVIDIA GPU with CUDA)") from exc
    if not torch.cuda.is_available():
        raise MissingExtraError("lowering='tensorrt' needs a CUDA GPU; torch.cuda.is_available() is False")
    return tensorrt


def _torch_dtype(trt, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


class _TrtVariant:
    def __init__(self, io_spec, engine, profile: Dict[str, Tuple]):
        self.io = io_spec
        self.engine = engine
        self.context = engine.create_execution_context()
        self.profile = profile
        self.replaced_by = None   # the wider rebuild that superseded this variant, if any
        self.input_names = input_names(io_spec)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.output_names = [n for n in names if engine.get_tensor_mode(n).name == "OUTPUT"]


class TensorRTEngine(OnnxRuntimeEngine):
    name = "tensorrt"

    def __init__(self, segment: Segment, options: Options, cache: EngineCache):
        super().__init__(segment, options, cache)
        self.trt = import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.max_seen: Dict[str, Tuple[int, ...]] = {}

    def _execute(self, variant: _TrtVariant, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        if not self._fits(variant, tensors):
            variant = self._rebuild(variant, tensors)
        ctx, trt = variant.context, self.trt
        tensors = [t.contiguous() for t in tensors]
        for name, t in zip(variant.input_names, tensors):
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outputs = []
        device = tensors[0].device if tensors else torch.device("cuda", torch.cuda.current_device())
        for name in variant.output_names:   # on the inputs' device, not whichever is current
            out = torch.empty(tuple(ctx.get_tensor_shape(name)),
                              dtype=_torch_dtype(trt, variant.engine.get_tensor_dtype(name)), device=device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not ctx.execute_async_v3(torch.cuda.current_stream(device).cuda_stream):
            raise LoweringError(f"segment {self.segment.name!r}: TensorRT execute_async_v3 failed")
        return outputs

    def _fits(self, variant: _TrtVariant, tensors) -> bool:
        return all(all(s <= m for s, m in zip(t.shape, variant.profile[n][2]))
                   for n, t in zip(variant.input_names, tensors))

    def _rebuild(self, variant: _TrtVariant, tensors) -> _TrtVariant:
        with self._build_lock:
            # another thread may have rebuilt this variant while this one waited
            while variant.replaced_by is not None:
                variant = variant.replaced_by
            if self._fits(variant, tensors):
                return variant
            for n, t in zip(variant.input_names, tensors):
                self.max_seen[n] = tuple(max(a, b) for a, b in zip(self.max_seen.get(n, t.shape), t.shape))
            rebuilt = self._build_from(variant.io, tensors)
            for key, existing in list(self.variants.items()):
                if existing is variant:
                    self.variants[key] = rebuilt
            variant.replaced_by = rebuilt
            return rebuilt

    def _build(self, inputs: Sequence) -> _TrtVariant:
        from speca_compile.runtime.segment_io import tensor_values

        path, io_spec, onnx_key, _ = self._onnx_file(inputs)
        self._onnx = (path, onnx_key)
        return self._build_from(io_spec, tensor_values(io_spec, inputs))

    def _build_from(self, io_spec, tensors) -> _TrtVariant:
        trt = self.trt
        path, onnx_key = self._onnx
        start = time.perf_counter()
        names = input_names(io_spec)
        specs = [io_spec.inputs[i] for i in io_spec.tensor_inputs]
        profile = {}
        for n, spec, t in zip(names, specs, tensors):
            seen = self.max_seen.setdefault(n, tuple(t.shape))
            dynamic = {d for d, size in enumerate(spec.shape) if size is None}
            low = tuple(1 if d in dynamic else s for d, s in enumerate(t.shape))
            high = tuple(2 * m if d in dynamic else s for d, (s, m) in enumerate(zip(t.shape, seen)))
            profile[n] = (low, tuple(t.shape), high)
        key = cache_key("tensorrt", onnx_key, trt.__version__, torch.cuda.get_device_name(),
                        sorted(profile.items()))
        plan_path = self.cache.get_or_build(key, ".plan", lambda p: self._serialize(path, profile, p))
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise LoweringError(f"segment {self.segment.name!r}: TensorRT could not deserialize {plan_path}")
        self.info.update(builds=int(self.info["builds"]) + 1, file=str(plan_path),
                         build_seconds=round(time.perf_counter() - start, 3))
        return _TrtVariant(io_spec, engine, profile)

    def _serialize(self, onnx_path, profile, out_path) -> None:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise LoweringError(f"segment {self.segment.name!r}: TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        opt = builder.create_optimization_profile()
        for name, (low, best, high) in profile.items():
            opt.set_shape(name, low, best, high)
        config.add_optimization_profile(opt)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise LoweringError(f"segment {self.segment.name!r}: TensorRT failed to build an engine "
                                f"from {onnx_path} (see the TensorRT log above for the layer)")
        out_path.write_bytes(bytes(plan))
