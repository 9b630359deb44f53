"""The rows of ``speca bench``: how each method is set up on a model and driven over a trajectory.

Every method gets its own module object: diffusers' hooks and cache-dit patch
the module they are enabled on, so peers run on deep copies and the eager
baseline stays untouched.  Peers are configured as their documentation
suggests for a 50-step sampler, at a few strengths so each draws a curve on
the Pareto plot rather than a single point.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import importlib.util
import io
import itertools
from typing import Dict, List, Optional, Tuple

import torch

import speca_compile
from speca_compile import sampling
from speca_compile.errors import OptionsError
from speca_compile.options import Options

# The speca lowerings of the bench (``--lowerings``) and each device's default rows.  On the CPU:
# the eager lowering and "auto", the backend's default (ONNX Runtime with each segment raced
# against eager, runtime/engine_choice.py); ONNX Runtime on every segment and inductor on request
# (inductor: cold compiles dominate short runs).
# On CUDA: eager and Inductor, plus TensorRT where it is importable; ONNX Runtime on request
# (it needs onnxruntime-gpu's CUDA provider there).
CPU_LOWERINGS = ("eager", "auto")
CPU_EXTRA_LOWERINGS = ("onnxruntime", "inductor")
CUDA_LOWERINGS = ("eager", "inductor")
CUDA_EXTRA_LOWERINGS = ("onnxruntime", "tensorrt")
# lowerings whose precision lives in ONNX graphs: fp32 or fp16, never bf16 (ONNX Runtime's Python
# binding cannot bind bfloat16 tensors; options.check_precision refuses the pair as well)
ONNX_LOWERINGS = ("onnxruntime", "tensorrt")
# ``--precision``: what the eager reference, the torch.compile rows and the speca rows compute in
BENCH_PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}    # None: the model's own (float32)
# torch.compile modes whose CUDA graphs reuse output memory across calls
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def default_lowerings(device: str) -> Tuple[str, ...]:
    """The speca lowerings ``speca bench`` runs when ``--lowerings`` is not given."""
    if is_cuda(device):
        return CUDA_LOWERINGS + (("tensorrt",) if tensorrt_importable() else ())
    return CPU_LOWERINGS


def valid_lowerings(device: str) -> Tuple[str, ...]:
    """What ``--lowerings`` accepts on ``device`` (TensorRT needs a CUDA device)."""
    if is_cuda(device):
        return CUDA_LOWERINGS + CUDA_EXTRA_LOWERINGS
    return CPU_LOWERINGS + CPU_EXTRA_LOWERINGS


def default_compile_modes(device: str) -> Tuple[str, ...]:
    """The ``torch.compile`` modes with a row each when ``--compile-modes`` is not given."""
    if is_cuda(device):
        return ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
    return ("default",)


def compile_modes() -> Tuple[str, ...]:
    """The modes this PyTorch's ``torch.compile`` takes."""
    try:
        import torch._inductor

        return tuple(torch._inductor.list_mode_options())
    except Exception:    # an older or trimmed build: the documented four
        return ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_row_name(mode: str) -> str:
    """``torch.compile default`` (the row's name since the bench began) or ``torch.compile mode=M``."""
    return "torch.compile default" if mode == "default" else f"torch.compile mode={mode}"


