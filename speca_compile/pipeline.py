"""Drop-in for diffusers pipelines: ``apply`` compiles the pipeline's transformer, ``remove`` undoes it.

``apply(pipe, **options)`` does what a user would write by hand,
``pipe.transformer = torch.compile(pipe.transformer, backend="speca", options=options)``,
after checking the options, and remembers the original module so that
``remove`` can put it back.  Nothing else in the pipeline is touched: no
hooks, no patched methods.  Each pipeline call is one generation for the
runtime: the compiled model's ``generation_key`` option names it by the
schedule the call set (``pipe.scheduler.timesteps``, read, never modified;
runtime/generation.py), so repeated calls need no reset, an interrupted call
is never continued by the next one (an img2img pass at a lower timestep
included), and a change of batch size, resolution or step count is a new
input shape or a new trajectory, never stale cache.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

from speca_compile.errors import SpecaError
from speca_compile.options import Options
from speca_compile.registry import runners_for
from speca_compile.runtime.generation import PipelineGenerations

# compiled wrapper -> the module it wraps, for ``remove``; weak so a dropped pipeline frees both
_APPLIED: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


def apply(pipe, dynamic: Optional[bool] = True, **options):
    """Compile ``pipe.transformer`` with the speca backend; returns ``pipe``.

    ``options`` are the backend's options (``tau0=0.1``, ``lowering="onnxruntime"``, ...),
    checked here so a typo fails now rather than at the first denoising step.
    ``dynamic`` is passed to ``torch.compile``.  The default, ``True``, compiles
    one graph with symbolic batch and token sizes that serves every later
    batch size and resolution (Dynamo still specialises a batch of 1): a
    sample then runs the same graph whatever its batch companions, and a
    change of ``num_images_per_prompt`` or resolution compiles nothing new.
    """
    transformer = _transformer_of(pipe)
    if transformer in _APPLIED:
        raise SpecaError("speca_compile.apply: this pipeline's transformer is already compiled by speca; "
                         "call speca_compile.remove(pipe) first to change options")
    if "generation_key" in options:
        raise SpecaError("speca_compile.apply sets 'generation_key' itself (one generation per pipeline "
                         "call); use speca_compile.generation() to scope calls yourself")
    parsed = Options.parse({**options, "generation_key": PipelineGenerations(pipe)})
    compiled = torch.compile(transformer, backend="speca", options=parsed, dynamic=dynamic)
    _APPLIED[compiled] = transformer
    pipe.transformer = compiled
    return pipe


def remove(pipe):
    """Put back the transformer ``apply`` replaced and end its trajectories; returns ``pipe``."""
    compiled = _transformer_of(pipe)
    original = _APPLIED.pop(compiled, None)
    if original is None:
        raise SpecaError("speca_compile.remove: this pipeline's transformer was not compiled by "
                         "speca_compile.apply")
    for runner in runners_for(compiled):
        runner.reset()
    pipe.transformer = original
    return pipe


def model_of(obj):
    """The module behind ``obj``: a module or compiled wrapper as is, a pipeline's transformer."""
    if isinstance(obj, torch.nn.Module):
        return obj
    if not hasattr(obj, "transformer"):
        raise TypeError(f"expected a torch.nn.Module, a torch.compile'd module or a diffusers pipeline, "
                        f"got {type(obj).__name__}")
    return _transformer_of(obj)


def _transformer_of(pipe) -> torch.nn.Module:
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise SpecaError(f"expected a diffusers pipeline with a `transformer` module (DiT, PixArt, SD3, "
                         f"Flux, ...), got {type(pipe).__name__}"
                         + ("" if transformer is None else f" whose transformer is {type(transformer).__name__}"))
    return transformer
