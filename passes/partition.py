"""Cut a Dynamo graph into prologue | block_0 .. block_{L-1} | epilogue.

Each segment becomes its own ``fx.GraphModule`` whose placeholders and outputs
carry the names of the original graph's values, so the runtime executes the
program as segments reading and writing one name -> value environment.

At every cut c between segments (c = 0 before block 0, c = L after the last
block) the *state* is the set of values that blocks before the cut produced
and a segment at or after the cut reads: the residual stream(s).  At cut 0
the state is the stream input: prologue values that only block 0 reads.
Everything else the blocks read (timestep embedding, text tokens, rotary
tables, weights) is a *side input*, computed exactly at every step.  The
state lists are ordered by where the next segment first reads them, so
structurally identical blocks list their streams in the same order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx

from speca_compile.passes.find_blocks import EPILOGUE, PROLOGUE, BlockPlan

# parameters and buffers (``l_self_...``) and module-level constant tensors that
# Dynamo lifts as graph inputs (``g_...``, e.g. a function's default tensor)
_MODULE_STATE_PREFIXES = ("l_self_", "L_self_", "self_", "g_", "G_")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One executable piece of the program: names in, names out."""

    name: str
    module: fx.GraphModule
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]

    @property
    def op_count(self) -> int:
        return sum(1 for n in self.module.graph.nodes if n.op not in ("placeholder", "output", "get_attr"))


@dataclasses.dataclass(frozen=True)
class ValueRef:
    """A reference to a named value inside the program's output structure."""

    name: str


@dataclasses.dataclass(frozen=True)
class SpeculativeProgram:
    """A partitioned graph plus what the runtime needs to speculate over it.

    ``segments`` is ``[prologue, *units, epilogue]`` when blocks were found,
    else a single segment holding the whole graph; ``stack``, once set, runs
    the units in one segment for the full path.  ``cuts[c]`` names the
    state at cut c (``cuts[0]``: stream inputs).  ``reason`` says why the
    program cannot speculate (then the runtime only runs the full path).
    """

    placeholders: Tuple[str, ...]
    user_inputs: Tuple[str, ...]
    segments: Tuple[Segment, ...]
    cuts: Tuple[Tuple[str, ...], ...]
    output: object
    plan: BlockPlan
    shapes: Dict[str, Tuple]
    batch_size: Optional[int]
    reason: Optional[str]
    stack: Optional[Segment] = None   # all blocks as one segment (passes.fuse_stack): the full path
    resumed: bool = False             # the graph of a Dynamo resume function (after a graph break)
    # the prologue's side values as ((name, "row" | "shared" | "count"), ...) (passes.side_values);
    # None: not known, and a mixed step runs each path's whole graph on its rows
    side_values: Optional[Tuple[Tuple[str, str], ...]] = None
    # the verify unit on every k-th token of each output (passes.token_subset), with each
    # output's stride (1: a short stream checked whole); None: the check runs the whole unit
    verify_tokens: Optional[Segment] = None
    verify_token_strides: Tuple[int, ...] = ()

    @property
    def num_units(self) -> int:
        return len(self.cuts) - 1 if self.cuts else 0

    @property
    def prologue(self) -> Segment:
        return self.segments[0]

    @property
    def units(self) -> Tuple[Segment, ...]:
        return self.segments[1:-1] if self.num_units else ()

    @property
    def epilogue(self) -> Segment:
        return self.segments[-1]

    @property
    def full_path(self) -> Tuple[Segment, ...]:
        """What a full step runs: prologue, the fused block stack, epilogue (else every segment)."""
        if self.stack is None:
            return self.segments
        return (self.prologue, self.stack, self.epilogue)

    @property
    def all_segments(self) -> Tuple[Segment, ...]:
        extra = tuple(s for s in (self.stack, self.verify_tokens) if s is not None)
        return self.segments + extra

    def describe(self) -> str:
        """A human-readable summary (what ``speca inspect`` prints)."""
        lines = [self.plan.describe()]
        for seg in self.all_segments:
            lines.append(f"  segment {seg.name:<32} {seg.op_count:5d} ops, "
                         f"{len(seg.inputs)} inputs, {len(seg.outputs)} outputs")
        for c, names in enumerate(self.cuts):
            label = "stream in" if c == 0 else f"cut {c}"
            desc = ", ".join(f"{n}{list(self.shapes.get(n, ()))}" for n in names) or "(none)"
            lines.append(f"  {label:<10} {desc}")
        lines.append("  speculation: " + ("possible" if self.reason is None else f"off ({self.reason})"))
        return "\n".join(lines)


