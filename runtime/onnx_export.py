"""Export one segment to an ONNX file (``torch.onnx.export(..., dynamo=True)``).

The exported graph takes only the segment's tensor inputs: weights become
initializers (so ONNX Runtime can pre-pack them), sizes are read from the
tensor inputs' shapes, and symbolic floats are baked in.  Every dimension the
Dynamo graph kept symbolic (batch, tokens) stays dynamic in the ONNX graph,
so one export serves every batch size and resolution that graph serves.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Sequence

import torch

from speca_compile.errors import LoweringError
from speca_compile.passes.partition import Segment
from speca_compile.runtime.onnx_files import save_program, to_fp16
from speca_compile.runtime.segment_io import SegmentIO


# Part of every engine-cache key: bump it when the export changes what it writes.
EXPORT_VERSION = "1"

# One export at a time in a process.  torch.onnx.export is not thread-safe: it sets module
# globals for its duration (torch.onnx's ``_is_onnx_exporting`` flag, which the first export
# to finish clears under the other) and patches torch._dynamo.config, which is process-wide.
# Engines of different segments may build in different threads at once (each engine only
# serialises its own builds), so their exports queue here; an export holds the GIL for most
# of its time anyway.
_EXPORT_LOCK = threading.Lock()


class TensorOnlySegment(torch.nn.Module):
    """Calls the segment's GraphModule with weights, sizes and constants filled in."""

    def __init__(self, segment: Segment, io_spec: SegmentIO, values: Sequence):
        super().__init__()
        self.graph_module = prepare_for_export(segment.module, io_spec, values, on_cpu=True)
        self.io_spec = io_spec
        self.tensor_positions = io_spec.tensor_inputs
        for i, spec in enumerate(io_spec.inputs):
            if spec.kind == "weight":
                self.register_buffer(f"w{i}", values[i].detach(), persistent=True)

    def forward(self, *tensors):
        given = dict(zip(self.tensor_positions, tensors))
        args: List = []
        for i, spec in enumerate(self.io_spec.inputs):
            if spec.kind == "weight":
                args.append(getattr(self, f"w{i}"))
            elif spec.kind == "tensor":
                args.append(given[i])
            elif spec.kind == "const":
                args.append(spec.value)
            else:
                expr = spec.source
                args.append(expr.evaluate({sym: given[j].shape[axis]
                                           for sym, (j, axis) in expr.symbols.items()}))
        outputs = self.graph_module(*args)
        return tuple(outputs[i] for i in self.io_spec.tensor_outputs)


def prepare_for_export(module: torch.fx.GraphModule, io_spec: SegmentIO, values: Sequence,
                       on_cpu: bool = False):
    """A copy of ``module`` with the rewrites the exporter needs.

    * ``.item()`` of a weight input becomes its number: under dynamic shapes
      Dynamo keeps ``.item()`` of module constants (an eps, a rope theta) as
      nodes, which export as data-dependent values the exporter cannot reason about.
    * ``squeeze(dim)`` of a dimension that is not 1 is dropped: it is a no-op in
      torch, but the exporter (torch 2.13) emits an ONNX Squeeze that fails at
      run time (PixArt's output layer).  A symbolic size is never 1 (Dynamo
      specialises sizes 0 and 1).
    * ``on_cpu``: device arguments (``torch.arange(..., device="cuda")``) become
      the CPU.  ONNX export traces on the CPU whatever device the model is on:
      on CUDA, torch.export takes device-specific paths (``rms_norm`` becomes
      ``aten._fused_rms_norm``, which has no ONNX translation), and the ONNX
      graph holds no devices anyway.
    """
    graph = torch.fx.Graph()
    env = {}
    weights = {}
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node, spec, value in zip(placeholders, io_spec.inputs, values):
        if spec.kind == "weight" and value.numel() == 1:
            weights[node] = value
    for node in module.graph.nodes:
        if node.op == "call_method" and node.target == "item" and node.args[0] in weights:
            env[node] = weights[node.args[0]].item()
            continue
        if _is_noop_squeeze(node):
            env[node] = env[node.args[0]]
            continue
        copied = graph.node_copy(node, lambda a: env[a])
        if on_cpu:
            copied.args, copied.kwargs = _cpu_devices(copied.args), _cpu_devices(copied.kwargs)
        env[node] = copied
    return torch.fx.GraphModule(module, graph, class_name="SpecaFolded")


def _cpu_devices(value):
    if isinstance(value, torch.device):
        return torch.device("cpu")
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_devices(v) for v in value)
    if isinstance(value, dict):
        return {k: _cpu_devices(v) for k, v in value.items()}
    return value


