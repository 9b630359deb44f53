"""The verify block on a subset of its tokens: a cheaper check (issue 19).

The check compares the forecast of the verify block's output with the block's real output.
A relative error over every ``stride``-th token estimates the error over all of them, and the
block's queries are independent once keys and values are computed: attention reads every key,
but only the checked tokens' queries, output projection, MLP and residuals need computing.

``token_subset_segment`` rewrites the verify unit's graph by *demand*: each output stream is
wanted at tokens ``0::stride`` (axis 1 of a batch-first ``(B, tokens, C)`` stream); walking
the graph backwards, an op whose rule says how a token slice of its output is computed from
token slices of its inputs (elementwise ops with broadcasting, ``linear``, norms over the
channel axes, views, permutes, ``getitem`` slices, ``chunk``/``unbind``, ``cat``/``stack`` on
other axes, and attention: a slice of the queries, all keys and values) passes the demand on;
any other op, or a value wanted both whole and sliced (the keys' input), is computed whole and
sliced where a consumer wants the slice.  Slicing a whole value is always exact, so an op
without a rule costs savings, never correctness; the engine built from the segment is still
checked against the eager one like every other.  Pure: a Segment in, a Segment (or a reason) out.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx

from speca_compile.passes.partition import Segment, SpeculativeProgram

SEGMENT_NAME = "verify_tokens"
SUFFIX = "__tokens"

# (axis, start, stop, stride) of one tensor; FULL: the whole value
Spec = Tuple[int, int, Optional[int], int]
FULL = None

_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.tanh, torch.sigmoid, torch.exp,
    torch.rsqrt, torch.sqrt, torch.square, torch.where, torch.clamp,
    F.gelu, F.silu, F.relu, F.dropout, F.mish, F.softplus, torch._C._nn.gelu, torch._C._nn.silu,
}
_ELEMENTWISE_METHODS = {
    "to", "float", "half", "bfloat16", "type_as", "contiguous", "clone", "neg", "sigmoid", "tanh",
    "exp", "add", "sub", "mul", "div", "pow", "rsqrt", "sqrt", "square", "clamp",
}
_LINEAR = {torch._C._nn.linear, F.linear}
_NORMS = {F.layer_norm, torch.layer_norm, torch.rms_norm}
_ATTENTION = {torch._C._nn.scaled_dot_product_attention, F.scaled_dot_product_attention}
_RESHAPES = {"view", "reshape"}
_PERMUTES = {"permute", "transpose"}
_SHAPE_ONLY = {"flatten", "unflatten", "unsqueeze", "squeeze"}
_SPLITS = {"chunk", "split", "split_with_sizes", "unbind"}


def with_token_subset(program: SpeculativeProgram, verify_unit: Optional[int], stride: int
                      ) -> Tuple[SpeculativeProgram, Optional[str]]:
    """``program`` with its ``verify_tokens`` segment for ``stride``, and a note for ``stats``
    (what it checks, or why every token is checked)."""
    if stride <= 1 or verify_unit is None or not program.num_units or program.reason is not None:
        return program, None
    segment, why = token_subset_segment(program.units[verify_unit], stride)
    if segment is None:
        return program, f"verify_stride={stride}: every token checked ({why})"
    strides = tuple(int(s) for s in segment.module.meta["token_strides"])
    return (dataclasses.replace(program, verify_tokens=segment, verify_token_strides=strides),
            f"verify_stride={stride}: the verify block checks every {stride}-th token"
            + (" (short streams whole)" if 1 in strides else ""))


def token_subset_segment(unit: Segment, stride: int) -> Tuple[Optional[Segment], Optional[str]]:
    """The verify unit computing its outputs at every ``stride``-th token (outputs named
    ``<name>__tokens``, same inputs as ``unit``), or (None, why not)."""
    if stride <= 1:
        return None, "verify_stride is 1: every token is checked"
    graph = unit.module.graph
    outputs = list(_output_nodes(graph))
    wanted = {}
    for node in outputs:
        shape = _shape(node)
        if shape is None or len(shape) != 3:
            return None, f"verify block output {node.name!r} is not a (batch, tokens, channels) stream"
        # a short stream (Flux's few text tokens) is checked at every token
        wanted[node] = (1, 0, None, stride if _known_ge(shape[1], 2 * stride) else 1)
    if all(s[3] == 1 for s in wanted.values()):
        return None, f"every verify block output has fewer than {2 * stride} tokens"
    modes = _modes(graph, wanted)
    saved = [n for n, m in modes.items() if m is not FULL and _is_heavy(n)]
    if not saved:
        return None, "no matmul of the verify block runs on fewer tokens (no op rule reached one)"
    return _rebuild(unit, modes, outputs, wanted), None


# ------------------------------------------------------------------ analysis
def _modes(graph: fx.Graph, wanted: Dict[fx.Node, Spec]) -> Dict[fx.Node, Optional[Spec]]:
    """Each node's mode: a Spec when every consumer wants that token slice of it and its rule
    can compute it so; FULL when it is computed whole."""
    demands: Dict[fx.Node, set] = {n: {s} for n, s in wanted.items()}
    modes: Dict[fx.Node, Optional[Spec]] = {}
    for node in reversed(list(graph.nodes)):
        if node.op == "output" or node not in demands:
            continue
        wants = demands[node]
        spec = next(iter(wants)) if len(wants) == 1 else FULL
        rule = _input_specs(node, spec) if spec is not FULL and node.op != "placeholder" else None
        modes[node] = spec if rule is not None else FULL
        inputs = rule if rule is not None else {a: FULL for a in node.all_input_nodes}
        for arg, s in inputs.items():
            demands.setdefault(arg, set()).add(s)
    return modes


def _input_specs(node: fx.Node, spec: Spec) -> Optional[Dict[fx.Node, Optional[Spec]]]:
    """How the ``spec`` slice of ``node`` is computed: the slice each input must have, or None."""
    axis, start, stop, stride = spec
    out = _shape(node)
    fn, target = node.op, node.target
    if out is None and not _is_tuple_node(node):
        return None
    if fn == "call_function" and target is operator.getitem:
        return _getitem_specs(node, spec)
    if (fn == "call_function" and target in _ELEMENTWISE_FUNCTIONS) or (
            fn == "call_method" and target in _ELEMENTWISE_METHODS):
        if target is F.dropout and _arg(node, 2, "training", False) is not False:
            return None
        return _broadcast_specs(node, spec, out)
    if fn == "call_function" and target in _LINEAR:
        return _first_input_only(node, spec) if axis < len(out) - 1 else None
    if fn == "call_function" and target in _NORMS:
        normalized = _arg(node, 1, "normalized_shape", None)
        if normalized is None or axis >= len(out) - len(normalized):
            return None
        return _first_input_only(node, spec)
    if fn == "call_function" and target in _ATTENTION:
        return _attention_specs(node, spec, out)
    if fn == "call_method" and target in _PERMUTES:
        return _permute_specs(node, spec, out)
    if fn == "call_method" and (target in _RESHAPES or target in _SHAPE_ONLY):
        return _reshape_specs(node, spec, out)
    if fn == "call_function" and target in (torch.cat, torch.stack):
        return _join_specs(node, spec, out)
    if (fn == "call_function" and target is F.softmax) or (fn == "call_method" and target == "softmax"):
        dim = _arg(node, 1, "dim", None)
        if dim is None or _norm_axis(dim, len(out)) == axis:
            return None
        return _first_input_only(node, spec)
    if fn == "call_method" and target in _SPLITS:
        return _split_specs(node, spec)
    return None


def _first_input_only(node: fx.Node, spec: Spec):
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node):
        return None
    result = {a: FULL for a in node.all_input_nodes}
    result[first] = spec
    return result


def _broadcast_specs(node: fx.Node, spec: Spec, out) -> Optional[Dict]:
    axis, start, stop, stride = spec
    result = {}
    for a in node.all_input_nodes:
        shape = _shape(a)
        if shape is None:
            result[a] = FULL   # a SymInt or scalar node
            continue
        at = axis - (len(out) - len(shape))
        if at < 0 or _known_eq(shape[at], 1):
            result.setdefault(a, FULL)
        elif _known_eq(shape[at], out[axis]):
            if result.get(a) is not FULL and a in result and result[a] != (at, start, stop, stride):
                return None
            result[a] = (at, start, stop, stride)
        else:
            return None
    if node.op == "call_method" and node.target == "type_as":   # the other tensor gives its dtype
        for a in node.args[1:]:
            if isinstance(a, fx.Node):
                result[a] = FULL
    return result


def _attention_specs(node: fx.Node, spec: Spec, out) -> Optional[Dict]:
    axis, start, stop, stride = spec
    if axis != len(out) - 2:
        return None
    query, key, value = (_arg(node, i, n, None) for i, n in enumerate(("query", "key", "value")))
    mask = _arg(node, 3, "attn_mask", None)
    if not all(isinstance(x, fx.Node) for x in (query, key, value)) or query is key or query is value:
        return None
    if _arg(node, 5, "is_causal", False) is not False:
        return None
    result = {a: FULL for a in node.all_input_nodes}
    result[query] = (len(_shape(query)) - 2, start, stop, stride)
    if isinstance(mask, fx.Node):
        shape = _shape(mask)
        if shape is None or len(shape) < 2:
            return None
        if not _known_eq(shape[-2], 1):
            result[mask] = (len(shape) - 2, start, stop, stride)
    return result


def _permute_specs(node: fx.Node, spec: Spec, out) -> Optional[Dict]:
    axis = spec[0]
    ndim = len(out)
    if node.target == "transpose":
        d0, d1 = (_norm_axis(d, ndim) for d in node.args[1:3])
        source = d1 if axis == d0 else d0 if axis == d1 else axis
    else:
        dims = node.args[1:] if not isinstance(node.args[1], (tuple, list)) else node.args[1]
        if not all(isinstance(d, int) for d in dims):
            return None
        source = _norm_axis(dims[axis], ndim)
    return _first_input_only(node, (source,) + spec[1:])


def _reshape_specs(node: fx.Node, spec: Spec, out) -> Optional[Dict]:
    """Views: the token axis must be one axis of the same size on both sides, with the same
    product of sizes before it (so the other axes regroup only around it)."""
    axis = spec[0]
    source = node.args[0]
    shape = _shape(source) if isinstance(source, fx.Node) else None
    if shape is None:
        return None
    before = _prod(out[:axis])
    for i in range(len(shape)):
        if _known_eq(shape[i], out[axis]) and _known_eq(_prod(shape[:i]), before):
            if node.target in _RESHAPES and _explicit_shape(node) is None:
                return None
            return _first_input_only(node, (i,) + spec[1:])
    return None


def _join_specs(node: fx.Node, spec: Spec, out) -> Optional[Dict]:
    axis = spec[0]
    tensors = node.args[0]
    dim = _arg(node, 1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        return None
    ndim = len(out)
    dim = _norm_axis(dim, ndim)
    if node.target is torch.cat:
        if dim == axis:
            return None
        source = axis
    else:
        if dim == axis:
            return None
        source = axis if axis < dim else axis - 1
    result = {a: FULL for a in node.all_input_nodes}
    for t in tensors:
        if not isinstance(t, fx.Node) or _shape(t) is None:
            return None
        result[t] = (source,) + spec[1:]
    return result


def _split_specs(node: fx.Node, spec: Spec) -> Optional[Dict]:
    """``chunk``/``split``/``unbind`` produce tuples: ``spec`` is in the items' axes."""
    source = node.args[0]
    shape = _shape(source) if isinstance(source, fx.Node) else None
    if shape is None:
        return None
    axis = spec[0]
    if node.target == "unbind":
        dim = _norm_axis(_arg(node, 1, "dim", 0), len(shape))
        axis = axis if axis < dim else axis + 1
    else:
        dim = _norm_axis(_arg(node, 2, "dim", 0), len(shape))
    if dim == axis:
        return None
    return _first_input_only(node, (axis,) + spec[1:])


