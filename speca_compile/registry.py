"""Which Runners belong to which model, for ``stats`` and ``reset``.

The backend is called once per graph and is not told which model the graph
came from, but Dynamo hands it the model's parameters and buffers as graph
inputs.  Each Runner keeps weak references to those, and a model's runners
are the ones holding one of its parameters.  Nothing is stored on the model.

One model may be compiled twice with different options (a benchmark does);
then the runners of one compiled wrapper are told apart by the ``options``
object Dynamo passed the backend, which is the one the wrapper holds.
"""

from __future__ import annotations

import weakref
from typing import List, Sequence

import torch

_RUNNERS: List["weakref.ReferenceType"] = []


_NO_WRAPPER = object()


def register(runner, module_state: Sequence[torch.Tensor], options_source=None) -> None:
    """Remember ``runner`` as compiled from the module owning ``module_state``,
    by the ``torch.compile`` call whose ``options`` object is ``options_source``."""
    runner._owner_refs = [weakref.ref(t) for t in module_state if isinstance(t, torch.Tensor)]
    runner._options_source = options_source
    _RUNNERS[:] = [r for r in _RUNNERS if r() is not None]
    _RUNNERS.append(weakref.ref(runner))


def runners_for(model) -> list:
    """The live Runners compiled from ``model`` (an nn.Module or its compiled wrapper), oldest first."""
    module = getattr(model, "_orig_mod", model)
    source = _options_of_wrapper(model) if module is not model else _NO_WRAPPER
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module or torch.compile'd module, got {type(model).__name__}")
    owned = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    found = []
    for ref in _RUNNERS:
        runner = ref()
        if runner is None:
            continue
        if source is not _NO_WRAPPER and runner._options_source is not source:
            continue
        if any((t := r()) is not None and id(t) in owned for r in runner._owner_refs):
            found.append(runner)
    return found


def _options_of_wrapper(compiled):
    """The ``options`` object a ``torch.compile`` wrapper hands its backend.

    Dynamo keeps it in a chain of backend wrappers (``_torchdynamo_orig_backend``)
    ending in ``torch._TorchCompileWrapper.kwargs``; if that chain changes in
    a future torch, every runner of the module matches, as for a plain module.
    """
    backend = getattr(getattr(compiled, "dynamo_ctx", None), "callback", None)
    for _ in range(16):
        if backend is None:
            break
        kwargs = getattr(backend, "kwargs", None)
        if isinstance(kwargs, dict):
            return kwargs.get("options")
        backend = getattr(backend, "_torchdynamo_orig_backend", None)
    return _NO_WRAPPER