def _is_noop_squeeze(node: torch.fx.Node) -> bool:
    if not ((node.op == "call_method" and node.target == "squeeze")
            or (node.op == "call_function" and node.target is torch.squeeze)):
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    source = node.args[0].meta.get("example_value") if isinstance(node.args[0], torch.fx.Node) else None
    if not isinstance(dim, int) or not isinstance(source, torch.Tensor):
        return False
    size = source.shape[dim]
    return not isinstance(size, int) or size != 1


def input_names(io_spec: SegmentIO) -> List[str]:
    return [io_spec.inputs[i].name for i in io_spec.tensor_inputs]


def export_segment(segment: Segment, io_spec: SegmentIO, values: Sequence, path: Path,
                   precision: str = "fp32") -> None:
    """Write ``segment`` as a self-contained ONNX file at ``path``; ``precision="fp16"``
    computes in half precision inside the graph (see ``to_fp16``)."""
    values = [v.detach().cpu() if isinstance(v, torch.Tensor) else v for v in values]
    module = TensorOnlySegment(segment, io_spec, values).eval()
    tensors = tuple(values[i] for i in io_spec.tensor_inputs)
    dynamic = tuple({axis: torch.export.Dim.AUTO
                     for axis, size in enumerate(io_spec.inputs[i].shape) if size is None}
                    for i in io_spec.tensor_inputs)
    try:
        with _EXPORT_LOCK, torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(module, tensors, dynamo=True, dynamic_shapes=(dynamic,),
                                        input_names=input_names(io_spec), verbose=False,
                                        optimize=True)
            save_program(program, path)
        if precision == "fp16":
            to_fp16(path)
    except Exception as exc:  # the exporter raises many types; name the segment and the op
        raise LoweringError(f"segment {segment.name!r} failed to export to ONNX: "
                            f"{_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# What the exporter writes, measured with torch 2.13, onnxscript 0.7.2 (dynamo=True, verbose=False,
# optimize=True) on every zoo model:
# * stdout: nothing.  Its progress lines ("[torch.onnx] Run decompositions...") print only when
#   ``verbose`` is not False, and onnxscript's optimizer and rewriter print only with their own
#   ``verbose`` (off by default).  So stdout is left alone: redirecting it (contextlib.
#   redirect_stdout swaps the process-wide sys.stdout) swallowed every other thread's output
#   for the length of an export.  Anything a future version prints there is let through.
# * logging, on stderr: warnings of ``torch.onnx._internal.exporter._registration`` ("torchvision
#   is not installed. Skipping torchvision::nms", four per export): the "torch.onnx" logger is
#   raised to ERROR during exports (only exporters log there).
# * warnings: a FutureWarning from torch's pytree (LeafSpec deprecated) per export, attributed
#   to ``copyreg``; deprecation warnings in general, and any warning raised from the exporter's
#   own modules, are ignored during exports.  Warnings attributed to other code (speca's own
#   RuntimeWarnings and UserWarnings, a user's) still show, from whatever thread.
_QUIET_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
_EXPORTER_MODULES = r"(torch|onnx|onnxscript|onnx_ir|onnxruntime)(\.|$)"


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporter's logging and warnings out of the user's output (see above).

    Entered only under ``_EXPORT_LOCK``, so exports never overlap: their saves and restores of
    the process-wide logger level and warnings filters cannot interleave (which
    ``warnings.catch_warnings`` around overlapping exports in two threads would do, restoring out
    of order and possibly leaving the whole process's warnings ignored).  The filters inserted
    are removed by identity, so filters other code added meanwhile stay.  (Where warnings are
    context-aware, the default of Python 3.14's free-threaded build, ``catch_warnings`` is
    local to the thread and is used instead.)"""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        if getattr(sys.flags, "context_aware_warnings", False):
            with warnings.catch_warnings():
                for category in _QUIET_CATEGORIES:
                    warnings.filterwarnings("ignore", category=category)
                warnings.filterwarnings("ignore", module=_EXPORTER_MODULES)
                yield
        else:
            inserted = _insert_filters()
            try:
                yield
            finally:
                _remove_filters(inserted)
    finally:
        logger.setLevel(level)


def _insert_filters() -> list:
    """Put the exporter's ignore filters first; returns the entries, to remove them by identity
    (a user's equal filter is another object and stays)."""
    entries = [("ignore", None, category, None, 0) for category in _QUIET_CATEGORIES]
    entries.append(("ignore", None, Warning, re.compile(_EXPORTER_MODULES), 0))
    warnings.filters[:0] = entries
    _filters_changed()
    return entries


def _remove_filters(entries: list) -> None:
    for entry in entries:
        for i, existing in enumerate(warnings.filters):
            if existing is entry:
                del warnings.filters[i]
                break
    _filters_changed()


def _filters_changed() -> None:
    """Tell the warnings machinery its filters changed (what ``filterwarnings`` does), so the
    per-module registries of warnings already shown are invalidated."""
    changed = getattr(warnings, "_filters_mutated", None)
    if changed is not None:
        changed()