def is_module_state(node: fx.Node) -> bool:
    """True for placeholders that hold parameters, buffers or lifted constants, not user inputs."""
    value = node.meta.get("example_value")
    if isinstance(value, torch.nn.Parameter):
        return True
    return node.name.startswith(_MODULE_STATE_PREFIXES)


def partition(gm: fx.GraphModule, plan: BlockPlan) -> SpeculativeProgram:
    """Split ``gm`` along ``plan`` into segments and name the cut state."""
    graph_nodes = list(gm.graph.nodes)
    placeholders = [n for n in graph_nodes if n.op == "placeholder"]
    output_node = next(n for n in graph_nodes if n.op == "output")
    user_inputs = tuple(n.name for n in placeholders if not is_module_state(n))
    shapes = {n.name: tuple(n.meta["example_value"].shape)
              for n in graph_nodes if isinstance(n.meta.get("example_value"), torch.Tensor)}
    output = fx.node.map_arg(output_node.args[0], lambda n: ValueRef(n.name))

    if not plan.found:
        whole = [n for n in graph_nodes if n.op in ("call_function", "call_method", "call_module")]
        segment = _extract(gm, "whole_graph", whole)
        return SpeculativeProgram(tuple(n.name for n in placeholders), user_inputs, (segment,), (),
                                  output, plan, shapes, None, plan.reason)

    num_units = len(plan.units)
    owner_index = {PROLOGUE: -1, EPILOGUE: num_units}
    seg_of: Dict[fx.Node, int] = {}
    members: List[List[fx.Node]] = [[] for _ in range(num_units + 2)]
    for n in graph_nodes:
        if n.name in plan.assignment:
            owner = plan.assignment[n.name]
            idx = owner_index.get(owner, owner)
            seg_of[n] = idx
            members[idx + 1].append(n)
    names = ["prologue"] + [unit_segment_name(i, plan.units[i]) for i in range(num_units)] + ["epilogue"]
    segments = tuple(_extract(gm, names[i], members[i]) for i in range(num_units + 2))

    cuts = _cut_state(graph_nodes, seg_of, members, num_units, output_node)
    batch = _batch_size(gm, cuts, user_inputs)
    layouts = _state_layouts(gm, cuts, output_node, batch)
    if layouts:
        segments = tuple(_batch_first(seg, layouts) for seg in segments)
        shapes = {**shapes, **{name: tuple(_to_batch_first(_example(gm, name), layout).shape)
                               for name, layout in layouts.items()}}
    reason = _speculation_problem(gm, cuts, output_node, batch, layouts)
    return SpeculativeProgram(tuple(n.name for n in placeholders), user_inputs, segments, cuts,
                              output, plan, shapes, batch, reason)


def unit_segment_name(index: int, unit: str) -> str:
    return f"block_{index}:{unit}"


def _extract(gm: fx.GraphModule, name: str, nodes: Sequence[fx.Node]) -> Segment:
    """Copy ``nodes`` into a new GraphModule; external values become placeholders."""
    inside = set(nodes)
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    inputs: List[str] = []

    def lookup(arg: fx.Node) -> fx.Node:
        if arg not in env:
            if arg.op == "get_attr":  # constants are copied, not passed around
                env[arg] = graph.get_attr(arg.target)
            else:
                env[arg] = graph.placeholder(arg.name)
                inputs.append(arg.name)
            env[arg].meta = dict(arg.meta)
        return env[arg]

    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside:
                lookup(a)
        env[n] = graph.node_copy(n, lambda a: env[a] if a in env else lookup(a))
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    graph.output(tuple(env[n] for n in outputs))
    module = fx.GraphModule(gm, graph, class_name="SpecaSegment")
    return Segment(name, module, tuple(inputs), tuple(n.name for n in outputs))


