"""The engine interface every lowering implements, and the lowering dispatcher.

An engine runs one segment: ``run(inputs) -> outputs``, positional lists in
the segment's input and output name order.  Keeping the interface this small
lets each lowering (eager, ONNX Runtime, TensorRT, Inductor) be one file.
"""

from __future__ import annotations

import threading
import warnings
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from speca_compile.errors import LoweringError, SpecaError
from speca_compile.options import Options, check_precision
from speca_compile.passes.partition import Segment, SpeculativeProgram
from speca_compile.runtime.engine_check import CheckFailed, Verdict, bound_for, compare


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

    # the first-call check (CheckedEngine): each variant an engine builds is compared with eager once
    def variant_key(self, inputs: Sequence) -> Optional[Hashable]:
        """Which built variant ``inputs`` ran on (asked after ``run``); None when they ran the
        segment eagerly, so there is nothing to check.  One variant unless the engine says more."""
        return ()

    def saved_verdict(self, key: Hashable) -> Optional[Verdict]:
        """The verdict the engine holds for that variant (e.g. read beside its cached file)."""
        return vars(self).get("_verdicts", {}).get(key)

    def save_verdict(self, key: Hashable, verdict: Verdict) -> None:
        """Keep ``verdict`` with the variant: here in memory; an engine with files may keep it on
        disk, so that a later process need not check, and one whose variants can be replaced
        (TensorRT rebuilds for larger inputs) keeps it on the variant, so a replacement is checked."""
        vars(self).setdefault("_verdicts", {})[key] = verdict


class WrappingEngine(Engine):
    """An engine that runs another (``wrapped``, the name of the attribute holding it): what
    the wrapper lacks is the wrapped engine's, its name included (bundle export reads an ONNX
    Runtime engine's variants through the wrappers)."""

    wrapped = "engine"

    def __getattr__(self, name):
        if name == type(self).wrapped:   # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(getattr(self, type(self).wrapped), name)

    @property
    def name(self):
        return getattr(self, type(self).wrapped).name