def cast_floats(value, dtype):
    """``value`` (a tensor, or dicts/lists/tuples of them) with every floating tensor cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


class Method:
    """One row: a module to call plus what to do around calls and trajectories."""

    family = "eager"
    # False: running under a dispatch mode would not measure this method (Dynamo runs
    # compiled code eagerly then, compiled engines run outside PyTorch's dispatcher);
    # the suite counts its eager twin instead
    meterable = True
    full_compute = False   # runs every block at every step (eager, plain compilation)

    def __init__(self, name: str, module: torch.nn.Module, dtype: Optional[torch.dtype] = None):
        self.name = name
        self.module = module
        # None: the sampler's tensors go to the module as they are; a dtype (bf16 rows): the
        # module was converted to it, float inputs are cast to it at each call and the
        # prediction cast back, so the sampler's own arithmetic stays float32 for every row
        self.dtype = dtype

    def call_model(self, ref, x, t, extra) -> torch.Tensor:
        if self.dtype is None or x.dtype == self.dtype:
            return ref.call(self.module, x, t, extra)
        return ref.call(self.module, x.to(self.dtype), t, cast_floats(extra, self.dtype)).to(x.dtype)

    def call_context(self):
        return contextlib.nullcontext()

    def end_trajectory(self) -> None:
        pass

    def metering(self, meter):
        """Context active over a whole metered trajectory; eager-style methods meter per call."""
        return contextlib.nullcontext()

    def meters_per_call(self) -> bool:
        return True

    def sample(self, ref, noise, extra, steps: int, meter=None) -> torch.Tensor:
        def predict(x, t):
            with self.call_context():
                if meter is not None and self.meters_per_call():
                    with meter:
                        return self.call_model(ref, x, t, extra)
                return self.call_model(ref, x, t, extra)

        with torch.no_grad(), (self.metering(meter) if meter is not None else contextlib.nullcontext()):
            out = sampling.denoise(predict, noise, steps, ref.kind)
        self.end_trajectory()
        return out

    def sample_with(self, ref, scheduler: str, noise, extra, steps: int, seed: int) -> torch.Tensor:
        """One trajectory driven by diffusers' scheduler ``scheduler`` (``speca_compile.schedulers``);
        ``seed`` seeds the generator of stochastic schedulers."""
        from speca_compile import schedulers

        def predict(x, t):
            with self.call_context():
                return self.call_model(ref, x, t, extra)

        generator = torch.Generator(device=noise.device).manual_seed(seed)
        with torch.no_grad():
            out = schedulers.denoise_with(schedulers.make_scheduler(scheduler, ref.kind), predict, noise, steps,
                                          generator)
        self.end_trajectory()
        return out


class Eager(Method):
    family = "eager"
    full_compute = True


class Inductor(Method):
    """``torch.compile(module, mode=mode)``: one row per mode (``--compile-modes``)."""

    family = "torch.compile (inductor)"
    meterable = False
    full_compute = True

    def __init__(self, module, mode: str = "default", dtype: Optional[torch.dtype] = None):
        # mode "default" compiles exactly as the row always did (no mode argument)
        compiled = torch.compile(module) if mode == "default" else torch.compile(module, mode=mode)
        super().__init__(compile_row_name(mode), compiled, dtype)
        self.mode = mode
        if mode != "default":
            self.family = f"torch.compile (inductor) mode={mode}"
        # CUDA graphs (on CUDA tensors only; Inductor skips them on the CPU) replay into the same
        # output memory: each call starts a new step, and the prediction is copied out of it
        self.cudagraphs = mode in CUDAGRAPH_MODES

    def call_model(self, ref, x, t, extra) -> torch.Tensor:
        if not self.cudagraphs:
            return super().call_model(ref, x, t, extra)
        torch.compiler.cudagraph_mark_step_begin()
        return super().call_model(ref, x, t, extra).clone()


class Speca(Method):
    family = "speca"

    def __init__(self, name: str, module, options: Dict, variant: str = ""):
        super().__init__(name, torch.compile(module, backend="speca", options=options, dynamic=True))
        self.options = options
        # one Pareto curve per lowering and forecaster setting (variant: e.g. " hermite order=1")
        self.family = f"speca[{options.get('lowering', 'eager')}]{variant}"
        # compiled engines run outside the meter's view; the eager-lowering twin is counted
        self.meterable = options.get("lowering", "eager") == "eager"

    def metering(self, meter):
        return speca_compile.metered(self.module, meter)

    def meters_per_call(self) -> bool:
        return False


class DiffusersHook(Method):
    """diffusers' CacheMixin hooks (Flux and other CacheMixin transformers)."""

    def __init__(self, name: str, family: str, module, config, dtype: Optional[torch.dtype] = None):
        module = copy.deepcopy(module)
        module.enable_cache(config)
        super().__init__(name, module, dtype)
        self.family = family

    def call_context(self):
        return self.module.cache_context("cond")

    def end_trajectory(self) -> None:
        self.module._reset_stateful_cache()