def _cut_state(graph_nodes, seg_of, members, num_units, output_node) -> Tuple[Tuple[str, ...], ...]:
    """The state names at each cut 0..L, ordered by first read in the next segment."""
    consumers: Dict[fx.Node, List[int]] = {}
    for n in graph_nodes:
        if n is output_node:
            idx = num_units  # the graph output is read after the last block
        elif n in seg_of:
            idx = seg_of[n]
        else:
            continue
        for a in n.all_input_nodes:
            consumers.setdefault(a, []).append(idx)

    read_order: Dict[Tuple[int, fx.Node], Tuple[int, int]] = {}
    for seg_index, seg_nodes in enumerate(members):
        for pos, n in enumerate(seg_nodes):
            for arg_pos, a in enumerate(n.all_input_nodes):
                read_order.setdefault((seg_index - 1, a), (pos, arg_pos))

    def ordered(values, next_seg):
        far = (len(graph_nodes), 0)
        return tuple(v.name for v in sorted(values, key=lambda v: read_order.get((next_seg, v), far)))

    stream_in = [a for a, segs in consumers.items()
                 if 0 in segs and max(segs) == 0 and a.op != "get_attr"
                 and (seg_of.get(a) == -1 or (a.op == "placeholder" and not is_module_state(a)))]
    cuts = [ordered(stream_in, 0)]
    for c in range(1, num_units + 1):
        live = [a for a, segs in consumers.items()
                if a in seg_of and 0 <= seg_of[a] < c and max(segs) >= c]
        cuts.append(ordered(live, c))
    return tuple(cuts)


def _example(gm: fx.GraphModule, name: str):
    node = next((n for n in gm.graph.nodes if n.name == name), None)
    return None if node is None else node.meta.get("example_value")


def _batch_size(gm: fx.GraphModule, cuts, user_inputs=()) -> Optional[object]:
    """The batch size: the leading size of the first state, unless the latent (the first
    floating user input of two or more axes) leads with another size: then the state is laid out
    otherwise (sequence-first, or the batch folded with frames) and the latent's lead is it."""
    state = None
    for names in cuts:
        for name in names:
            value = _example(gm, name)
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                state = value
                break
        if state is not None:
            break
    if state is None:
        return None
    first = state.shape[0]
    latent = _latent_lead(gm, user_inputs)
    if (latent is not None and isinstance(first, int) and latent != first
            and (first % latent == 0 or latent in tuple(state.shape[1:]))):
        return latent
    return first


_LATENT_NAMES = ("hidden_states", "sample", "latents", "latent", "x", "img", "z", "noisy_latents")


def _latent_lead(gm: fx.GraphModule, user_inputs) -> Optional[int]:
    """The leading size of the noisy latent: the user input named like one (a static, non-zero
    size; else None).  Only a name is trusted: ZImage passes a list of per-sample latents
    ``x_0, x_1`` that lead with channels."""
    values = [(re.sub(r"^[lL]_(kwargs_)?", "", name).rstrip("_"), _example(gm, name)) for name in user_inputs]
    tensors = [(n, v) for n, v in values if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2]
    value = next((v for n, v in tensors if n in _LATENT_NAMES), None)
    if value is None or not isinstance(value.shape[0], int) or value.shape[0] < 1:
        return None
    return value.shape[0]