def _getitem_specs(node: fx.Node, spec: Spec) -> Optional[Dict]:
    source, index = node.args
    if not isinstance(source, fx.Node):
        return None
    if _is_tuple_node(source):   # an item of chunk/split/unbind: same axes as the item
        return {source: spec} if isinstance(index, int) else None
    shape = _shape(source)
    if shape is None:
        return None
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or isinstance(i, fx.Node) for i in index):
        return None
    axis, start, stop, stride = spec
    found = _token_entry(index, axis)
    if found is None:
        return None
    position, in_dim = found
    if position is None:   # the token axis is past the index: unindexed trailing axes
        return {source: (in_dim, start, stop, stride)}
    return _slice_through(node, source, in_dim, index[position], spec, shape)


def _token_entry(index: tuple, axis: int):
    """(position in ``index`` of the entry that makes output axis ``axis``, or None when the
    axis comes after the index; the input axis it reads), or None when no slice makes it."""
    out_dim, in_dim = 0, 0
    for position, entry in enumerate(index):
        if entry is None:
            if out_dim == axis:
                return None
            out_dim += 1
        elif isinstance(entry, int):
            in_dim += 1
        elif isinstance(entry, slice):
            if out_dim == axis:
                return position, in_dim
            out_dim += 1
            in_dim += 1
        else:
            return None
    return None, in_dim + axis - out_dim


