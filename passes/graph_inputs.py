"""Where each graph input comes from, so a graph can later be called without Dynamo.

Dynamo records a source for every placeholder (``L['kwargs']['timestep']``,
``L['args'][0].size()[0]``, ``L['self']...weight``).  An engine bundle replays
the graph from a manifest, so it must know which placeholder is which call
argument, which is a size of one, and which is module state.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence, Tuple

import torch
from torch import fx

_ARG = re.compile(r"^L\['args'\]\[(\d+)\]$")
_KWARG = re.compile(r"^L\['kwargs'\]\['([^']+)'\]$")
_LOCAL = re.compile(r"^L\['([^']+)'\]$")
_SIZE = re.compile(r"^(.*)\.size\(\)\[(\d+)\]$")


@dataclasses.dataclass(frozen=True)
class GraphInput:
    name: str                                 # the placeholder
    source: str                               # Dynamo's source expression
    kind: str                                 # input | dim | module
    key: Optional[str] = None                 # input/dim: "0", "1"... positional, else the keyword
    axis: Optional[int] = None                # dim
    dtype: Optional[torch.dtype] = None       # input tensors
    shape: Tuple[Optional[int], ...] = ()     # input tensors; None where the size is symbolic
    number: Optional[float] = None            # module: its value when it is a Python number


def call_key(source: str) -> Optional[str]:
    """The call argument a source names ("0" for the first positional), or None."""
    for pattern in (_ARG, _KWARG, _LOCAL):
        m = pattern.match(source)
        if m and m.group(1) != "self":
            return m.group(1)
    return None


def describe_graph_inputs(gm: fx.GraphModule, example_inputs: Sequence) -> Tuple[GraphInput, ...]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    found = []
    for node, example in zip(placeholders, example_inputs):
        grapharg = node.meta.get("grapharg")
        source = grapharg.source.name if grapharg is not None and grapharg.source is not None else ""
        value = node.meta.get("example_value", example)
        size = _SIZE.match(source)
        key = call_key(source)
        if size and call_key(size.group(1)) is not None:
            found.append(GraphInput(node.name, source, "dim", key=call_key(size.group(1)),
                                    axis=int(size.group(2))))
        elif key is not None and isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
            shape = tuple(d if isinstance(d, int) else None for d in value.shape)
            found.append(GraphInput(node.name, source, "input", key=key, dtype=value.dtype, shape=shape))
        elif key is not None:
            found.append(GraphInput(node.name, source, "input", key=key))   # a non-tensor call argument
        else:
            number = example if isinstance(example, (int, float)) and not isinstance(example, bool) else None
            found.append(GraphInput(node.name, source, "module", number=number))
    return tuple(found)
