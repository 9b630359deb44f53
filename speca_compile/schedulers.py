"""Sampling loops driven by diffusers' own schedulers, for tests and benchmarks.

``sampling.py`` has our two hand-written loops (DDIM, flow Euler).  Users
sample with diffusers' schedulers, whose call patterns the runtime has to
follow: multistep solvers (DPM-Solver++ 2M, UniPC) call once per step,
singlestep DPM-Solver and KDPM2 insert intermediate timesteps, Heun-type
samplers call the model twice at one timestep (predictor and corrector),
ancestral samplers add fresh noise at every step.

``make_scheduler(name, kind)`` builds one with a config that matches how the
reference models were trained (``reference/train.py``):

* ``kind="ddim"`` (``dit_digits``, epsilon prediction): the linear beta
  schedule of ``sampling.alphas_cumprod`` (1e-4 .. 0.02 over 1000 training
  steps), integer training timesteps 0..999 given to the model as they are.
  DDIM is configured as ``sampling.ddim_timesteps`` / ``ddim_step``
  ("leading" spacing with offset 1, no clipping, last step to alpha 1), so it
  reproduces ``sampling.denoise(..., "ddim")``.
* ``kind="flow"`` (``flux_digits``, velocity ``noise - x0``, trained on
  sigma in [0, 1]): the flow-matching sigmas shifted as in
  ``sampling.flow_sigmas`` (shift 3).  diffusers' FlowMatch timesteps are
  ``sigma * num_train_timesteps``; the model is called with ``t = sigma``.

``denoise_with(scheduler, model_fn, noise, steps, generator)`` runs the
standard diffusers loop (``set_timesteps``, then at every entry of
``scheduler.timesteps``: ``scale_model_input``, the model call, ``step``)
inside one ``speca_compile.generation()``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional, Tuple

import torch

import speca_compile

TRAIN_STEPS = 1000
FLOW_SHIFT = 3.0            # sampling.flow_sigmas' default

# The training schedule of the epsilon model (sampling.alphas_cumprod, reference/train.py)
EPSILON_CONFIG = {"num_train_timesteps": TRAIN_STEPS, "beta_start": 1e-4, "beta_end": 0.02,
                  "beta_schedule": "linear", "prediction_type": "epsilon"}
FLOW_CONFIG = {"num_train_timesteps": TRAIN_STEPS, "shift": FLOW_SHIFT}

# name -> (diffusers class, model kind, extra config, inference steps it is usually used with)
SCHEDULERS: Dict[str, Tuple[str, str, Dict, int]] = {
    "ddim": ("DDIMScheduler", "ddim",
             {"clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "leading"}, 50),
    "dpm2m": ("DPMSolverMultistepScheduler", "ddim", {"solver_order": 2, "algorithm_type": "dpmsolver++"}, 30),
    "dpm2s": ("DPMSolverSinglestepScheduler", "ddim", {"solver_order": 2, "lower_order_final": True}, 30),
    "heun": ("HeunDiscreteScheduler", "ddim", {}, 25),
    "kdpm2": ("KDPM2DiscreteScheduler", "ddim", {}, 25),
    "unipc": ("UniPCMultistepScheduler", "ddim", {"solver_order": 2}, 30),
    "euler_a": ("EulerAncestralDiscreteScheduler", "ddim", {}, 30),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", "flow", {}, 30),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", "flow", {}, 25),
}
NAMES = tuple(SCHEDULERS)
STOCHASTIC = ("euler_a",)   # step draws noise: pass a seeded generator


def names_for(kind: str) -> Tuple[str, ...]:
    """The schedulers that drive a model of ``kind`` ("ddim": epsilon prediction, "flow")."""
    return tuple(n for n, spec in SCHEDULERS.items() if spec[1] == kind)


def usual_steps(name: str) -> int:
    """Inference steps ``name`` is usually run with (model calls: see ``model_calls``)."""
    return _spec(name)[3]


def _spec(name: str):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(NAMES)}")
    return SCHEDULERS[name]


def make_scheduler(name: str, kind: str):
    """A fresh diffusers scheduler ``name`` configured for a model of ``kind``."""
    cls_name, wants, extra, _ = _spec(name)
    if kind not in ("ddim", "flow"):
        raise ValueError(f"unknown model kind {kind!r}; valid: 'ddim', 'flow'")
    if wants != kind:
        raise ValueError(f"scheduler {name!r} drives {wants!r} models, not {kind!r}; "
                         f"valid for {kind!r}: {', '.join(names_for(kind))}")
    import diffusers

    base = EPSILON_CONFIG if kind == "ddim" else FLOW_CONFIG
    return getattr(diffusers, cls_name)(**base, **extra)


def is_flow(scheduler) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def model_time(scheduler, t) -> float:
    """What the model is given at scheduler timestep ``t``: the training timestep for the
    epsilon schedulers, sigma = t / num_train_timesteps for the flow-matching ones."""
    t = float(t)
    return t / scheduler.config.num_train_timesteps if is_flow(scheduler) else t


def model_calls(scheduler, steps: int) -> int:
    """How many times ``denoise_with`` calls the model for ``steps`` inference steps."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def denoise_with(scheduler, model_fn: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
                 steps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One whole generation with ``scheduler``: ``model_fn(x, t)`` returns eps (epsilon
    schedulers) or velocity (flow), ``t`` as ``model_time`` gives it.  ``generator`` is handed
    to ``step`` where the scheduler draws noise (ancestral samplers); seed it for repeatable runs.
    """
    scheduler.set_timesteps(steps, device=noise.device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": generator} if takes_generator and generator is not None else {}
    # the FlowMatch schedulers have neither (their noise is the sample at sigma 1)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    with speca_compile.generation():
        for t in scheduler.timesteps:
            out = model_fn(scale(x, t), model_time(scheduler, t))
            x = scheduler.step(out, t, x, return_dict=False, **extra)[0]
    return x