def _slice_through(node, source, in_dim, entry: slice, spec: Spec, shape) -> Optional[Dict]:
    """``x[..., a:b]`` then tokens ``start:stop:stride`` = ``x[..., a+start : a+stop or b : stride]``;
    ``a`` may be a symbolic size (Flux's text length) when the token slice starts at 0."""
    _, start, stop, stride = spec
    a, b, step = entry.start, entry.stop, entry.step
    if step not in (None, 1) or not (b is None or (isinstance(b, int) and b >= 0)):
        return None
    if isinstance(a, fx.Node):
        if start != 0 or stop is not None:
            return None
        return {source: (in_dim, a, b, stride), a: FULL}
    if not (a is None or (isinstance(a, int) and a >= 0)) or isinstance(start, fx.Node):
        return None
    a = a or 0
    new_stop = a + stop if stop is not None else b
    if stop is not None and b is not None:
        new_stop = min(new_stop, b)
    return {source: (in_dim, a + start, new_stop, stride)}


# ------------------------------------------------------------------- rebuild
def _rebuild(unit: Segment, modes, outputs: List[fx.Node], wanted: Dict[fx.Node, Spec]) -> Segment:
    graph = fx.Graph()
    whole: Dict[fx.Node, fx.Node] = {}
    sliced: Dict[fx.Node, fx.Node] = {}
    cuts: Dict[Tuple[fx.Node, Spec], fx.Node] = {}

    def cut(value: fx.Node, spec: Spec) -> fx.Node:
        axis, start, stop, step = spec
        start = whole[start] if isinstance(start, fx.Node) else start
        return graph.call_function(operator.getitem, (value, tuple([slice(None)] * axis + [slice(start, stop, step)])))

    def get(node: fx.Node, spec: Optional[Spec]) -> fx.Node:
        if spec is FULL:
            return whole[node]
        if modes.get(node) == spec:
            return sliced[node]
        if (node, spec) not in cuts:
            cuts[(node, spec)] = cut(whole[node], spec)
        return cuts[(node, spec)]

    for node in unit.module.graph.nodes:   # inputs first (in order): a slice may start at one
        if node.op == "placeholder":
            whole[node] = graph.node_copy(node)
    for node in unit.module.graph.nodes:
        if node.op in ("output", "placeholder"):
            continue
        if node not in modes:
            continue
        spec = modes[node]
        if spec is FULL:
            whole[node] = graph.node_copy(node, lambda a: whole[a])
            continue
        needs = _input_specs(node, spec)
        tuples = [a for a, s in needs.items() if s is not FULL and _is_tuple_node(a) and modes.get(a) != s]
        if tuples:   # an item of a tuple computed whole (its items wanted differently): cut the item
            sliced[node] = cut(graph.node_copy(node, lambda a: whole[a]), spec)
            continue
        copy = graph.node_copy(node, lambda a: get(a, needs.get(a, FULL)))
        if node.op == "call_method" and node.target in _RESHAPES:
            _resize(copy, spec, needs[node.args[0]][0], graph)
        if node.op == "call_function" and node.target is operator.getitem and not _is_tuple_node(node.args[0]):
            _unslice(copy, spec[0])
        sliced[node] = copy
    graph.output(tuple(get(n, wanted[n]) for n in outputs))
    module = fx.GraphModule(unit.module, graph, class_name="SpecaTokenSubset")
    module.meta["token_strides"] = tuple(wanted[n][3] for n in outputs)
    return Segment(SEGMENT_NAME, module, unit.inputs, tuple(n.name + SUFFIX for n in outputs))


