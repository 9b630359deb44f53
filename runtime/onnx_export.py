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
import math
import operator
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Sequence

import torch

from speca_compile.errors import LoweringError
from speca_compile.passes.partition import Segment
from speca_compile.runtime.onnx_cpu_rewrites import rewrite_file
from speca_compile.runtime.onnx_files import save_program, to_fp16
from speca_compile.runtime.segment_io import SegmentIO


# Part of every engine-cache key: bump it when the export changes what it writes.
EXPORT_VERSION = "3"   # 2: the ONNX rewrites of prepare_for_export (issue 16); 3: onnx_cpu_rewrites

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
        self.graph_module = prepare_for_export(segment.module, io_spec, values, on_cpu=True, for_onnx=True)
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
                       on_cpu: bool = False, for_onnx: bool = False):
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

    With ``for_onnx`` (the ONNX export), also:

    * nodes that depend on no input are computed by torch and baked in (``_input_free_values``).
    * an epsilon added to a tensor (a factor near 1) becomes a one-element tensor constant, which
      onnxscript's optimizer does not drop as a no-op (``_near_identity_constant``).
    * ``sin`` and ``cos`` of float32 tensors are computed in float64 (``_is_float32_trig``).
    * attention with a mask zeroes the query rows the mask hides everything from, as torch does
      (``attention_masked_rows_zero``).
    * ``split`` by one size where that size or the split axis is symbolic becomes one slice per
      chunk (``split_into``; see ``_split_count``).
    """
    graph = torch.fx.Graph()
    env = {}
    weights = {}
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node, spec, value in zip(placeholders, io_spec.inputs, values):
        if spec.kind == "weight" and value.numel() == 1:
            weights[node] = value
    folded = _input_free_values(module, io_spec, on_cpu) if for_onnx else {}
    constants = {}
    for node in module.graph.nodes:
        if node.op == "call_method" and node.target == "item" and node.args[0] in weights:
            env[node] = weights[node.args[0]].item()
            continue
        if node in folded:
            env[node] = _constant(graph, constants, node, folded[node])
            continue
        if _is_noop_squeeze(node):
            env[node] = env[node.args[0]]
            continue
        if for_onnx:
            rewritten = _onnx_rewrite(graph, node, env)
            if rewritten is not None:
                env[node] = rewritten
                continue
        copied = graph.node_copy(node, lambda a: env[a])
        if on_cpu:
            copied.args, copied.kwargs = _cpu_devices(copied.args), _cpu_devices(copied.kwargs)
        env[node] = copied
    for attr in [n for n in graph.nodes if n.op == "get_attr" and n.target in constants and not n.users]:
        del constants[attr.target]          # folded, and so were all its users
        graph.erase_node(attr)
    if not constants:
        return torch.fx.GraphModule(module, graph, class_name="SpecaFolded")
    root = {n.target: _get_attr(module, n.target) for n in graph.nodes
            if n.op == "get_attr" and n.target not in constants}
    return torch.fx.GraphModule({**root, **constants}, graph, class_name="SpecaFolded")


def _get_attr(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _onnx_rewrite(graph: torch.fx.Graph, node: torch.fx.Node, env):
    """``node`` rewritten for the ONNX exporter (see ``prepare_for_export``), or ``None``."""
    if _near_identity_constant(node):
        return _with_tensor_constant(graph, node, env)
    if _is_masked_attention(node):
        new = graph.call_function(attention_masked_rows_zero, fx_map(node.args, env), fx_map(node.kwargs, env))
    elif _is_float32_trig(node):
        new = graph.call_function(_TRIG_IN_FLOAT64[_trig_name(node)], (env[node.args[0]],))
    else:
        pieces = _split_count(node)
        if pieces is None:
            return None
        source, size, dim = _split_args(node)
        new = graph.call_function(split_into, (env[source], fx_map(size, env), dim, pieces))
    new.meta = dict(node.meta)
    return new


# a constant computed by torch at export is kept up to this many elements (else the exporter's graph
# computes it, as before)
_FOLD_LIMIT = 1 << 20
_NOT_FOLDED = ("rand", "randn", "randint", "randperm", "normal", "bernoulli", "dropout", "multinomial",
               "empty", "item", "tolist")


def _input_free_values(module: torch.fx.GraphModule, io_spec: SegmentIO, on_cpu: bool):
    """The values of the nodes that depend on no input but baked-in numbers, computed by torch.

    Such nodes (diffusers' sinusoidal frequency tables: ``exp(-log(10000) * arange(half) / half)``)
    would otherwise be computed by onnxscript's constant folding or by ONNX Runtime, whose float32
    ``Exp`` differs from torch's in the last bit; times a timestep of 1000 and a scale of 1000
    (AuraFlow) one ulp moves a sine argument of 1e6 by 0.06, and the embedding came out 1e-2 off."""
    known = {}
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, io_spec.inputs):
        if spec.kind == "const":
            known[node] = spec.value
    values = {}
    for node in module.graph.nodes:
        if node.op not in ("call_function", "call_method") or any(a not in known for a in node.all_input_nodes):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name.endswith("_") or any(name.startswith(prefix) for prefix in _NOT_FOLDED) or \
                node.target in (operator.setitem,):
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: known[a])
        if on_cpu:
            args, kwargs = _cpu_devices(args), _cpu_devices(kwargs)
        try:
            with torch.no_grad():
                value = (node.target(*args, **kwargs) if node.op == "call_function"
                         else getattr(args[0], node.target)(*args[1:], **kwargs))
        except Exception:  # noqa: BLE001  (not computable here: left to the exporter)
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() > _FOLD_LIMIT or value.requires_grad or _mutated(node):
                continue
            values[node] = value
        elif type(value) in (int, float, bool):
            values[node] = value
        else:
            continue
        known[node] = value
    return values


def _mutating(node: torch.fx.Node) -> bool:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.target is operator.setitem or (name.endswith("_") and not name.startswith("_"))


def _mutated(node: torch.fx.Node, depth: int = 2) -> bool:
    """Whether a user of ``node`` (or of a view of it, two levels down) writes into it: a tensor
    filled in place (``torch.zeros(...)`` then ``mask[i, :n] = True``) is not a constant."""
    return any(_mutating(u) or (depth > 0 and _mutated(u, depth - 1)) for u in node.users)


def _constant(graph: torch.fx.Graph, constants: dict, node: torch.fx.Node, value):
    """A folded value in the new graph: a number as itself, a tensor as a constant attribute."""
    if not isinstance(value, torch.Tensor):
        return value
    name = f"_speca_constant_{len(constants)}"
    constants[name] = value
    attr = graph.get_attr(name)
    attr.meta = dict(node.meta)
    return attr


_ADDS = (operator.add, torch.add, operator.sub, torch.sub, operator.iadd, operator.isub)
_MULS = (operator.mul, torch.mul, operator.truediv, torch.div, operator.imul, operator.itruediv)
_METHODS = {"add": _ADDS, "add_": _ADDS, "sub": _ADDS, "sub_": _ADDS, "mul": _MULS, "mul_": _MULS,
            "div": _MULS, "div_": _MULS}


def _near_identity_constant(node: torch.fx.Node) -> bool:
    """An add or subtract of a tiny non-zero number (an epsilon: Sana's linear attention divides by
    ``x + 1e-15``), or a multiply or divide by a number near but not 1, between a tensor and a Python
    float.  onnxscript's no-op rules (0.7: ``x + 0 -> x``, ``x * 1 -> x``) match any scalar constant
    within ``math.isclose(c, 0, abs_tol=1e-8)`` or ``rel_tol=1e-5`` of 1 and drop the op: Sana's
    ``0 / (0 + 1e-15)`` became ``0 / 0``, NaN.  A one-element 1-D constant does not match them."""
    if node.op == "call_function":
        kind = "add" if node.target in _ADDS else "mul" if node.target in _MULS else None
    elif node.op == "call_method":
        kind = "add" if _METHODS.get(node.target) is _ADDS else "mul" if node.target in _METHODS else None
    else:
        kind = None
    if kind is None or len(node.args) != 2 or node.kwargs:
        return False
    tensor, number = node.args
    if isinstance(tensor, (int, float)) and node.target in (operator.add, torch.add, operator.mul, torch.mul):
        tensor, number = number, tensor
    if type(number) is not float or not isinstance(tensor, torch.fx.Node):
        return False
    meta = tensor.meta.get("example_value")
    if not isinstance(meta, torch.Tensor) or meta.dim() == 0 or not meta.is_floating_point():
        return False
    if kind == "add":
        return number != 0.0 and math.isclose(number, 0.0, abs_tol=1e-8)
    return number != 1.0 and math.isclose(number, 1.0, rel_tol=1e-5, abs_tol=1e-8)


def _with_tensor_constant(graph: torch.fx.Graph, node: torch.fx.Node, env) -> torch.fx.Node:
    tensor, number = node.args
    swapped = not isinstance(tensor, torch.fx.Node)
    if swapped:
        tensor, number = number, tensor
    dtype = tensor.meta["example_value"].dtype
    constant = graph.call_function(torch.full, ((1,), number), {"dtype": dtype})
    args = (constant, env[tensor]) if swapped else (env[tensor], constant)
    copied = graph.create_node(node.op, node.target, args, {})
    copied.meta = dict(node.meta)
    return copied


def sin_in_float64(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x.double()).to(x.dtype)


def cos_in_float64(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x.double()).to(x.dtype)


_TRIG_IN_FLOAT64 = {"sin": sin_in_float64, "cos": cos_in_float64}


def _trig_name(node: torch.fx.Node):
    if node.op == "call_method" and node.target in _TRIG_IN_FLOAT64:
        return node.target
    if node.op == "call_function" and node.target in (torch.sin, torch.cos):
        return node.target.__name__
    return None


def _is_float32_trig(node: torch.fx.Node) -> bool:
    """``sin`` or ``cos`` of a float32 tensor.  ONNX Runtime's float32 Sin and Cos (CPU) lose
    accuracy on large arguments, where torch's are accurate: AuraFlow's timestep embedding (scale
    1000, timesteps up to 1000, so arguments up to 1e6) came out 1e-2 off, then the whole output.
    Computed in float64 and rounded back they agree with torch's to the last bit or so."""
    if _trig_name(node) is None or len(node.args) != 1 or node.kwargs:
        return False
    meta = node.args[0].meta.get("example_value") if isinstance(node.args[0], torch.fx.Node) else None
    return isinstance(meta, torch.Tensor) and meta.dtype == torch.float32


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _is_masked_attention(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target is not _SDPA:
        return False
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    return isinstance(mask, torch.fx.Node)


def attention_masked_rows_zero(query, key, value, attn_mask=None, *args, **kwargs):
    """``scaled_dot_product_attention`` as torch computes it for a query row the mask hides
    everything from: zeros.  The exporter writes softmax over the masked scores, which gives such
    a row the mean of the values (boolean mask) or NaN (float mask of -inf): HunyuanVideo 1.5
    masks its absent image tokens, rows and columns."""
    out = _SDPA(query, key, value, attn_mask, *args, **kwargs)
    visible = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
    return torch.where(visible.any(dim=-1, keepdim=True), out, torch.zeros((), dtype=out.dtype))


def fx_map(value, env):
    return torch.fx.node.map_arg(value, lambda a: env[a])


def split_into(tensor: torch.Tensor, size, dim: int, pieces: int):
    """``tensor.split(size, dim)`` when the graph knows it gives ``pieces`` chunks: one slice each
    (the last one to the end), which the exporter writes as fixed Slice nodes."""
    return tuple(torch.ops.aten.slice.Tensor(tensor, dim, i * size,
                                             (i + 1) * size if i < pieces - 1 else sys.maxsize)
                 for i in range(pieces))


_SPLITS = (torch.split, torch.functional.split, torch.Tensor.split)


def _split_args(node: torch.fx.Node):
    args = list(node.args) + [None] * 3
    source = args[0]
    size = node.kwargs.get("split_size_or_sections", node.kwargs.get("split_size", args[1]))
    dim = node.kwargs.get("dim", args[2] if args[2] is not None else 0)
    return source, size, dim


def _split_count(node: torch.fx.Node):
    """The number of chunks of a ``split`` by one size whose size or split axis is symbolic, else
    ``None``.  The exporter writes such a split as an ONNX SplitToSequence, on which onnxscript's
    constant folding (0.7) fails ("'NoneType' object has no attribute 'ndim'": the original DiT's
    ``forward_with_cfg`` splits its output in ``len(eps) // 2`` halves); Dynamo fixed the count."""
    if not ((node.op == "call_method" and node.target == "split")
            or (node.op == "call_function" and node.target in _SPLITS)):
        return None
    source, size, dim = _split_args(node)
    value = source.meta.get("example_value") if isinstance(source, torch.fx.Node) else None
    outputs = node.meta.get("example_value")
    if not isinstance(value, torch.Tensor) or not isinstance(dim, int) or not isinstance(outputs, (tuple, list)):
        return None
    symbolic_size = isinstance(size, (torch.fx.Node, torch.SymInt))
    if not (symbolic_size or isinstance(size, int)) or (isinstance(size, int) and isinstance(value.shape[dim], int)):
        return None
    return len(outputs)


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
                   precision: str = "fp32", target: str = "cpu") -> None:
    """Write ``segment`` as a self-contained ONNX file at ``path``; ``precision="fp16"``
    computes in half precision inside the graph (see ``to_fp16``).  ``target``: the device
    the file is for (``onnx_cpu_rewrites.rewrite_target``); a float32 file for the CPU gets
    the CPU rewrites (``onnx_cpu_rewrites``)."""
    values = [v.detach().cpu() if isinstance(v, torch.Tensor) else v for v in values]
    check_dtypes(segment, io_spec, values)
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
        if precision == "fp32" and target == "cpu":
            rewrite_file(path)
        if precision == "fp16":
            to_fp16(path)
    except Exception as exc:  # the exporter raises many types; name the segment and the op
        raise LoweringError(f"segment {segment.name!r} failed to export to ONNX: "
                            f"{_first_line(exc)}") from exc


_COMPLEX = (torch.complex32, torch.complex64, torch.complex128)


def check_dtypes(segment: Segment, io_spec: SegmentIO, values: Sequence) -> None:
    """Raise ``LoweringError`` (naming the segment, the value and its dtype) for a segment that
    computes with complex numbers or takes or returns bfloat16 tensors.

    ONNX Runtime's Python binding has no complex or bfloat16 element type ("Numpy_type 15 can't be
    converted to MLDataType": AnyFlow's rotary table, built by ``torch.polar`` in float64, flows from
    the prologue into every block), and the exporter has no translation of most complex ops.  The
    segment then runs eagerly under ``on_lowering_error="eager"``."""
    for i in io_spec.tensor_inputs:
        if values[i].dtype in _COMPLEX + (torch.bfloat16,):
            raise LoweringError(f"segment {segment.name!r}: input {io_spec.inputs[i].name!r} is "
                                f"{_dtype_name(values[i].dtype)}, which ONNX Runtime cannot bind")
    for node in segment.module.graph.nodes:
        meta = node.meta.get("example_value")
        metas = meta if isinstance(meta, (tuple, list)) else (meta,)
        for m in metas:
            if isinstance(m, torch.Tensor) and m.dtype in _COMPLEX:
                raise LoweringError(f"segment {segment.name!r} computes with complex numbers ({node.name!r} is "
                                    f"{_dtype_name(m.dtype)}), which ONNX export and ONNX Runtime do not support")
    outputs = next(n for n in segment.module.graph.nodes if n.op == "output").args[0]
    for i in io_spec.tensor_outputs:
        m = outputs[i].meta.get("example_value") if isinstance(outputs[i], torch.fx.Node) else None
        if isinstance(m, torch.Tensor) and m.dtype == torch.bfloat16:
            raise LoweringError(f"segment {segment.name!r}: output {outputs[i].name!r} is bfloat16, which "
                                "ONNX Runtime cannot bind")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


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
