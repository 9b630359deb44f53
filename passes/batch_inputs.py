"""Which graph inputs carry the batch dimension.

Per-sample decisions run the full path on a sub-batch (only the rejected
samples), so the runtime must slice exactly the inputs that are batched.  A
leading size equal to the batch size is not proof: Flux's ``txt_ids`` is
``[tokens, 3]`` and a test may well use as many tokens as samples.  So we
*probe*: grow a candidate set of inputs to batch+1 and propagate shapes with
fake tensors (no compute, no memory); the largest set for which the graph
still runs and every batched output grows with it is the batch set.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import List, Optional, Sequence, Tuple

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily

from speca_compile.passes.partition import SpeculativeProgram

MAX_PROBES = 64


def concrete_int(value) -> Optional[int]:
    """An int, or a SymInt's hint; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.SymInt):
        hint = value.node.hint
        return int(hint) if hint is not None else None
    return None


def find_batch_inputs(gm: fx.GraphModule, example_inputs: Sequence, program: SpeculativeProgram
                      ) -> Tuple[Optional[Tuple[int, ...]], str]:
    """Indices of batched graph inputs, or ``None`` when no probe succeeded.

    Returns ``(indices, note)``; the note says what was decided, for ``inspect``.
    """
    batch = concrete_int(program.batch_size)
    if batch is None:
        return None, "no batch size"
    user = set(program.user_inputs)
    candidates: List[int] = []
    for i, (name, value) in enumerate(zip(program.placeholders, example_inputs)):
        if name not in user:
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and concrete_int(value.shape[0]) == batch:
            candidates.append(i)
        elif concrete_int(value) == batch:
            candidates.append(i)
    if not candidates:
        return (), "no input has the batch size"

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    base = [_to_fake(mode, v) for v in example_inputs]
    batched_outputs = _batched_output_positions(gm, batch)
    tries = 0
    for size in range(len(candidates), 0, -1):
        for subset in itertools.combinations(candidates, size):
            tries += 1
            if tries > MAX_PROBES:
                return None, f"no batch set found within {MAX_PROBES} probes"
            if _probe(gm, mode, base, subset, batch, batched_outputs):
                names = [program.placeholders[i] for i in subset]
                return tuple(subset), f"batched inputs: {', '.join(names)}"
    if isinstance(program.batch_size, int):
        return None, (f"the graph has a static batch size ({batch}): a sub-batch of samples runs "
                      "as the whole batch with its rows kept; compile with dynamic=True to run "
                      "only the samples that need it")
    return None, "no candidate set of inputs grows the batch consistently"


def _to_fake(mode: FakeTensorMode, value):
    if isinstance(value, torch.Tensor):
        # 0-d constants stay real: graphs call .item() on them (Flux's rope theta),
        # which a fake tensor cannot answer.
        return value if value.dim() == 0 and not value.requires_grad else mode.from_tensor(value)
    hint = concrete_int(value)
    return hint if hint is not None else value


def _batched_output_positions(gm: fx.GraphModule, batch: int) -> List[int]:
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = fx.node.map_aggregate(output_node.args[0], lambda x: x)
    leaves = _flatten(flat)
    positions = []
    for i, leaf in enumerate(leaves):
        value = leaf.meta.get("example_value") if isinstance(leaf, fx.Node) else None
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and concrete_int(value.shape[0]) == batch:
            positions.append(i)
    return positions


def _flatten(tree) -> list:
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _flatten(item)]
    if isinstance(tree, dict):
        return [leaf for item in tree.values() for leaf in _flatten(item)]
    return [tree]


def run_resized(interpreter: fx.Interpreter, mode: FakeTensorMode, base: Sequence, indices, size: int):
    """Run ``interpreter`` on the fake inputs ``base`` with inputs ``indices`` resized to ``size``
    rows (a symbolic batch size input set to ``size``); raises what the graph raises."""
    inputs = list(base)
    with mode:
        for i in indices:
            value = inputs[i]
            if isinstance(value, torch.Tensor):
                inputs[i] = torch.empty((size,) + tuple(value.shape[1:]), dtype=value.dtype, device=value.device)
            else:
                inputs[i] = size
        with torch.no_grad(), _quiet("torch._subclasses.fake_tensor"):
            return interpreter.run(*inputs)


def _probe(gm, mode, base, subset, batch, batched_outputs) -> bool:
    try:
        result = run_resized(_ProbeInterpreter(gm), mode, base, subset, batch + 1)
    except Exception:  # a wrong set fails shape checks; that is the signal
        return False
    leaves = _flatten(result)
    return all(isinstance(leaves[p], torch.Tensor) and leaves[p].shape[0] == batch + 1
               for p in batched_outputs)


class _ProbeInterpreter(fx.Interpreter):
    """Runs the graph on fake tensors, but reads real 0-d constants for real."""

    def call_method(self, target, args, kwargs):
        if target == "item" and isinstance(args[0], torch.Tensor) and not isinstance(args[0], FakeTensor):
            with unset_fake_temporarily():
                return args[0].item()
        return super().call_method(target, args, kwargs)


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence a logger that reports the probe's expected shape errors as ERRORs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