class CacheDit(Method):
    family = "cache-dit DBCache+TaylorSeer"

    def __init__(self, name: str, module, steps: int, threshold: float, dtype: Optional[torch.dtype] = None):
        import cache_dit
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        module = copy.deepcopy(module)
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.enable_cache(
                module,
                cache_config=DBCacheConfig(num_inference_steps=steps, residual_diff_threshold=threshold,
                                           Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4),
                calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=1))
        super().__init__(name, module, dtype)


def supports_diffusers_hooks(module) -> bool:
    try:
        from diffusers.models.cache_utils import CacheMixin
    except ImportError:
        return False
    return isinstance(module, CacheMixin)


def cache_dit_available() -> bool:
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        return False
    return True


def calibrate_mag_ratios(ref, noise, extra, steps: int, module=None,
                         dtype: Optional[torch.dtype] = None) -> List[float]:
    """MagCache needs per-model magnitude ratios: one calibration trajectory, as its docs say."""
    from diffusers import MagCacheConfig

    module = copy.deepcopy(ref.model if module is None else module)
    module.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        Method("calibrate", module, dtype).sample(ref, noise, extra, steps)
    lines = [ln.strip() for ln in printed.getvalue().splitlines() if ln.strip().startswith("[")]
    if not lines:
        raise RuntimeError("MagCache calibration printed no ratios; diffusers' output format changed")
    return [float(v) for v in ast.literal_eval(lines[-1])]


DEFAULTS = Options()   # a row's name lists only the settings that differ from these


# ``acceptance="step"`` rows run SpeCa's per-step rule with the settings it shipped with
# (the defaults before the budget policy), so the bench compares today's policy with it
STEP_POLICY = {"acceptance": "step", "warmup": 3, "min_speculative": 2, "max_speculative": 5}
# each policy's thresholds when ``--tau0`` is not given: their scales differ (a budget sums
# a run's errors; a step threshold bounds one)
POLICY_TAUS = {"budget": (0.1, 0.2, 0.3, 0.4, "auto"), "step": (0.05, 0.1, 0.2)}


def speca_rows(config):
    """(name suffix, options) of every speculative row of ``config``, in row order."""
    rows = []
    for acceptance in config.acceptances:
        preset = STEP_POLICY if acceptance == "step" else {"acceptance": acceptance}
        taus = config.taus or POLICY_TAUS[acceptance]
        for forecaster, order, longest, stride, tau in itertools.product(
                config.forecasters, config.orders, config.max_speculatives or (None,),
                getattr(config, "verify_strides", ()) or (None,), taus):
            options = {**preset, "tau0": tau, "forecaster": forecaster, "order": order}
            if longest is not None:
                options["max_speculative"] = longest
            if stride is not None:
                options["verify_stride"] = stride
            variant = (("" if acceptance == DEFAULTS.acceptance else f" {acceptance}")
                       + ("" if forecaster == DEFAULTS.forecaster else f" {forecaster}")
                       + ("" if order == DEFAULTS.order else f" order={order}")
                       + ("" if longest is None else f" max_spec={longest}")
                       + ("" if stride in (None, DEFAULTS.verify_stride) else f" verify_stride={stride}"))
            rows.append((f"tau0={tau:g}" if not isinstance(tau, str) else f"tau0={tau}", variant, options))
    return rows


@dataclasses.dataclass(frozen=True)
class PlannedRow:
    """One row of the plan: what ``build_methods`` makes of it, without a model."""

    name: str
    kind: str                        # "eager", "speca" or "compile"
    family: str
    options: Optional[Dict] = None   # speca: the backend options
    variant: str = ""                # speca: the settings that differ from the defaults (curve)
    mode: Optional[str] = None       # compile: the torch.compile mode


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Rows the plan leaves out, and why (the report states it)."""

    rows: str
    reason: str


def lowering_skip_reason(lowering: str, precision: str) -> Optional[str]:
    """Why ``lowering``'s speca rows cannot run at ``precision``, or None when they can."""
    if precision == "fp32":
        return None
    if lowering in ONNX_LOWERINGS:
        return (f"lowering {lowering!r} takes no {precision}: its precision lives in its ONNX graphs "
                "(fp32 or fp16)")
    try:
        Options.parse({"lowering": lowering, "precision": precision})
    except OptionsError as exc:
        return f"the speca options refuse precision={precision!r} with lowering={lowering!r}: {exc}"
    return None


