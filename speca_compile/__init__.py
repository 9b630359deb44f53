"""speca-compile: speculative feature caching for diffusion transformers, as a compiler.

``torch.compile(model, backend="speca", options={...})`` works after
``pip install`` without importing this package (entry point
``torch_dynamo_backends``).  This module adds the runtime controls
(``stats``, ``reset``, ``generation``), the diffusers drop-in (``apply``,
``remove``) and engine bundles (``export``, ``load``).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Hashable, Iterator, Optional, Sequence, Tuple

from speca_compile.bundle.export import export
from speca_compile.bundle.load import load
from speca_compile.errors import BundleError, GraphAnalysisError, OptionsError, SpecaError
from speca_compile.options import Options, valid_keys
from speca_compile.pipeline import apply, model_of, remove
from speca_compile.registry import runners_for
from speca_compile.runtime import generation as _generation
from speca_compile.runtime.generation import Generation

__version__ = "0.1.0"
__all__ = ["apply", "remove", "export", "load", "BundleError", "stats", "reset", "metered", "Options", "valid_keys", "SpecaError", "OptionsError",
           "GraphAnalysisError", "generation", "new_generation", "rows", "end_generation", "Generation", "__version__"]


def new_generation(label: Hashable = None, **overrides) -> Generation:
    """A generation to scope calls with later (``with speca_compile.generation(g):``), e.g.
    one per request of a server that interleaves requests.  Its state lives until
    ``end_generation(g)`` or until nothing refers to ``g`` any more.

    ``overrides``: what this generation runs differently from the compiled model's options,
    ``tau0`` (a number, or "auto": the model's calibrated value) and ``speculate`` (False:
    every step full).  A ValueError names a bad one."""
    return Generation("explicit", label=label, overrides=_generation.check_overrides(overrides))


def end_generation(generation: Generation) -> None:
    """Free ``generation``'s state in every compiled model (at each model's next call)."""
    if not isinstance(generation, Generation):
        raise TypeError(f"end_generation takes a speca Generation, got {type(generation).__name__}")
    generation.ended = True


@contextlib.contextmanager
def generation(resume: Optional[Generation] = None, label: Hashable = None) -> Iterator[Generation]:
    """Scope every speca call made inside the block (in this thread or asyncio task) to one
    generation: one image or batch being denoised, whatever its sampler does with the timesteps.

    ``with speca_compile.generation():`` opens a new generation and ends it with the
    block.  ``with speca_compile.generation(g):`` resumes ``g`` (from ``new_generation``)
    and leaves it open.  Without any scope each thread and asyncio task has its own, and a
    diffusers pipeline compiled by ``apply`` makes each of its calls one generation.
    """
    if resume is not None and not isinstance(resume, Generation):
        raise TypeError(f"speca_compile.generation(resume=...) takes a speca Generation from "
                        f"new_generation(), got {type(resume).__name__}")
    if resume is not None and resume.ended:
        raise SpecaError(f"{resume!r} was ended; open a new generation")
    scope = resume if resume is not None else new_generation(label)
    token = _generation.enter(scope)
    try:
        yield scope
    finally:
        _generation.leave(token)
        if resume is None:
            scope.ended = True


@contextlib.contextmanager
def rows(generations: Sequence[Generation]) -> Iterator[Tuple[Generation, ...]]:
    """Name the generation of every row of the calls made inside the block: one batched call
    whose rows belong to different requests, each at its own timestep (a serving step loop).
    ``generations`` has one entry per row of the call's batch (a request with CFG: its
    generation twice); a call whose batch differs raises ``SpecaError``."""
    named = tuple(generations)
    bad = next((g for g in named if not isinstance(g, Generation)), None)
    if bad is not None:
        raise TypeError(f"speca_compile.rows takes speca Generations, got {type(bad).__name__}")
    ended = next((g for g in named if g.ended), None)
    if ended is not None:
        raise SpecaError(f"speca_compile.rows: {ended!r} was ended")
    token = _generation.enter_rows(named)
    try:
        yield named
    finally:
        _generation.leave_rows(token)


def stats(model) -> Dict:
    """Per-trajectory figures of a compiled model (or of a pipeline ``apply`` compiled):
    full, speculative, rejected sample-steps, per-step decisions and errors, cache bytes.

    ``graphs`` counts the graphs compiled for this model (one per distinct
    input-shape regime); ``trajectories`` lists every graph's trajectories,
    oldest first; ``last_call`` sums the latest generation (one pipeline
    call: its CFG branches and samples).  Decision codes: F full, S forecast
    unchecked, A accepted, R rejected and recomputed, D rejected and deferred.
    """
    runners = runners_for(model_of(model))
    if not runners:
        return {"graphs": 0, "speculation": False,
                "reason": "no graph of this model was compiled by the speca backend yet "
                          "(call the compiled model once)",
                "trajectories": [], "last_call": None}
    per_graph = [r.stats() for r in runners]
    last = per_graph[-1]
    trajectories = [t for g in per_graph for t in g["trajectories"]]
    unplaced = [u for g in per_graph for u in g["unplaced_calls"]["latest"]]
    return {
        "graphs": len(runners),
        "speculation": last["speculation"],
        "reason": last["reason"],
        "blocks": last["blocks"],
        "verify_block": last["verify_block"],
        "lowering": last["lowering"],
        # the threshold scale of each graph: the tau0 option, or what tau0="auto" calibrated
        "threshold": last["threshold"],
        "thresholds": [g["threshold"] for g in per_graph],
        "calls": sum(g["calls"] for g in per_graph),
        "trajectories": trajectories,
        "last_call": _last_call(trajectories),
        # calls whose timesteps matched no batch: run full, each with its reason
        "unplaced_calls": {"count": sum(g["unplaced_calls"]["count"] for g in per_graph), "latest": unplaced},
        # steps whose rows took several paths: with one prologue and epilogue over all rows
        # (shared_ends), or one graph per path (per_path: the side values could not be cut to rows)
        "mixed_steps": {k: sum(g["mixed_steps"][k] for g in per_graph) for k in ("shared_ends", "per_path")},
        "notes": [n for g in per_graph for n in g["notes"]],
        # per graph: the step programs built (runtime/fused_step.py), or why steps run segment by segment
        "fused_steps": [g["fused_steps"] for g in per_graph],
        "per_graph": per_graph,
    }


def _last_call(trajectories) -> Optional[Dict]:
    if not trajectories:
        return None
    generation = max(t["generation"] for t in trajectories)
    mine = [t for t in trajectories if t["generation"] == generation]
    sample_steps = sum(t["steps"] * t["batch_size"] for t in mine)
    full = sum(t["full"] for t in mine)
    return {"generation": generation, "trajectories": len(mine), "steps": max(t["steps"] for t in mine),
            "samples": sum(t["batch_size"] for t in mine), "sample_steps": sample_steps, "full": full,
            "speculative": sum(t["speculative"] for t in mine), "rejected": sum(t["rejected"] for t in mine),
            "full_fraction": full / sample_steps if sample_steps else None}


def reset(model) -> None:
    """End every trajectory of ``model`` (or a pipeline's transformer): the next call starts clean."""
    for runner in runners_for(model_of(model)):
        runner.reset()


@contextlib.contextmanager
def metered(model, meter):
    """Enter ``meter`` (a torch dispatch mode, e.g. ``bench.meter.OpMeter``) inside every
    compiled call of ``model`` while the block is active.

    A dispatch mode entered around a compiled model makes Dynamo run it eagerly,
    so measuring what the speca runtime executes has to happen inside it.
    Call the compiled model once before, so its graphs exist.
    """
    runners = runners_for(model)
    if not runners:
        raise SpecaError("metered: no graph of this model was compiled by the speca backend yet "
                         "(call the compiled model once first)")
    for runner in runners:
        runner.meter = meter
    try:
        yield meter
    finally:
        for runner in runners:
            runner.meter = None
