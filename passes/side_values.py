"""How the prologue's side values relate to the batch: one row per sample, shared, or its size.

A mixed step (some samples compute fully, some are checked, the rest forecast)
can run the prologue and the epilogue once over every row and only the middle
on each path's rows, instead of the whole graph once per path: on a served
batch or a large batch of samples with their own run lengths, that is two or
three prologue and epilogue calls saved per step.  The middle (the block stack
on the full rows, the verify block on the checked ones) then needs the
prologue's *side values* (what the blocks read besides the stream: timestep
embedding, text tokens, rotary tables, the batch size as a number) cut to its
rows.  A leading size equal to the batch is no proof that a value holds one
row per sample (a rotary table of as many positions as samples), so, as
``batch_inputs`` does for the graph inputs, we *probe*: propagate shapes with
fake tensors (no compute, no memory) at the batch and at batch + 1 and see
which side values grow with it.  A side value is

* ``"row"``: it leads with the batch and grows with it, the rest unchanged;
* ``"shared"``: the same shape at both sizes (a table every sample reads);
* ``"count"``: an integer equal to the batch size that grows with it;

and anything else (a value that grows in another axis, a probe that fails)
leaves the answer unknown: the runtime then runs each path's whole graph on
its rows, as before.  Cut states after the first block are one row per
sample by construction (``partition``) and are not side values; the stream
inputs at cut 0 are probed with them.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import fx

from speca_compile.passes.batch_inputs import _ProbeInterpreter, _to_fake, concrete_int, run_resized
from speca_compile.passes.partition import SpeculativeProgram

ROW, SHARED, COUNT = "row", "shared", "count"


def side_value_names(program: SpeculativeProgram) -> Tuple[str, ...]:
    """Values from the prologue that the blocks or the epilogue read: the stream inputs at cut 0
    among them (only the states at later cuts are one row per sample by construction; a value
    only block 0 reads, such as a shared table, is a stream input too)."""
    if not program.cuts:
        return ()
    placeholders = set(program.placeholders)
    states = {n for names in program.cuts[1:] for n in names}
    later = program.units + (program.epilogue,) + ((program.stack,) if program.stack is not None else ())
    names = {n for seg in later for n in seg.inputs if n not in placeholders and n not in states}
    return tuple(sorted(names))


def find_side_values(gm: fx.GraphModule, example_inputs: Sequence, program: SpeculativeProgram,
                     batch_inputs: Optional[Tuple[int, ...]]) -> Tuple[Optional[Tuple[Tuple[str, str], ...]], str]:
    """``((name, kind), ...)`` for every side value, or ``None`` when one cannot be told;
    with a note for ``inspect``."""
    batch = concrete_int(program.batch_size)
    names = side_value_names(program)
    if batch is None or batch_inputs is None:
        return None, "side values: not probed (no sliceable batch)"
    if not names:
        return (), "side values: none"
    at_batch = _shapes(gm, example_inputs, batch_inputs, batch, names)
    grown = _shapes(gm, example_inputs, batch_inputs, batch + 1, names)
    if at_batch is None or grown is None:
        return None, "side values: the shape probe failed; mixed steps run each path's whole graph"
    kinds = []
    for name in names:
        kind = _kind(at_batch.get(name), grown.get(name), batch)
        if kind is None:
            return None, (f"side values: {name!r} ({at_batch.get(name)} at batch {batch}, {grown.get(name)} "
                          f"at {batch + 1}) is neither one row per sample nor shared; mixed steps run each "
                          "path's whole graph")
        kinds.append((name, kind))
    rows = sum(1 for _, k in kinds if k == ROW)
    return tuple(kinds), f"side values: {rows} per row, {len(kinds) - rows} shared or sizes"


def _kind(small, large, batch: int) -> Optional[str]:
    if small is None or large is None:
        return None
    if small[0] == "int" and large[0] == "int":
        if small[1] == large[1]:
            return SHARED
        return COUNT if (small[1], large[1]) == (batch, batch + 1) else None
    if small[0] != "tensor" or large[0] != "tensor":
        return SHARED if small == large and small[0] == "other" else None
    a, b = small[1], large[1]
    if a == b:
        return SHARED
    if len(a) == len(b) and len(a) >= 1 and (a[0], b[0]) == (batch, batch + 1) and a[1:] == b[1:]:
        return ROW
    return None


def _shapes(gm, example_inputs, batch_inputs, size: int, names) -> Optional[Dict[str, Tuple]]:
    """Each of ``names``' (kind, shape or value) with the batched inputs at ``size`` rows."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    seen: Dict[str, Tuple] = {}
    try:
        run_resized(_Recorder(gm, set(names), seen), mode, [_to_fake(mode, v) for v in example_inputs],
                    batch_inputs, size)
    except Exception:   # a graph that cannot run at another size: unknown
        return None
    return seen


class _Recorder(_ProbeInterpreter):
    """The probe interpreter, keeping the shape (or integer value) of the named nodes."""

    def __init__(self, gm, wanted, seen):
        super().__init__(gm)
        self.wanted, self.seen = wanted, seen

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if n.name in self.wanted:
            if isinstance(result, torch.Tensor):
                self.seen[n.name] = ("tensor", tuple(int(d) for d in result.shape))
            elif concrete_int(result) is not None:
                self.seen[n.name] = ("int", concrete_int(result))
            else:
                self.seen[n.name] = ("other", repr(result))
        return result
