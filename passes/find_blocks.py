"""Find the transformer-block stacks of a Dynamo graph and assign every node.

A *stack* is a ``ModuleList`` whose entries (at least two, contiguous indices,
one class) each run a real sub-graph (several ops).  Several stacks are
chained in graph order (Flux: ``transformer_blocks`` then
``single_transformer_blocks``) into one list of *units*.  Where stacks alternate (Latte's
spatial and temporal blocks, ConsisID's face cross-attention every few blocks) the repeating
group is the unit (``group_interleaved``).  A stack that does not read the noisy latent (a
motion encoder on face frames, a text-token refiner) conditions the denoiser and stays in the
prologue.

Module paths alone are not enough: diffusers' DiT computes the final-layer
conditioning through ``transformer_blocks[0].norm1.emb`` after the loop.  So
nodes are classified by position and dataflow: a node belongs to block k only
inside block k's span of the graph; a node inside the span that does not read
anything the blocks produced is hoisted to the prologue; anything after the
last block is epilogue, whatever module path it carries.
"""

from __future__ import annotations

import dataclasses
import re
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
    found = _select_stacks(nodes, owner)
    stacks = _on_latent_stream(gm, nodes, owner, found)
    if not stacks:
        reason = ("no ModuleList of >= 2 blocks of one class with "
                  f">= {MIN_NODES_PER_BLOCK} ops each was found in the graph")
        if found:
            reason += (f" on the latent's stream (the stacks {', '.join(found)} do not read the "
                       "latent input: they condition the denoiser)")
        return BlockPlan((), (), {n.name: PROLOGUE for n in nodes}, reason=reason)

    position = {n: i for i, n in enumerate(nodes)}
    first: Dict[Tuple[str, int], int] = {}
    last: Dict[Tuple[str, int], int] = {}
    for n in nodes:
        key = owner[n] and owner[n][:2]
        if key and key[0] in stacks:
            first.setdefault(key, position[n])
            last[key] = position[n]
    keys = sorted(first, key=first.get)
    groups, interleaved = group_interleaved(keys)
    problem = _order_problem(keys)
    if problem:
        return BlockPlan((), (), {n.name: PROLOGUE for n in nodes}, reason=problem)

    starts = [first[g[0]] for g in groups]
    ends = [s - 1 for s in starts[1:]] + [max(last[k] for k in groups[-1])]
    unit_index = {k: i for i, g in enumerate(groups) for k in g}
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
    for group in groups:
        prefix = "+".join(interleaved) if group[0][0] in interleaved else group[0][0]
        if not stack_list or stack_list[-1][0] != prefix:
            stack_list.append([prefix, 0])
        stack_list[-1][1] += 1
    return BlockPlan(
        stacks=tuple((p, c) for p, c in stack_list),
        units=tuple("+".join(f"{p}.{i}" for p, i in group) for group in groups),
        assignment=assignment,
    )


def is_scalar(node: fx.Node) -> bool:
    """True for nodes computing a Python/symbolic number, not a tensor."""
    return isinstance(node.meta.get("example_value"), SCALARS)


LATENT_NAMES = ("hidden_states", "sample", "latents", "latent", "x", "img", "z", "noisy_latents")


def _on_latent_stream(gm: fx.GraphModule, nodes, owner, stacks: List[str]) -> List[str]:
    """The stacks that read the noisy latent.  A stack that does not (WanAnimate's motion
    encoder on the face frames, a text-token refiner) conditions the denoiser: it is computed
    exactly at every step, in the prologue (HunyuanVideo 1.5's text refiner, alone in the graph
    before a graph break, is no stack to speculate over).  Applies only where a graph input is
    named like the latent (``hidden_states``, ``x``...)."""
    latent = [n for n in gm.graph.nodes if n.op == "placeholder"
              and re.sub(r"^[lL]_(kwargs_)?", "", n.name).rstrip("_") in LATENT_NAMES]
    if not latent or not stacks:
        return stacks
    reads = set(latent)
    for n in nodes:
        if any(a in reads for a in n.all_input_nodes):
            reads.add(n)
    return [p for p in stacks if any(n in reads for n in nodes if owner[n] and owner[n][0] == p)]


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


def group_interleaved(keys: List[Tuple[str, int]]) -> Tuple[List[Tuple[Tuple[str, int], ...]], Tuple[str, ...]]:
    """The units: one per block, except where stacks alternate (Latte: a spatial block, then a
    temporal one; ConsisID: a face cross-attention every few blocks).  There the *leader* (the
    interleaved stack with the most blocks) starts a unit at each of its blocks, and the blocks of
    the other interleaved stacks join the unit they follow (or, before the leader's first block,
    the first unit): the repeating group is the unit.  Returns the units and the interleaved
    stacks (in graph order)."""
    runs: Dict[str, int] = defaultdict(int)
    for i, (prefix, _) in enumerate(keys):
        if i == 0 or keys[i - 1][0] != prefix:
            runs[prefix] += 1
    split = [p for p, count in runs.items() if count > 1]
    if not split:
        return [(k,) for k in keys], ()
    position = {k: i for i, k in enumerate(keys)}
    lo = min(position[k] for k in keys if k[0] in split)
    hi = max(position[k] for k in keys if k[0] in split)
    interleaved = tuple(dict.fromkeys(p for p, _ in keys[lo:hi + 1]))
    sizes = defaultdict(int)
    for prefix, _ in keys:
        sizes[prefix] += 1
    leader = max(interleaved, key=lambda p: sizes[p])     # the first of the largest
    groups: List[List[Tuple[str, int]]] = []
    open_group = False      # the last group is an interleaved one that later blocks may join
    for key in keys:
        if key[0] not in interleaved:
            groups.append([key])
            open_group = False
        elif key[0] == leader:
            if open_group and not any(p == leader for p, _ in groups[-1]):
                groups[-1].append(key)    # blocks before the leader's first one join its group
            else:
                groups.append([key])
            open_group = True
        elif open_group:
            groups[-1].append(key)
        else:
            groups.append([key])
            open_group = True
    return [tuple(g) for g in groups], interleaved


def _order_problem(keys: List[Tuple[str, int]]) -> Optional[str]:
    """Why the blocks (sorted by first op) cannot be run as one chain of units, if they cannot."""
    for prefix in dict.fromkeys(p for p, _ in keys):
        indices = [i for p, i in keys if p == prefix]
        if indices != sorted(indices):
            return f"the blocks of stack {prefix!r} do not run in index order"
    return None