def _resize(copy: fx.Node, spec: Spec, source_axis: int, graph: fx.Graph) -> None:
    """A view/reshape of a token slice: its size on the token axis is the slice's, read from
    the sliced input (works for static and symbolic token counts alike); a -1 there stays."""
    own = copy.args[1:]
    packed = len(own) == 1 and isinstance(own[0], (tuple, list))
    sizes = list(own[0] if packed else own)
    axis = spec[0]
    if not (isinstance(sizes[axis], int) and sizes[axis] == -1):
        with graph.inserting_before(copy):
            sizes[axis] = graph.call_method("size", (copy.args[0], source_axis))
    copy.args = (copy.args[0], tuple(sizes)) if packed else (copy.args[0], *sizes)


def _unslice(copy: fx.Node, axis: int) -> None:
    """A ``getitem`` of a token slice: its input already starts where its slice did."""
    source, index = copy.args
    packed = isinstance(index, tuple)
    entries = list(index if packed else (index,))
    position = _token_entry(tuple(entries), axis)[0]
    if position is not None:
        entries[position] = slice(None)
    copy.args = (source, tuple(entries) if packed else entries[0])


# ------------------------------------------------------------------- helpers
def _explicit_shape(node: fx.Node):
    args = node.args[1:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    if not args or any(not isinstance(a, (int, fx.Node)) for a in args):
        return None
    return tuple(args)


def _output_nodes(graph: fx.Graph):
    out = next(n for n in graph.nodes if n.op == "output")
    values = out.args[0]
    return values if isinstance(values, (tuple, list)) else (values,)


def _shape(node) -> Optional[Tuple]:
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _is_tuple_node(node: fx.Node) -> bool:
    value = node.meta.get("example_value", node.meta.get("val"))
    return isinstance(value, (tuple, list))


def _is_heavy(node: fx.Node) -> bool:
    return node.op == "call_function" and (node.target in _LINEAR or node.target in _ATTENTION)


def _arg(node: fx.Node, position: int, name: str, default):
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def _norm_axis(dim, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _prod(sizes):
    return math.prod(sizes) if sizes else 1


def _known_eq(a, b) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    try:
        return bool(statically_known_true(a == b))
    except Exception:   # noqa: BLE001 - sizes we cannot compare are not known equal
        return False


def _known_ge(a, b) -> bool:
    """``a >= b`` at the traced size (a symbolic token count by its hint: a saving, not a guard)."""
    if isinstance(a, torch.SymInt):
        hint = a.node.hint
        return hint is not None and hint >= b
    return a >= b
