"""Find the transformer-block stacks of a Dynamo graph and assign every node.

A *stack* is a ``ModuleList`` whose entries (at least two, contiguous indices,
one class) each run a real sub-graph (several ops).  Several stacks are
chained in graph order (Flux: ``transformer_blocks`` then
``single_transformer_blocks``) into one list of *units*.

Module paths alone are not enough: diffusers' DiT computes the final-layer
conditioning through ``transformer_blocks[0].norm1.emb`` after the loop.  So
nodes are classified by position and dataflow: a node belongs to block k only
inside block k's span of the graph; a node inside the span that does not read
anything the blocks produced is hoisted to the prologue; anything after the
last block is epilogue, whatever module path it carries.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from torch import fx

from speca_compile.passes.module_paths import block_of

PROLOGUE = "prologue"
EPILOGUE = "epilogue"
COMPUTE_OPS = ("call_function", "call_method", "call_module")
MIN_NODES_PER_BLOCK = 4
SCALARS = (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Where the blocks are: stacks in graph order and each compute node's owner.

    ``assignment`` maps a compute node's name to ``"prologue"``,
    ``"epilogue"`` or the index of its unit (block) in ``units``.
    ``reason`` says why no stack was found (then ``units`` is empty).
    """

    stacks: Tuple[Tuple[str, int], ...]
    units: Tuple[str, ...]
    assignment: Dict[str, object]
    reason: Optional[str] = None

    @property
    def found(self) -> bool:
        return bool(self.units)

    def describe(self) -> str:
        if not self.found:
            return f"no block stack: {self.reason}"
        stacks = ", ".join(f"{name} x{count}" for name, count in self.stacks)
        counts = defaultdict(int)
        for owner in self.assignment.values():
            counts[owner] += 1
        return (
            f"{len(self.units)} blocks in {len(self.stacks)} stack(s): {stacks}; "
            f"nodes: prologue {counts[PROLOGUE]}, blocks "
            f"{sum(counts[i] for i in range(len(self.units)))}, epilogue {counts[EPILOGUE]}"
        )


def find_blocks(gm: fx.GraphModule) -> BlockPlan:
    """Detect block stacks in ``gm`` and classify every compute node."""
    nodes = [n for n in gm.graph.nodes if n.op in COMPUTE_OPS]
    owner = {n: block_of(n) for n in nodes}
    stacks = _select_stacks(nodes, owner)
    if not stacks:
        return BlockPlan((), (), {n.name: PROLOGUE for n in nodes},
                         reason="no ModuleList of >= 2 blocks of one class with "
                                f">= {MIN_NODES_PER_BLOCK} ops each was found in the graph")

    position = {n: i for i, n in enumerate(nodes)}
    first: Dict[Tuple[str, int], int] = {}
    last: Dict[Tuple[str, int], int] = {}
    for n in nodes:
        key = owner[n] and owner[n][:2]
        if key and key[0] in stacks:
            first.setdefault(key, position[n])
            last[key] = position[n]
    units = sorted(first, key=first.get)
    problem = _order_problem(units)
    if problem:
        return BlockPlan((), (), {n.name: PROLOGUE for n in nodes}, reason=problem)

    starts = [first[u] for u in units]
    ends = [s - 1 for s in starts[1:]] + [last[units[-1]]]
    unit_index = {u: i for i, u in enumerate(units)}
    assignment: Dict[str, object] = {}
    in_region = set()
    k = 0
    for n in nodes:
        p = position[n]
        if p < starts[0]:
            assignment[n.name] = PROLOGUE
            continue
        if p > ends[-1]:
            assignment[n.name] = EPILOGUE
            continue
        while p > ends[k]:
            k += 1
        key = owner[n] and owner[n][:2]
        reads_region = any(a in in_region for a in n.all_input_nodes)
        if reads_region or (unit_index.get(key) == k and not is_scalar(n)):
            assignment[n.name] = k
            in_region.add(n)
        else:
            # hoisted: reads nothing the blocks made.  Scalars (the symbolic
            # sizes of dynamic-shape graphs) go too, whatever block they came
            # from, or a forecast step that skips the block would lack them.
            assignment[n.name] = PROLOGUE
    stack_list = []
    for prefix, _ in units:
        if not stack_list or stack_list[-1][0] != prefix:
            stack_list.append([prefix, 0])
        stack_list[-1][1] += 1
    return BlockPlan(
        stacks=tuple((p, c) for p, c in stack_list),
        units=tuple(f"{p}.{i}" for p, i in units),
        assignment=assignment,
    )


def is_scalar(node: fx.Node) -> bool:
    """True for nodes computing a Python/symbolic number, not a tensor."""
    return isinstance(node.meta.get("example_value"), SCALARS)


def _select_stacks(nodes: List[fx.Node], owner: dict) -> List[str]:
    """Prefixes of the ModuleLists that look like block stacks."""
    per_prefix: Dict[str, Dict[int, int]] = defaultdict(lambda: defaultdict(int))
    classes: Dict[str, set] = defaultdict(set)
    for n in nodes:
        if owner[n]:
            prefix, index, cls = owner[n]
            per_prefix[prefix][index] += 1
            if cls:
                classes[prefix].add(cls)
    chosen = []
    for prefix, counts in per_prefix.items():
        indices = sorted(counts)
        contiguous = indices == list(range(indices[0], indices[0] + len(indices)))
        if (len(indices) >= 2 and contiguous and len(classes[prefix]) == 1
                and min(counts.values()) >= MIN_NODES_PER_BLOCK):
            chosen.append(prefix)
    return chosen


def _order_problem(units: List[Tuple[str, int]]) -> Optional[str]:
    """Why the blocks (sorted by first op) cannot be run as one chain, if they cannot."""
    prefixes: List[str] = []
    for prefix, index in units:
        if prefixes and prefixes[-1] == prefix:
            continue
        if prefix in prefixes:
            return f"the blocks of stack {prefix!r} are interleaved with another stack"
        prefixes.append(prefix)
    for prefix in prefixes:
        indices = [i for p, i in units if p == prefix]
        if indices != sorted(indices):
            return f"the blocks of stack {prefix!r} do not run in index order"
    return None
