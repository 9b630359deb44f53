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
        return self.segments + ((self.stack,) if self.stack is not None else ())

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
    batch = _batch_size(gm, cuts)
    reason = _speculation_problem(gm, cuts, output_node, batch)
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


def _batch_size(gm: fx.GraphModule, cuts) -> Optional[object]:
    for names in cuts:
        for name in names:
            value = _example(gm, name)
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                return value.shape[0]
    return None


def _speculation_problem(gm, cuts, output_node, batch) -> Optional[str]:
    """Why per-sample speculation cannot run on this partition, if it cannot."""
    if batch is None:
        return "the blocks carry no tensor state between them"
    for c, names in enumerate(cuts[1:], start=1):
        if not names:
            return f"no value flows across cut {c} (blocks do not chain)"
        for name in names:
            value = _example(gm, name)
            if not isinstance(value, torch.Tensor):
                return f"state {name!r} at cut {c} is not a tensor"
            if value.dim() == 0 or str(value.shape[0]) != str(batch):
                return f"state {name!r} at cut {c} has no leading batch dimension {batch}"
    for node in output_node.all_input_nodes:
        value = node.meta.get("example_value")
        if isinstance(value, torch.Tensor) and (value.dim() == 0 or str(value.shape[0]) != str(batch)):
            return f"model output {node.name!r} has no leading batch dimension {batch}"
    return None