def _state_layouts(gm, cuts, output_node, batch) -> Dict[str, Tuple[str, int]]:
    """Cut states whose rows are not the batch's, as the runtime needs them, but hold one
    sample's values in a known place: name -> ``("fold", factor)`` when the leading size folds
    the batch with another axis sample-major (Latte's temporal blocks run on
    ``[batch * tokens, frames, dim]``, made by ``x.reshape(batch, -1, ...)``...), or
    ``("axis", k)`` when the batch is axis k (ErnieImage's sequence-first ``[tokens, batch,
    dim]``, made by ``x.transpose(0, 1)``).

    Such a state crosses the cut viewed batch-first (``_batch_first``: ``[batch, factor, ...]``
    or the batch axis moved to the front), so the runtime sees one row per sample.  Static sizes
    only; never a model output (the caller gets it as the graph made it)."""
    if not isinstance(batch, int) or batch < 1:
        return {}
    outputs = {n.name for n in output_node.all_input_nodes}
    layouts: Dict[str, Tuple[str, int]] = {}
    for names in cuts:
        for name in names:
            value = _example(gm, name)
            if (name in outputs or not isinstance(value, torch.Tensor) or value.dim() == 0
                    or not all(isinstance(d, int) for d in value.shape) or value.shape[0] == batch):
                continue
            lead = value.shape[0]
            if lead % batch == 0 and _sample_major(gm, name, batch):
                layouts[name] = ("fold", lead // batch)
                continue
            axis = next((k for k in range(1, value.dim())
                         if value.shape[k] == batch and _batch_axis(gm, name, k, batch)), None)
            if axis is not None:
                layouts[name] = ("axis", axis)
    return layouts


def _batch_axis(gm, name: str, axis: int, batch: int) -> bool:
    """True when axis ``axis`` of ``name`` is the batch: following it back through its producers
    (ops that keep the axis where it is: elementwise ops, linears and norms over the last axis,
    a concatenation along another axis; a permute or transpose moves it) reaches axis 0 of a
    tensor that leads with the batch, where a permute or transpose put it at a later axis."""
    nodes = {n.name: n for n in gm.graph.nodes}
    seen = set()

    def shape(node):
        value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    def walk(node, ax, depth=0) -> bool:
        if (node, ax) in seen or depth > 300:
            return False
        seen.add((node, ax))
        sh = shape(node)
        if sh is None or ax >= len(sh) or sh[ax] != batch:
            return False
        name = _op_name(node)
        args = list(node.args[1:])
        if name in ("permute", "transpose", "swapaxes"):
            source = node.args[0]
            src = shape(source)
            if src is None or len(src) != len(sh):
                return False
            if name == "permute":
                dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
                src_ax = dims[ax] % len(sh)
            else:
                a, b = (d % len(sh) for d in args[:2])
                src_ax = b if ax == a else a if ax == b else ax
            if src_ax == 0:
                return src[0] == batch
            return walk(source, src_ax, depth + 1)
        if name in _RESHAPES or node.op == "placeholder":
            return False
        if name == "cat":
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim % len(sh) == ax:
                return False
            return any(walk(t, ax, depth + 1) for t in tensors if isinstance(t, fx.Node))
        return any(walk(a, ax, depth + 1) for a in node.all_input_nodes
                   if shape(a) is not None and len(shape(a)) == len(sh) and shape(a)[ax] == batch)

    return walk(nodes[name], axis)


def _op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _sample_major(gm, name: str, batch: int) -> bool:
    """True when ``name``'s leading axis is the batch folded sample-major with later axes: some
    chain of its producers through ops that keep the leading axis in front (elementwise ops,
    linears, norms, attention over the later axes, a permute or transpose leaving axis 0) reaches
    a reshape or view merging a source whose leading size is the batch with the axes after it."""
    nodes = {n.name: n for n in gm.graph.nodes}
    seen = set()

    def lead(node):
        value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
        if isinstance(value, torch.Tensor) and value.dim() > 0 and isinstance(value.shape[0], int):
            return value.shape[0]
        return None

    def walk(node, depth=0) -> bool:
        if node in seen or depth > 200:
            return False
        seen.add(node)
        size = lead(node)
        if size is None or size % batch:
            return False
        if _is_reshape(node):
            source = node.args[0] if node.args else None
            src_lead = lead(source)
            if src_lead == batch:
                return True          # [batch, a, b, ...] -> [batch * a, b, ...]: sample-major
            return src_lead is not None and walk(source, depth + 1)
        if _moves_axis0(node):
            return False
        if node.op == "placeholder" or not node.all_input_nodes:
            return False
        return any(walk(a, depth + 1) for a in node.all_input_nodes if lead(a) == size)

    return walk(nodes[name])


_RESHAPES = ("reshape", "view", "flatten", "unflatten")


def _is_reshape(node: fx.Node) -> bool:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return node.op in ("call_method", "call_function") and name in _RESHAPES


def _moves_axis0(node: fx.Node) -> bool:
    """A permute or transpose that moves axis 0 (then the leading axis is no longer the rows)."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    args = list(node.args[1:]) + list(node.kwargs.values())
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return not dims or dims[0] != 0
    if name in ("transpose", "swapaxes", "movedim"):
        return 0 in args[:2] or -len(node.meta["example_value"].shape) in args[:2]
    return False


def _batch_first(seg: Segment, layouts: Dict[str, Tuple[str, int]]) -> Segment:
    """``seg`` with each such state it emits viewed batch-first and each it reads put back as the
    graph had it (``_state_layouts``).  Same names in and out; the segment's own uses of a value
    it emits keep the original."""
    mine_out = [n for n in seg.outputs if n in layouts]
    mine_in = [n for n in seg.inputs if n in layouts]
    if not mine_out and not mine_in:
        return seg
    graph = seg.module.graph
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    for name in mine_in:
        node = placeholders[name]
        original = node.meta["example_value"]
        users = list(node.users)
        kind, k = layouts[name]
        with graph.inserting_after(node):
            if kind == "fold":
                back = graph.call_method("reshape", (node, tuple(original.shape)))
            else:
                back = graph.call_function(torch.movedim, (node, 0, k))
        back.meta = dict(node.meta)
        for user in users:
            user.replace_input_with(node, back)
        node.meta = dict(node.meta)
        node.meta["example_value"] = _to_batch_first(original, layouts[name])
    output = next(n for n in graph.nodes if n.op == "output")
    values = list(output.args[0])
    for i, name in enumerate(seg.outputs):
        if name in layouts:
            node = values[i]
            original = node.meta["example_value"]
            kind, k = layouts[name]
            with graph.inserting_before(output):
                if kind == "fold":
                    view = graph.call_method("reshape", (node, (original.shape[0] // k, k) + tuple(original.shape[1:])))
                else:
                    moved = graph.call_function(torch.movedim, (node, k, 0))
                    moved.meta = dict(node.meta)
                    view = graph.call_method("contiguous", (moved,))
            view.meta = dict(node.meta)
            view.meta["example_value"] = _to_batch_first(original, layouts[name])
            values[i] = view
    output.args = (tuple(values),)
    graph.lint()
    seg.module.recompile()
    return seg


def _to_batch_first(value: torch.Tensor, layout: Tuple[str, int]) -> torch.Tensor:
    kind, k = layout
    if kind == "fold":
        return value.reshape((value.shape[0] // k, k) + tuple(value.shape[1:]))
    return value.movedim(k, 0)


def _speculation_problem(gm, cuts, output_node, batch, layouts=None) -> Optional[str]:
    """Why per-sample speculation cannot run on this partition, if it cannot."""
    layouts = layouts or {}
    if batch is None:
        return "the blocks carry no tensor state between them"
    for c, names in enumerate(cuts[1:], start=1):
        if not names:
            return f"no value flows across cut {c} (blocks do not chain)"
        for name in names:
            value = _example(gm, name)
            if not isinstance(value, torch.Tensor):
                return f"state {name!r} at cut {c} is not a tensor"
            if name in layouts:
                continue
            if value.dim() == 0 or str(value.shape[0]) != str(batch):
                return f"state {name!r} at cut {c} has no leading batch dimension {batch}"
    for node in output_node.all_input_nodes:
        value = node.meta.get("example_value")
        if isinstance(value, torch.Tensor) and (value.dim() == 0 or str(value.shape[0]) != str(batch)):
            return f"model output {node.name!r} has no leading batch dimension {batch}"
    return None
