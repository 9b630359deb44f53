"""Fuse the block segments into one ``block_stack`` segment for the full path.

A full step runs every block back to back; as separate engines that is one
engine call per block, and an engine cannot optimise across a block boundary
(ONNX Runtime fuses a block's residual add with the next block's layer norm,
for one).  The fused segment runs all blocks in one graph and emits, besides
what the epilogue reads (the state at the last cut), the state at the cuts
the feature cache records: the "boundary features" of a full step.

The per-block segments stay in the program: the speculative path still runs
the verify block alone.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List

from torch import fx

from speca_compile.passes.partition import Segment, SpeculativeProgram

STACK = "block_stack"


def fuse_stack(program: SpeculativeProgram, keep_cuts: Iterable[int]) -> SpeculativeProgram:
    """``program`` with ``stack`` set: its blocks as one segment whose outputs are the state at
    the last cut and at each cut in ``keep_cuts`` (cut 0, the stream input, is an input, not an
    output).  A program without blocks is returned unchanged."""
    if not program.num_units:
        return program
    last = program.num_units
    cuts = sorted({c for c in keep_cuts if 0 < c <= last} | {last})
    keep: List[str] = []
    for c in cuts:
        keep.extend(n for n in program.cuts[c] if n not in keep)
    return dataclasses.replace(program, stack=chain_segments(STACK, program.units, keep))


def chain_segments(name: str, segments, outputs: List[str]) -> Segment:
    """One segment running ``segments`` in order (values pass by name), giving ``outputs``."""
    graph = fx.Graph()
    by_name: Dict[str, fx.Node] = {}
    inputs: List[str] = []
    attrs: Dict[str, object] = {}
    for seg in segments:
        local: Dict[fx.Node, fx.Node] = {}
        nodes = list(seg.module.graph.nodes)
        for node, value in zip([n for n in nodes if n.op == "placeholder"], seg.inputs):
            if value not in by_name:
                by_name[value] = graph.placeholder(value)
                by_name[value].meta = dict(node.meta)
                inputs.append(value)
            local[node] = by_name[value]
        for node in nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                by_name.update(zip(seg.outputs, (local[v] for v in node.args[0])))
            else:
                if node.op == "get_attr":   # constants: the same target in every segment of one graph
                    attrs[node.target] = _attr(seg.module, node.target)
                local[node] = graph.node_copy(node, lambda a: local[a])
    missing = [n for n in outputs if n not in by_name]
    if missing:
        raise ValueError(f"{name}: no segment computes {', '.join(missing)}")
    graph.output(tuple(by_name[n] for n in outputs))
    module = fx.GraphModule(attrs, graph, class_name="SpecaStack")
    return Segment(name, module, tuple(inputs), tuple(outputs))


def _attr(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module
