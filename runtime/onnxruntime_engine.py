"""The ONNX Runtime lowering: each segment runs as an ONNX Runtime session.

Built lazily at the segment's first call, when its inputs are concrete:
export to ONNX (``onnx_export``), through the on-disk ``EngineCache``, then an
``InferenceSession`` with full graph optimisation and torch's thread count.
A segment of a new Dynamo graph of the same model (a batch of 1, a new
resolution) first tries the shape-general file of its family
(``engine_reuse``), kept only if it agrees with eager on that call.

Each session's first call is checked against eager (``engine.CheckedEngine``);
the verdict is written beside the cached file (``engine_check``), so a process
that loads a checked file skips the comparison and one that loads a file known
to disagree falls back to eager without making a session.

Sessions run with I/O binding (``run_session``): inputs are bound where they
lie and outputs come back through DLPack on the same device, so no copy is
made between segments.  The CUDA execution provider is used when the inputs
live on a GPU and ``onnxruntime-gpu`` provides it.

Threads may call one engine at once (a server running several requests): the
first calls build under a per-engine lock, so the export and session are
made once and the other callers wait and then use them; calls that find the
session built take no lock (an ``InferenceSession`` runs concurrently, and
each call binds its own I/O).
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Sequence

import torch

from speca_compile.errors import LoweringError, MissingExtraError
from speca_compile.options import Options
from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.engine_cache import EngineCache, cache_key
from speca_compile.runtime.engine_check import (CheckFailed, Verdict, bound_for, read_verdict, verdict_key,
                                                write_verdict)
from speca_compile.runtime.engine_reuse import agrees_with_eager, candidate, family_key, is_shape_general, remember
from speca_compile.runtime.onnx_cpu_rewrites import rewrite_target
from speca_compile.runtime.onnx_export import EXPORT_VERSION, export_segment, input_names
from speca_compile.runtime.segment_io import (BakedValuesMemo, SegmentIO, analyze_segment, baked_values, merge_outputs,
                                              tensor_values)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("lowering='onnxruntime' needs the onnxruntime package: "
                                "pip install speca-compile (it is a base dependency) or "
                                "pip install 'speca-compile[gpu]' for onnxruntime-gpu") from exc
    return onnxruntime


def export_identity(io_spec: SegmentIO, values: Sequence, options: Options) -> List[str]:
    """What an exported file depends on besides the segment's graph: tools, options, weights.
    Each weight by its memoised digest (``tensor_digest``): a weight is read once per process,
    not once per segment that bakes it in (the fused stack and the verify block share a block's
    weights; a 3 GB DiT-XL/2 stack was hashed twice, and copied to the CPU each time)."""
    import onnx
    import onnxruntime

    return [EXPORT_VERSION, options.precision, rewrite_target(values), torch.__version__,
            onnx.__version__, onnxruntime.__version__, cache_key("baked", repr(baked_values(io_spec, values)))]


def onnx_cache_key(segment: Segment, io_spec: SegmentIO, values: Sequence, options: Options,
                   identity: Optional[List[str]] = None) -> str:
    identity = identity if identity is not None else export_identity(io_spec, values, options)
    return cache_key("onnx", segment.module.code, io_spec.describe(), *identity)


class _Variant:
    """One built session: for one tuple of baked-in scalar inputs.

    ``verdict`` is its first-call check (engine_check), when known at build time (a
    ``.checked`` file, a passed reuse check); ``check_key`` names that file."""

    def __init__(self, io_spec: SegmentIO, session, names: Optional[List[str]] = None):
        self.io = io_spec
        self.session = session
        # a reused file (engine_reuse) keeps the input names of the graph it was exported for
        self.input_names = names if names is not None else input_names(io_spec)
        self.output_names = [o.name for o in session.get_outputs()]
        self.check_key: Optional[str] = None
        self.verdict: Optional[Verdict] = None


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, segment: Segment, options: Options, cache: EngineCache):
        self.segment = segment
        self.options = options
        self.cache = cache
        self.io: Optional[SegmentIO] = None
        self._baked: Optional[BakedValuesMemo] = None   # set with ``io``
        self.variants: Dict[tuple, _Variant] = {}
        self.info: Dict[str, object] = {"segment": segment.name, "builds": 0}
        # held while building: concurrent first calls build once (``info["builds"]`` counts
        # them).  Reentrant: a build runs the engine (engine_reuse's check), and for TensorRT
        # running may rebuild for a larger input, which takes this lock too
        self._build_lock = threading.RLock()

    def run(self, inputs: Sequence) -> List:
        variant = self._variant(inputs)
        outputs = self._execute(variant, tensor_values(variant.io, inputs))
        return merge_outputs(variant.io, outputs, inputs)

    def _variant(self, inputs: Sequence):
        """The built session for these inputs' baked-in values, built (once) if there is none.

        Looked up without the lock first (a dict read), then again under it: a thread that
        waited while another built finds that build instead of making its own."""
        baked_of = self._baked
        if baked_of is not None:
            variant = self.variants.get(baked_of(inputs))
            if variant is not None:
                return variant
        with self._build_lock:
            if self.io is None:
                self.io = analyze_segment(self.segment, inputs)
                self._baked = BakedValuesMemo(self.io)
            baked = self._baked(inputs)
            variant = self.variants.get(baked)
            if variant is None:
                variant = self.variants[baked] = self._build(inputs)
            return variant

    def _execute(self, variant, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        return run_session(variant.session, variant.input_names, variant.output_names, tensors)

    # the first-call check (engine.CheckedEngine): one verdict per variant, kept beside its file
    def variant_key(self, inputs: Sequence):
        return self._baked(inputs)

    def saved_verdict(self, key) -> Optional[Verdict]:
        return getattr(self.variants.get(key), "verdict", None)

    def save_verdict(self, key, verdict: Verdict) -> None:
        variant = self.variants.get(key)
        if variant is None:
            return
        variant.verdict = verdict
        check_key = getattr(variant, "check_key", None)   # None: no cached file (TensorRT's plans)
        if check_key is not None:
            write_verdict(self.cache, check_key, verdict)

    def _onnx_file(self, inputs: Sequence, io_spec: Optional[SegmentIO] = None, key: Optional[str] = None):
        """The segment's ONNX file (from the engine cache), its input specs, key and the cache event
        (``io_spec`` and ``key`` when the caller has them already)."""
        io_spec = io_spec if io_spec is not None else analyze_segment(self.segment, inputs)
        key = key if key is not None else onnx_cache_key(self.segment, io_spec, inputs, self.options)
        path, event = self.cache.fetch(
            key, ".onnx", lambda p: export_segment(self.segment, io_spec, inputs, p, self.options.precision,
                                     rewrite_target(inputs)))
        return path, io_spec, key, event

    def _build(self, inputs: Sequence) -> _Variant:
        start = time.perf_counter()
        io_spec = analyze_segment(self.segment, inputs)
        identity = export_identity(io_spec, inputs, self.options)
        key = onnx_cache_key(self.segment, io_spec, inputs, self.options, identity)
        family = family_key(self.segment.module, io_spec, inputs, *identity)
        on_gpu = any(isinstance(v, torch.Tensor) and v.is_cuda for v in inputs)
        bound = bound_for(self.options.precision, inputs)
        variant, event, path = None, None, None
        if self.cache.lookup(key, ".onnx") is None:
            variant, path = self._reuse(family, io_spec, inputs, on_gpu, bound)
            event = "reused" if variant is not None else None
        if variant is None:
            path, _, _, event = self._onnx_file(inputs, io_spec, key)
            check_key = verdict_key(self.cache, key, path, self._verdict_signature(io_spec), bound)
            verdict = read_verdict(self.cache, check_key)
            if verdict is not None and not verdict.passed:   # known to be wrong: no session
                self.info.update(cache=event, file=str(path))
                raise CheckFailed(f"{verdict.message(self.segment.name, self.name)}; verdict cached in "
                                  f"{self.cache.path(check_key, '.checked')}", verdict)
            variant = _Variant(io_spec, make_session(path, on_gpu, f"segment {self.segment.name!r}"))
            variant.check_key, variant.verdict = check_key, verdict
            if is_shape_general(io_spec):
                remember(self.cache, family, key)
        self.info.update(builds=int(self.info["builds"]) + 1, cache=event, file=str(path),
                         build_seconds=round(time.perf_counter() - start, 3))
        return variant

    def _verdict_signature(self, io_spec: SegmentIO) -> str:
        """What a verdict beside a file is about: this segment's code and input specs.  A file
        reused across a family is judged per segment: a verdict for a sibling segment (same
        calls, other constants) says nothing about this one."""
        return io_spec.describe() + "|" + cache_key("code", self.segment.module.code)

    def _reuse(self, family: str, io_spec: SegmentIO, inputs: Sequence, on_gpu: bool, bound: float):
        """A shape-general file of this segment's family (engine_reuse), if it agrees with eager here.

        The agreement check is this variant's first-call check: its verdict is kept with the
        variant and beside the file (for this segment's input specs), so neither this engine
        nor a later process compares again; a file known to disagree is not even loaded."""
        key = candidate(self.cache, family, ".onnx")
        if key is None:
            return None, None
        path = self.cache.path(key, ".onnx")
        check_key = verdict_key(self.cache, key, path, self._verdict_signature(io_spec), bound)
        known = read_verdict(self.cache, check_key)
        if known is not None and not known.passed:
            self.info["reuse_rejected"] = f"{path}: outputs differ from eager ({known.reason}; cached verdict)"
            return None, None
        try:
            session = make_session(path, on_gpu, f"segment {self.segment.name!r}")
            variant = _Variant(io_spec, session, [i.name for i in session.get_inputs()])
            variant.check_key = check_key
            tensors = tensor_values(io_spec, inputs)
            if len(variant.input_names) != len(tensors) or len(variant.output_names) != len(io_spec.tensor_outputs):
                why = "different inputs or outputs"
            elif known is not None:
                variant.verdict = known
                return variant, path
            else:
                verdict = agrees_with_eager(self.segment.module, inputs, io_spec,
                                            self._execute(variant, tensors), bound)
                write_verdict(self.cache, check_key, verdict)
                if verdict.passed:
                    variant.verdict = verdict
                    return variant, path
                why = f"outputs differ from eager ({verdict.reason}, relative L2 error {verdict.error:.2e})"
        except Exception as exc:  # noqa: BLE001  (a file that cannot serve these shapes: export instead)
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.info["reuse_rejected"] = f"{path}: {why}"
        return None, None


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime (onnxruntime-gpu) can run sessions on CUDA."""
    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


# spin between a run's ops, stop when it returns ("force_spinning_stop": when the last of the
# session's concurrent runs returns; ONNX Runtime >= 1.11)
SPIN_DURING_RUN = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}


