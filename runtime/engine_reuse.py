"""Reusing a shape-general ONNX file for a segment of a new Dynamo graph of the same model.

Dynamo compiles a new graph when a call breaks the guards of the ones it has:
a batch of 1 (it specialises size 1) or a size it had specialised.  Each new
graph's segments would be exported to ONNX again, although a file exported
with dynamic axes for an earlier graph of the same model already computes
them.  Two segments belong to one *family* when their graphs call the same
operations in the same order (integer arguments, i.e. sizes, aside), with the
same weights, tensor-input dtypes and ranks, baked-in constants and options.

A family member exported with a dynamic axis leaves a pointer in the engine
cache; a later member whose own file is not cached tries that file first and
keeps it only if, on the call's real inputs, its outputs match the segment
run eagerly (``engine_check.compare``, within the bound of the engine's
precision).  That check is the variant's first-call check too: a reused file
is not compared twice, and the verdict is kept beside the file for later
processes.  A structural match alone never replaces an export; a failed check
exports as before and says so.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
from torch import fx

from speca_compile.passes.find_blocks import is_scalar
from speca_compile.runtime.engine_cache import EngineCache, cache_key
from speca_compile.runtime.engine_check import FP32_BOUND, Verdict, compare
from speca_compile.runtime.segment_io import SegmentIO, baked_values

REUSE_TOLERANCE = FP32_BOUND   # float32 files; the engine passes the bound of its precision


def structure(gm: fx.GraphModule) -> str:
    """The tensor calls of ``gm`` in order, sizes masked: a size is an int in a graph Dynamo
    specialised and a symbolic node (with the arithmetic computing it) in a dynamic one."""
    parts = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or is_scalar(node):
            continue
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
        args = fx.node.map_aggregate(_keep_slice_steps((node.args, node.kwargs)), _mask)
        parts.append(f"{node.op}:{target}:{args!r}")
    return "\n".join(parts)


def _keep_slice_steps(value):
    """Slices as tuples whose step is kept: a step is never a size (``x[:, ::3]`` and
    ``x[:, ::4]`` are different graphs: passes/token_subset.py), bounds may be."""
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, f"step={value.step!r}")
    if isinstance(value, (tuple, list)):
        return type(value)(_keep_slice_steps(v) for v in value)
    if isinstance(value, dict):
        return {k: _keep_slice_steps(v) for k, v in value.items()}
    return value


def _mask(value):
    if isinstance(value, fx.Node):
        return "i" if is_scalar(value) else "%"
    if type(value) is int:
        return "i"
    return value


def family_key(gm: fx.GraphModule, io_spec: SegmentIO, values: Sequence, *identity: str) -> str:
    """What a reusable file must share with the segment: its calls, tensor-input dtypes and ranks,
    baked-in constants, and ``identity`` (weights digest, options, tool versions)."""
    tensors = [f"{s.dtype}:{len(s.shape)}" for s in io_spec.inputs if s.kind == "tensor"]
    return cache_key("onnx-family", structure(gm), "|".join(tensors), repr(baked_values(io_spec, values)),
                     f"outputs={len(io_spec.tensor_outputs)}", *identity)


def is_shape_general(io_spec: SegmentIO) -> bool:
    return any(dim is None for s in io_spec.inputs if s.kind == "tensor" for dim in s.shape)


def remember(cache: EngineCache, family: str, key: str) -> None:
    """Point ``family`` at the cached file ``key`` (a shape-general export).

    Written atomically under the pointer's lock (``EngineCache.write_text``): processes
    sharing the cache directory may write it at the same time, and one reading it meanwhile
    must see a whole key, not an empty or half-written file."""
    cache.write_text(family, ".family", key + "\n")


def candidate(cache: EngineCache, family: str, suffix: str) -> Optional[str]:
    """The cache key of a shape-general file of ``family``, if one was remembered and is still there."""
    pointer = cache.path(family, ".family")
    try:
        key = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return key if key and cache.lookup(key, suffix) is not None else None


def agrees_with_eager(segment_module, inputs: Sequence, io_spec: SegmentIO, outputs: List[torch.Tensor],
                      bound: float = REUSE_TOLERANCE) -> Verdict:
    """Whether ``outputs`` (the engine's tensor outputs) match the segment run eagerly on ``inputs``:
    the first-call check's own comparison (engine_check), so a file that passed here is checked."""
    with torch.no_grad():
        expected = list(segment_module(*inputs))
    verdict = compare([expected[i] for i in io_spec.tensor_outputs], list(outputs), bound)
    return dataclasses.replace(verdict, source="reuse")
