"""speca-compile: speculative feature caching for diffusion transformers, as a compiler.

``torch.compile(model, backend="speca", options={...})`` works after
``pip install`` without importing this package (entry point
``torch_dynamo_backends``).  This module adds the runtime controls:
``stats`` and ``reset``.
"""

from __future__ import annotations

import contextlib
from typing import Dict

from speca_compile.errors import GraphAnalysisError, OptionsError, SpecaError
from speca_compile.options import Options, valid_keys
from speca_compile.registry import runners_for

__version__ = "0.1.0"
__all__ = ["stats", "reset", "metered", "Options", "valid_keys", "SpecaError", "OptionsError",
           "GraphAnalysisError", "__version__"]


def stats(model) -> Dict:
    """Per-trajectory figures of a compiled model: full, speculative, rejected
    sample-steps, per-step decisions and errors, cache bytes.

    ``graphs`` counts the graphs compiled for this model (one per distinct
    input-shape regime); ``trajectories`` lists every graph's trajectories,
    oldest first.  Decision codes: F full, S forecast unchecked, A accepted,
    R rejected and recomputed, D rejected and deferred.
    """
    runners = runners_for(model)
    if not runners:
        return {"graphs": 0, "speculation": False,
                "reason": "no graph of this model was compiled by the speca backend yet "
                          "(call the compiled model once)",
                "trajectories": []}
    per_graph = [r.stats() for r in runners]
    last = per_graph[-1]
    return {
        "graphs": len(runners),
        "speculation": last["speculation"],
        "reason": last["reason"],
        "blocks": last["blocks"],
        "verify_block": last["verify_block"],
        "lowering": last["lowering"],
        "calls": sum(g["calls"] for g in per_graph),
        "trajectories": [t for g in per_graph for t in g["trajectories"]],
        "per_graph": per_graph,
    }


def reset(model) -> None:
    """End every trajectory of ``model``: the next call starts from a clean cache."""
    for runner in runners_for(model):
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