def make_session(path, on_gpu: bool, what: str):
    """An ONNX Runtime session for ``path`` with the options every speca engine uses.

    Its intra-op pool has torch's thread count, and its workers spin between the parallel
    ops of a run but stop the moment the run returns (``SPIN_DURING_RUN``).  Both halves
    are measured (``examples/ort_threads_ab.py``: 2 cores, one process, interleaved
    trajectories of 25 images, 50 steps).  Pools that sleep between ops pay a wake-up per
    op, and a block stack runs hundreds: full path flux_digits 2.93 -> 2.22 s, dit_digits
    2.64 -> 2.12 s; speculating (tau0 0.3 / 0.4) 0.73 -> 0.63 s and 0.87 -> 0.78 s.  Pools
    that keep spinning after the run (ONNX Runtime's default) hold a core while the next
    session or the runtime's torch ops (forecast, merge) need it: every session's pool
    spinning made a speculative flux_digits trajectory 2.7x slower than sleeping pools
    (0.71 -> 1.91 s, ``--variants sleep,spin``).
    """
    ort = import_onnxruntime()
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.intra_op_num_threads = torch.get_num_threads()
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3
    for key, value in SPIN_DURING_RUN.items():
        session_options.add_session_config_entry(key, value)
    providers = ["CPUExecutionProvider"]
    if on_gpu and cuda_provider_available():
        # ONNX Runtime computes on torch's current stream, so consecutive segments and the
        # runtime's torch ops are ordered by the stream itself, with no device synchronisation
        providers = [("CUDAExecutionProvider", {"device_id": torch.cuda.current_device(),
                                                "user_compute_stream": str(torch.cuda.current_stream().cuda_stream)}),
                     "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as exc:
        raise LoweringError(f"{what}: ONNX Runtime could not load {path}: {exc}") from exc
    if on_gpu and len(providers) > 1:
        SESSION_STREAMS[id(session)] = torch.cuda.current_stream().cuda_stream
    return session


# session -> the CUDA stream it computes on (``make_session``): a run on another stream must
# synchronise first.  Keyed by id; entries are tiny and live as long as the process.
SESSION_STREAMS: Dict[int, int] = {}


def run_session(session, input_names: Sequence[str], output_names: Sequence[str],
                tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Run ``session`` on torch tensors with I/O binding; outputs on the inputs' device.

    Inputs are bound where they lie (CPU: the tensor's memory as a numpy view; CUDA, when the
    session runs there: the device pointer) and outputs are allocated by ONNX Runtime on that
    device and handed to torch through DLPack, so consecutive segments exchange tensors
    without a host copy.  CUDA inputs to a CPU-only session are copied to the host and back.
    """
    device = tensors[0].device if tensors else torch.device("cpu")
    on_device = device.type == "cuda" and "CUDAExecutionProvider" in session.get_providers()
    binding = session.io_binding()
    keep = []   # the bound memory must outlive the run
    run_options = None
    if on_device:
        run_options = _stream_run_options(session, device)
    for name, tensor in zip(input_names, tensors):
        tensor = tensor.detach().contiguous() if on_device else _as_numpy(tensor)
        keep.append(tensor)
        if on_device:
            binding.bind_input(name, "cuda", device.index or 0, _numpy_dtype(tensor.dtype),
                               list(tensor.shape), tensor.data_ptr())
        else:
            binding.bind_cpu_input(name, tensor)
    for name in output_names:
        binding.bind_output(name, "cuda" if on_device else "cpu", (device.index or 0) if on_device else 0)
    session.run_with_iobinding(binding, run_options)
    outputs = [torch.from_dlpack(value) for value in binding.get_outputs()]
    if device.type != "cpu" and not on_device:
        outputs = [o.to(device) for o in outputs]
    return outputs


def _stream_run_options(session, device: torch.device):
    """Run options for a CUDA run: on the session's own stream (torch's current one when it
    was made) nothing synchronises, neither before (the stream orders the inputs' producers)
    nor after (the outputs' consumers are queued on it too); on another stream, synchronise
    that stream first, as ONNX Runtime then reads on its own."""
    ort = import_onnxruntime()
    current = torch.cuda.current_stream(device)
    options = ort.RunOptions()
    if SESSION_STREAMS.get(id(session)) == current.cuda_stream:
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    else:
        current.synchronize()
    return options


def _as_numpy(t: torch.Tensor):
    return t.detach().to("cpu").contiguous().numpy()


def _numpy_dtype(dtype: torch.dtype):
    """The element type ONNX Runtime's binding takes (numpy's; it has none for bfloat16)."""
    if dtype == torch.bfloat16:
        raise LoweringError("ONNX Runtime's Python binding cannot bind bfloat16 tensors; "
                            "run the model in float32 or float16")
    return torch.empty((), dtype=dtype).numpy().dtype