def plan_rows(config) -> Tuple[List[PlannedRow], List[Skipped]]:
    """The rows of ``config`` (a BenchConfig) in order, and those left out with their reasons.

    Needs no model and no device: the plan for ``device="cuda"`` can be read on any machine.
    The peers (diffusers' hooks, cache-dit) are not in it: whether they run depends on the
    model and on what is installed; ``build_methods`` puts them before the torch.compile rows.
    """
    precision = getattr(config, "precision", "fp32")
    extra_options = {} if precision == "fp32" else {"precision": precision}
    planned = [PlannedRow("eager", "eager", "eager")]
    skipped: List[Skipped] = []
    for lowering in config.lowerings:
        reason = lowering_skip_reason(lowering, precision)
        if reason is not None:
            skipped.append(Skipped(f"speca[{lowering}] (every setting)", reason))
            continue
        planned.append(PlannedRow(f"speca[{lowering}] full (speculate=False)", "speca", f"speca[{lowering}]",
                                  {"speculate": False, "lowering": lowering, **extra_options}))
        for label, variant, options in speca_rows(config):
            planned.append(PlannedRow(f"speca[{lowering}] {label}{variant}", "speca",
                                      f"speca[{lowering}]{variant}",
                                      {**options, "lowering": lowering, **extra_options}, variant))
    if config.inductor:
        for mode in dict.fromkeys(getattr(config, "compile_modes", ("default",))):
            family = "torch.compile (inductor)" + ("" if mode == "default" else f" mode={mode}")
            planned.append(PlannedRow(compile_row_name(mode), "compile", family, mode=mode))
    return planned, skipped


def build_methods(ref, config, noise, extra) -> List[Method]:
    """Every row for ``ref`` under ``config`` (a BenchConfig): ``plan_rows``, with the peers.

    At ``precision="bf16"`` eager, the torch.compile rows and the peers run a bfloat16 copy of
    the model (float inputs cast at each call); the speca rows compile the float32 model with
    the backend option ``precision="bf16"``, which sets what their lowering computes in."""
    planned, _ = plan_rows(config)
    dtype = DTYPES[getattr(config, "precision", "fp32")]
    base = ref.model if dtype is None else copy.deepcopy(ref.model).to(dtype)
    methods: List[Method] = []
    for row in planned:
        if row.kind == "eager":
            methods.append(Eager(row.name, base, dtype))
        elif row.kind == "speca":
            methods.append(Speca(row.name, ref.model, row.options, row.variant))
    if config.peers and supports_diffusers_hooks(ref.model):
        from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        for threshold in (0.05, 0.1, 0.2):
            methods.append(DiffusersHook(f"diffusers FirstBlockCache threshold={threshold:g}",
                                         "diffusers FirstBlockCache", base,
                                         FirstBlockCacheConfig(threshold=threshold), dtype))
        for interval in (2, 3, 5):
            methods.append(DiffusersHook(
                f"diffusers TaylorSeerCache interval={interval}", "diffusers TaylorSeerCache", base,
                TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=3, max_order=1,
                                      taylor_factors_dtype=torch.float32), dtype))
        ratios = calibrate_mag_ratios(ref, noise, extra, config.steps, base, dtype)
        for threshold in (0.03, 0.06, 0.12):
            methods.append(DiffusersHook(
                f"diffusers MagCache threshold={threshold:g}", "diffusers MagCache", base,
                MagCacheConfig(threshold=threshold, num_inference_steps=config.steps, mag_ratios=ratios), dtype))
    if config.peers and cache_dit_available():
        for threshold in (0.05, 0.1, 0.2):
            methods.append(CacheDit(f"cache-dit DBCache+TaylorSeer rdt={threshold:g}", base,
                                    config.steps, threshold, dtype))
    for row in planned:
        if row.kind == "compile":
            methods.append(Inductor(base, row.mode, dtype))
    return methods