class CheckedEngine(WrappingEngine):
    """Runs a lowered engine, checked against the eager segment on each variant's first call.

    No engine runs unchecked (engine_check): the first call on each variant the engine
    builds (an ONNX Runtime session per tuple of baked-in values, an Inductor compilation
    per input signature) also runs the segment eagerly on the same inputs and compares the
    outputs within the bound of the engine's precision.  A verdict the engine already holds
    (a ``.checked`` file beside a cached ONNX file, a passed reuse check) is not repeated.

    A mismatch, a non-finite output, a shape mismatch, an exception or a failed build:
    with ``on_lowering_error="eager"`` the segment runs eagerly from then on, with one
    warning naming the segment and the error, ``stats`` reporting ``fallback``, and the
    failing call already returning eager's values; with ``"raise"`` a ``LoweringError``
    names the segment, the error and the bound.  Threads whose calls fail at the same time
    switch to eager once, with one warning.

    Engines tell the wrapper which variant a call ran on (``Engine.variant_key``) and keep
    each variant's verdict (``saved_verdict`` / ``save_verdict``).  Once every variant built
    so far (``info["builds"]``) has passed, a call costs the wrapper one comparison of ints.  Attributes the wrapper lacks
    are the wrapped engine's (bundle export reads an ONNX Runtime engine's variants).
    """

    def __init__(self, engine: Engine, segment: Segment, options: Options):
        self.engine, self.segment = engine, segment
        self.precision = options.precision
        self.raise_errors = options.on_lowering_error != "eager"
        if "info" not in vars(engine):   # never write into the class-level default dict
            engine.info = dict(engine.info)
        self.info = engine.info
        self.info.setdefault("segment", segment.name)
        self.info.setdefault("checked", False)
        self.verdicts: Dict[Hashable, Verdict] = {}   # the latest per variant key, for stats
        self._settled = None   # the build count at which every variant built had passed
        self._switch_lock = threading.Lock()

    def built(self) -> bool:
        return self.engine.built()   # after a fallback, the eager engine: nothing to build

    def run(self, inputs: Sequence) -> List:
        engine = self.engine
        if isinstance(engine, EagerEngine) and engine.reference:   # eager itself: nothing to check
            return engine.run(inputs)
        try:
            outputs = engine.run(inputs)
        except LoweringError as exc:   # a failed build, or a verdict remembered as failed
            if self.raise_errors:
                raise
            return self._fall_back(engine, inputs, exc)
        except Exception as exc:  # noqa: BLE001  (an engine that fails to run is not trusted either)
            if self.raise_errors and isinstance(exc, SpecaError):
                raise   # a deliberate error (e.g. a missing extra) says what it is already
            error = LoweringError(f"segment {self.segment.name!r}: {engine.name} failed to run: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}")
            if self.raise_errors:
                raise error from exc
            return self._fall_back(engine, inputs, error)
        builds = engine.info.get("builds")
        if builds is not None and builds == self._settled:
            return outputs   # every variant built so far has passed: no per-call lookup
        try:
            return self._checked(engine, inputs, outputs, builds)
        except CheckFailed as exc:
            if self.raise_errors:
                raise
            return self._fall_back(engine, inputs, exc)

    def _checked(self, engine: Engine, inputs: Sequence, outputs: List, builds) -> List:
        """``outputs``, once the variant they came from has a passed verdict (compared now if none)."""
        key = engine.variant_key(inputs)
        if key is not None:
            verdict = engine.saved_verdict(key)
            if verdict is None:
                expected = EagerEngine(self.segment).run(inputs)
                verdict = compare(expected, outputs, bound_for(self.precision, inputs))
                engine.save_verdict(key, verdict)
                if not verdict.passed:
                    raise CheckFailed(verdict.message(self.segment.name, engine.name), verdict,
                                      expected)
            self._record(key, verdict)
            if not verdict.passed:
                raise CheckFailed(verdict.message(self.segment.name, engine.name), verdict)
        if isinstance(builds, int) and sum(v.passed for v in self.verdicts.values()) >= builds:
            self._settled = builds
        return outputs

    def _record(self, key: Hashable, verdict: Verdict) -> None:
        self.verdicts[key] = verdict
        checks = list(self.verdicts.values())
        self.info.update(checked=all(v.passed for v in checks), check_error=max(v.error for v in checks),
                         check_bound=verdict.bound, checked_by=verdict.source, checked_variants=len(checks))

    def _fall_back(self, engine: Engine, inputs: Sequence, exc: LoweringError) -> List:
        with self._switch_lock:
            if self.engine is engine:   # not already switched by a thread that failed first
                warnings.warn(f"speca: running segment {self.segment.name!r} eagerly "
                              f"(on_lowering_error='eager'): {exc}", stacklevel=3)
                info = {**dict(engine.info), "segment": self.segment.name, "fallback": f"eager ({exc})"}
                verdict = getattr(exc, "verdict", None)
                if verdict is not None:
                    info.update(checked=False, check_error=verdict.error, check_bound=verdict.bound,
                                checked_by=verdict.source)
                self.info = info
                self.engine = EagerEngine(self.segment)
        expected = getattr(exc, "expected", None)
        return list(expected) if expected is not None else self.engine.run(inputs)


def resolve_lowering(options: Options, example_inputs: Sequence) -> Tuple[Options, Optional[str]]:
    """``lowering="auto"`` made concrete for one graph, and a note for ``stats`` saying why.

    ONNX Runtime is the default engine, but its CPU build on GPU inputs would copy every
    segment's inputs to the host and compute there: on CUDA without onnxruntime-gpu's CUDA
    provider the segments run on Inductor instead, and the note names the extra
    (``auto_lowering``).  ``precision="bf16"`` resolves to Inductor on the CPU and CUDA, eager
    on other devices: ONNX Runtime's Python binding cannot bind bfloat16 tensors, so it cannot
    run the bfloat16 graphs, and Inductor is the fastest lowering that can (``auto_lowering``)."""
    options, note = _resolve(options, example_inputs)
    check_precision(options)   # "auto" may have resolved to eager, which has no fp16 graphs
    return options, note


