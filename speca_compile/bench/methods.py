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
import io
import itertools
from typing import Dict, List

import torch

import speca_compile
from speca_compile import sampling
from speca_compile.options import Options


class Method:
    """One row: a module to call plus what to do around calls and trajectories."""

    family = "eager"
    # False: running under a dispatch mode would not measure this method (Dynamo runs
    # compiled code eagerly then, compiled engines run outside PyTorch's dispatcher);
    # the suite counts its eager twin instead
    meterable = True
    full_compute = False   # runs every block at every step (eager, plain compilation)

    def __init__(self, name: str, module: torch.nn.Module):
        self.name = name
        self.module = module

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
                        return ref.call(self.module, x, t, extra)
                return ref.call(self.module, x, t, extra)

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
                return ref.call(self.module, x, t, extra)

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
    family = "torch.compile (inductor)"
    meterable = False
    full_compute = True

    def __init__(self, module):
        super().__init__("torch.compile default", torch.compile(module))


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

    def __init__(self, name: str, family: str, module, config):
        module = copy.deepcopy(module)
        module.enable_cache(config)
        super().__init__(name, module)
        self.family = family

    def call_context(self):
        return self.module.cache_context("cond")

    def end_trajectory(self) -> None:
        self.module._reset_stateful_cache()


class CacheDit(Method):
    family = "cache-dit DBCache+TaylorSeer"

    def __init__(self, name: str, module, steps: int, threshold: float):
        import cache_dit
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        module = copy.deepcopy(module)
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.enable_cache(
                module,
                cache_config=DBCacheConfig(num_inference_steps=steps, residual_diff_threshold=threshold,
                                           Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4),
                calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=1))
        super().__init__(name, module)


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


def calibrate_mag_ratios(ref, noise, extra, steps: int) -> List[float]:
    """MagCache needs per-model magnitude ratios: one calibration trajectory, as its docs say."""
    from diffusers import MagCacheConfig

    module = copy.deepcopy(ref.model)
    module.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        Method("calibrate", module).sample(ref, noise, extra, steps)
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
        for forecaster, order, longest, tau in itertools.product(
                config.forecasters, config.orders, config.max_speculatives or (None,), taus):
            options = {**preset, "tau0": tau, "forecaster": forecaster, "order": order}
            if longest is not None:
                options["max_speculative"] = longest
            variant = (("" if acceptance == DEFAULTS.acceptance else f" {acceptance}")
                       + ("" if forecaster == DEFAULTS.forecaster else f" {forecaster}")
                       + ("" if order == DEFAULTS.order else f" order={order}")
                       + ("" if longest is None else f" max_spec={longest}"))
            rows.append((f"tau0={tau:g}" if not isinstance(tau, str) else f"tau0={tau}", variant, options))
    return rows


def build_methods(ref, config, noise, extra) -> List[Method]:
    """Every row for ``ref`` under ``config`` (a BenchConfig)."""
    methods: List[Method] = [Eager("eager", ref.model)]
    for lowering in config.lowerings:
        methods.append(Speca(f"speca[{lowering}] full (speculate=False)", ref.model,
                             {"speculate": False, "lowering": lowering}))
        for label, variant, options in speca_rows(config):
            methods.append(Speca(f"speca[{lowering}] {label}{variant}", ref.model,
                                 {**options, "lowering": lowering}, variant))
    if config.peers and supports_diffusers_hooks(ref.model):
        from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        for threshold in (0.05, 0.1, 0.2):
            methods.append(DiffusersHook(f"diffusers FirstBlockCache threshold={threshold:g}",
                                         "diffusers FirstBlockCache", ref.model,
                                         FirstBlockCacheConfig(threshold=threshold)))
        for interval in (2, 3, 5):
            methods.append(DiffusersHook(
                f"diffusers TaylorSeerCache interval={interval}", "diffusers TaylorSeerCache", ref.model,
                TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=3, max_order=1,
                                      taylor_factors_dtype=torch.float32)))
        ratios = calibrate_mag_ratios(ref, noise, extra, config.steps)
        for threshold in (0.03, 0.06, 0.12):
            methods.append(DiffusersHook(
                f"diffusers MagCache threshold={threshold:g}", "diffusers MagCache", ref.model,
                MagCacheConfig(threshold=threshold, num_inference_steps=config.steps, mag_ratios=ratios)))
    if config.peers and cache_dit_available():
        for threshold in (0.05, 0.1, 0.2):
            methods.append(CacheDit(f"cache-dit DBCache+TaylorSeer rdt={threshold:g}", ref.model,
                                    config.steps, threshold))
    if config.inductor:
        methods.append(Inductor(ref.model))
    return methods
