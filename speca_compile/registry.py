"""Which Runners belong to which model, for ``stats`` and ``reset``.

The backend is called once per graph and is not told which model the graph
came from, but Dynamo hands it the model's parameters and buffers as graph
inputs.  Each Runner keeps weak references to those, and a model's runners
are the ones holding one of its parameters.  Nothing is stored on the model.
"""

from __future__ import annotations

import weakref
from typing import List, Sequence

import torch

_RUNNERS: List["weakref.ReferenceType"] = []


def register(runner, module_state: Sequence[torch.Tensor]) -> None:
    runner._owner_refs = [weakref.ref(t) for t in module_state if isinstance(t, torch.Tensor)]
    _RUNNERS[:] = [r for r in _RUNNERS if r() is not None]
    _RUNNERS.append(weakref.ref(runner))


def runners_for(model) -> list:
    """The live Runners compiled from ``model`` (an nn.Module or its compiled wrapper), oldest first."""
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module or torch.compile'd module, got {type(model).__name__}")
    owned = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    found = []
    for ref in _RUNNERS:
        runner = ref()
        if runner is None:
            continue
        if any((t := r()) is not None and id(t) in owned for r in runner._owner_refs):
            found.append(runner)
    return found
