"""The option set of the ``speca`` backend, parsed and validated in one place.

Every option the backend, the passes and the runtime read lives in the frozen
``Options`` dataclass.  ``Options.parse`` turns the user's ``options={...}``
dict into it and rejects unknown keys and out-of-range values with an error
that names the key and lists what is valid, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Tuple, Union

from speca_compile.errors import OptionsError

FORECASTERS = ("taylor", "hermite", "foca")
ERROR_METRICS = ("rel_l2", "rel_l1")
ON_REJECT = ("recompute", "defer")
ACCEPTANCES = ("budget", "step")
ON_LOWERING_ERROR = ("raise", "eager")
LOWERINGS = ("auto", "eager", "onnxruntime", "inductor", "tensorrt")
PLANNED_LOWERINGS = ()
PRECISIONS = ("fp32", "fp16", "bf16")
# "measure": each segment on the faster of its lowering and eager, timed on its first call
# (runtime/engine_choice.py); "lowering": every segment on the lowering
ENGINE_CHOICES = ("measure", "lowering")
HALF_PRECISION_LOWERINGS = ("onnxruntime", "tensorrt")   # fp16 is set in their ONNX graphs
BF16_LOWERINGS = ("eager", "inductor")   # bf16 casts around the segment's graph (runtime/precision.py)
# the feature cache's storage dtype; None: the dtype of the features it is given.  No "fp16": the
# divided differences grow as 1/gap^k and leave float16's range (65504); bfloat16 has float32's
CACHE_DTYPES = (None, "fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class Options:
    """Validated settings of one compiled model.

    The policy defaults are the budget policy's (``runtime/budget_policy.py``),
    chosen by measurement on both trained reference models (README
    "Speculation policy"): a run's errors share ``tau0``, no unchecked
    forecasts are forced (``min_speculative=0``), and ``max_speculative`` is
    only a safety cap above the longest runs measured.  ``acceptance="step"``
    with ``tau0=0.1, min_speculative=2, max_speculative=5`` is the official
    SpeCa DiT rule, with a gentler threshold decay (``beta``): the official
    ``beta=0.01`` makes the last steps nearly always full (DESIGN.md).  Forecaster and order were chosen by measurement on both trained
    reference models (README "Forecasters"): HiCache's Hermite basis at
    order 1 won the Pareto comparison; the official order 2 collapsed on the
    DiT model at long forecast runs.
    """

    speculate: bool = True
    forecaster: str = "hermite"
    order: int = 1
    hermite_sigma: float = 0.5      # HiCache's scale (forecaster="hermite")
    # a number, or "auto": calibrated from the first trajectory's errors (runtime/calibration.py)
    tau0: Union[float, str] = 0.2
    beta: float = 0.3
    warmup: int = 3
    min_speculative: int = 0
    max_speculative: int = 20
    # "budget": a run's errors since its last full step share tau, checks spaced by the evidence
    # (runtime/budget_policy.py); "step": each checked step's own error against tau (SpeCa's rule)
    acceptance: str = "budget"
    check_margin: float = 0.5       # budget: unchecked while the estimate stays under this share of tau
    max_check_gap: int = 5          # budget: at most this many steps between checks
    # budget: full steps by estimate fall on every n-th step of the trajectory (a sample due one
    # before the next such step takes it early), so samples of a batch compute fully together
    align_full_steps: int = 2
    verify_block: int = -1
    # check every k-th token of the verify block's output (passes/token_subset.py: the block's
    # queries, output projection and MLP on those tokens only, keys and values on all of them);
    # 1: every token
    verify_stride: int = 1
    error_metric: str = "rel_l2"
    on_reject: str = "recompute"
    # "auto": ONNX Runtime where it can run on the inputs' device (always on the CPU; on a GPU
    # with onnxruntime-gpu's CUDA provider), else eager; the backend resolves it per graph
    lowering: str = "auto"
    # None: "measure" where lowering="auto" resolves to ONNX Runtime on the CPU at fp32 and the
    # model speculates (the small per-step segments often run faster as PyTorch calls there),
    # else "lowering"
    engine_choice: Optional[str] = None
    # "fp16": the ONNX graphs compute in float16 (onnxruntime, tensorrt); "bf16": the segments
    # compute in bfloat16 around casts (eager, inductor; runtime/precision.py); the runtime around
    # them (cache, forecasts, verification, sampler) keeps the model's dtype either way
    precision: str = "fp32"
    # the dtype the feature cache stores its per-sample rows in (None: as given, which "fp32" is
    # for a float32 model; "bf16": half the cache bytes on any device); forecasts are computed in
    # float32 at least and handed on in the stream's own dtype (runtime/feature_cache.py)
    cache_dtype: Optional[str] = None
    # the speculative step (prologue, forecasts, verify block, per-sample error, epilogue) and
    # the full step as one graph each (runtime/fused_step.py) instead of a sequence of segments;
    # None: on with lowering="inductor" on CUDA inputs at fp32 (runtime/fused_step.py
    # resolve_fuse_steps: mixed on the CPU, dit_digits slower, flux_digits faster), else off
    fuse_steps: Optional[bool] = None
    # sub-batch sizes a fused step is padded up to (static shapes: CUDA graphs); None: powers of
    # two on CUDA, none elsewhere (one compilation with a symbolic batch serves every size)
    step_buckets: Optional[Tuple[int, ...]] = None
    # None: "eager" under lowering="auto" (the best engine that works), "raise" for a named lowering
    on_lowering_error: Optional[str] = None
    timestep_input: Optional[str] = None
    cache_dir: Optional[str] = None
    # called after every denoising step with a dict of that step's figures
    # (generation, trajectory, step, timestep, decisions, full, sample_steps)
    progress: Optional[Callable[[dict], None]] = None
    # names the generation each call belongs to: a callable returning a speca Generation
    # (or None: the thread's / task's own scope).  ``speca_compile.apply`` sets it to the
    # pipeline's, so each pipeline call is one generation; see runtime/generation.py
    generation_key: Optional[Callable[[], object]] = None

    @classmethod
    def parse(cls, options: Optional[Mapping[str, Any]]) -> "Options":
        """Build validated ``Options`` from a user dict (``None`` = defaults)."""
        if options is None:
            return cls()
        if isinstance(options, Options):
            return options
        if not isinstance(options, Mapping):
            raise OptionsError(
                f"options must be a dict, got {type(options).__name__}; "
                f"valid keys: {', '.join(valid_keys())}"
            )
        unknown = sorted(k for k in options if k not in valid_keys())
        if unknown:
            raise OptionsError(
                f"unknown option(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(valid_keys())}"
            )
        result = cls(**dict(options))
        result.validate()
        return result

    def replace(self, **changes: Any) -> "Options":
        """A validated copy with some fields changed.  Fields are taken by reference
        (``dataclasses.asdict`` would deep-copy a callback and everything it holds)."""
        return Options.parse({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                              **changes})

    def validate(self) -> None:
        """Raise ``OptionsError`` naming the first invalid value."""
        _check_type("speculate", self.speculate, bool)
        _check_choice("forecaster", self.forecaster, FORECASTERS)
        _check_int("order", self.order, 0, 8)
        _check_real("hermite_sigma", self.hermite_sigma, 0.0, 10.0, low_open=True)
        if self.tau0 != "auto":
            _check_real("tau0", self.tau0, 0.0, math.inf)
        _check_real("beta", self.beta, 0.0, 1.0, low_open=True)
        _check_int("warmup", self.warmup, 1, None)
        _check_int("min_speculative", self.min_speculative, 0, None)
        _check_int("max_speculative", self.max_speculative, 1, None)
        if self.min_speculative > self.max_speculative:
            raise OptionsError(
                f"min_speculative ({self.min_speculative}) must not exceed "
                f"max_speculative ({self.max_speculative})"
            )
        _check_choice("acceptance", self.acceptance, ACCEPTANCES)
        _check_real("check_margin", self.check_margin, 0.0, 1.0, low_open=True)
        _check_int("max_check_gap", self.max_check_gap, 1, None)
        _check_int("align_full_steps", self.align_full_steps, 1, None)
        _check_type("verify_block", self.verify_block, int)
        _check_int("verify_stride", self.verify_stride, 1, None)
        _check_choice("error_metric", self.error_metric, ERROR_METRICS)
        _check_choice("on_reject", self.on_reject, ON_REJECT)
        if self.lowering in PLANNED_LOWERINGS:
            raise OptionsError(
                f"option 'lowering' got {self.lowering!r}, which is not implemented yet; "
                f"valid: {', '.join(map(repr, LOWERINGS))}"
            )
        _check_choice("lowering", self.lowering, LOWERINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.engine_choice is not None:
            _check_choice("engine_choice", self.engine_choice, ENGINE_CHOICES)
        if self.engine_choice == "measure" and (self.lowering == "eager" or self.precision != "fp32"):
            raise OptionsError(
                f"option 'engine_choice' 'measure' races a lowering against eager at fp32; it got "
                f"lowering {self.lowering!r}, precision {self.precision!r} (use lowering 'auto', "
                "'onnxruntime', 'inductor' or 'tensorrt' at precision 'fp32', or engine_choice 'lowering')")
        check_precision(self)
        _check_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        if self.fuse_steps is not None:
            _check_type("fuse_steps", self.fuse_steps, bool)
        if self.fuse_steps and self.lowering in ("onnxruntime", "tensorrt"):
            raise OptionsError(f"option 'fuse_steps' True needs lowering 'inductor' or 'eager' (whole steps as "
                               f"one program); lowering {self.lowering!r} runs segment by segment")
        if self.fuse_steps and self.precision == "bf16":
            raise OptionsError("option 'fuse_steps' True does not run precision 'bf16' yet (its forecast "
                               "arithmetic would be cast too); bf16 runs segment by segment")
        if self.step_buckets is not None:
            check_buckets(self.step_buckets)
        if self.on_lowering_error is not None:
            _check_choice("on_lowering_error", self.on_lowering_error, ON_LOWERING_ERROR)
        if self.timestep_input is not None:
            _check_type("timestep_input", self.timestep_input, str)
        if self.cache_dir is not None:
            _check_type("cache_dir", self.cache_dir, str)
        if self.progress is not None and not callable(self.progress):
            raise OptionsError(f"option 'progress' must be a callable taking one dict, got {self.progress!r}")
        if self.generation_key is not None and not callable(self.generation_key):
            raise OptionsError(f"option 'generation_key' must be a callable returning a generation or None, "
                               f"got {self.generation_key!r}")


def check_precision(options: "Options") -> None:
    """Which lowerings take which precision.  ``"fp16"`` is a property of the ONNX graphs
    (onnxruntime, tensorrt); the eager and Inductor lowerings do not convert to it (use
    ``model.half()`` there).  ``"bf16"`` is cast around the segment's graph for the eager and
    Inductor lowerings (``runtime/precision.py``); ONNX Runtime's Python binding cannot bind
    bfloat16 tensors.  ``lowering="auto"`` is checked again once resolved: it resolves to
    Inductor (or eager) for bf16 (``engine.auto_lowering``)."""
    if options.lowering == "auto" or options.precision == "fp32":
        return
    if options.precision == "bf16" and options.lowering not in BF16_LOWERINGS:
        raise OptionsError(
            f"option 'precision' 'bf16' needs lowering {' or '.join(map(repr, BF16_LOWERINGS))} "
            f"(or 'auto'): lowering {options.lowering!r} cannot compute in bfloat16 (ONNX Runtime's "
            "Python binding cannot bind bfloat16 tensors); use precision 'fp16' there")
    if options.precision == "fp16" and options.lowering not in HALF_PRECISION_LOWERINGS:
        raise OptionsError(
            f"option 'precision' 'fp16' needs lowering "
            f"{' or '.join(map(repr, HALF_PRECISION_LOWERINGS))} (precision is set in their ONNX graphs); "
            f"lowering {options.lowering!r} runs the model in its own dtype: convert the model instead, "
            "or use precision 'bf16'")


def check_buckets(buckets: Any) -> None:
    """``step_buckets``: a non-empty, strictly increasing sequence of positive ints."""
    if (isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__")
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets)
            or not list(buckets) or list(buckets) != sorted(set(buckets))):
        raise OptionsError(f"option 'step_buckets' must be increasing positive ints, e.g. (1, 2, 4, 8), "
                           f"got {buckets!r}")


def valid_keys() -> tuple:
    """The option names, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Options))


def _check_type(name: str, value: Any, kind: type) -> None:
    # bool is an int subclass: an int option must not accept True/False.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OptionsError(f"option {name!r} must be {kind.__name__}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise OptionsError(
            f"option {name!r} got {value!r}; valid: {', '.join(map(repr, choices))}"
        )


def _check_int(name: str, value: Any, low: int, high: Optional[int]) -> None:
    _check_type(name, value, int)
    if value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise OptionsError(f"option {name!r} got {value}; valid range {span}")


def _check_real(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise OptionsError(f"option {name!r} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        raise OptionsError(f"option {name!r} got {value}; valid range {left}{low}, {high}]")