def _resolve(options: Options, example_inputs: Sequence) -> Tuple[Options, Optional[str]]:
    if options.lowering != "auto":
        return options.replace(on_lowering_error=options.on_lowering_error or "raise",
                               engine_choice=options.engine_choice or "lowering"), None
    # under "auto" a segment ONNX cannot export runs eagerly, with a warning and "fallback" in stats
    options = options.replace(on_lowering_error=options.on_lowering_error or "eager")
    devices = {v.device.type for v in example_inputs if isinstance(v, torch.Tensor)}
    lowering, note = auto_lowering(devices, options.precision)
    choice = options.engine_choice
    if choice is None:
        # only when speculating: a full step's segments run back to back, where ONNX Runtime on
        # each beats any mix (dit_digits full path 1.13x eager all on ONNX Runtime, 1.07x with the
        # per-segment choice, which put prologue and epilogue on eager: a stack call right after
        # PyTorch's ops finds their OpenMP workers still spinning on its cores)
        choice = "measure" if (lowering == "onnxruntime" and devices <= {"cpu"} and options.precision == "fp32"
                               and options.speculate) else "lowering"
        if choice == "measure":
            note += "; each segment then runs on the faster of onnxruntime and eager, measured on its first call"
    if lowering == "eager":
        choice = "lowering"
    return options.replace(lowering=lowering, engine_choice=choice), note


def auto_lowering(devices, precision: str = "fp32") -> Tuple[str, str]:
    """What ``lowering="auto"`` runs for inputs on ``devices`` (device types), and why:
    ONNX Runtime on the CPU; on CUDA ONNX Runtime's CUDA provider where onnxruntime-gpu is
    installed, else Inductor (compiled once per segment for every sub-batch size, issue 18;
    the CPU build of ONNX Runtime would copy every segment's inputs to the host); eager on
    any other device.  With ``precision="bf16"``: Inductor on the CPU and CUDA, eager elsewhere
    (no ONNX lowering takes bfloat16)."""
    gpu = sorted(d for d in devices if d != "cpu")
    if precision == "bf16":
        if set(gpu) <= {"cuda"}:
            return "inductor", (f"lowering 'auto': inductor (precision 'bf16' on {', '.join(gpu) or 'the cpu'}: "
                                "ONNX Runtime cannot bind bfloat16 tensors)")
        return "eager", (f"lowering 'auto': eager (precision 'bf16', inputs on {', '.join(gpu)}: "
                         "inductor is not used there and ONNX Runtime cannot bind bfloat16 tensors)")
    if not gpu:
        return "onnxruntime", "lowering 'auto': onnxruntime (inputs on the cpu)"
    from speca_compile.runtime.onnxruntime_engine import cuda_provider_available

    if gpu == ["cuda"] and cuda_provider_available():
        return "onnxruntime", "lowering 'auto': onnxruntime with the CUDA execution provider"
    if gpu == ["cuda"]:
        return "inductor", ("lowering 'auto': inductor (inputs on cuda and onnxruntime has no CUDA "
                            "execution provider; pip install 'speca-compile[gpu]' for ONNX Runtime there)")
    return "eager", (f"lowering 'auto': eager (inputs on {', '.join(gpu)}: neither onnxruntime nor "
                     f"inductor is used there)")


def lower(program: SpeculativeProgram, options: Options) -> Dict[str, Engine]:
    """One engine per segment, keyed by segment name; every lowered one checked (``CheckedEngine``).
    The eager segments at the model's precision are the reference, unchecked; in bfloat16
    (``precision="bf16"``) they are a lowering of their own, checked against the float32 ones."""
    engines = _lower(program, options)
    if options.lowering == "eager" and options.precision == "fp32":
        return engines
    segments = {seg.name: seg for seg in program.all_segments}
    checked = {name: CheckedEngine(engine, segments[name], options) for name, engine in engines.items()}
    if options.engine_choice != "measure":
        return checked
    from speca_compile.runtime.engine_choice import against_eager

    return against_eager(checked, segments)


def _lower(program: SpeculativeProgram, options: Options) -> Dict[str, Engine]:
    if options.lowering == "eager":
        return {seg.name: EagerEngine(seg, options.precision) for seg in program.all_segments}
    if options.lowering == "inductor":
        from speca_compile.runtime.inductor_engine import InductorEngine

        return {seg.name: InductorEngine(seg, options.precision) for seg in program.all_segments}
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
