"""Fuse a whole denoising step into one segment: the full step, and the speculative step.

A step run as a Python sequence of segments and torch ops (prologue, forecast
arithmetic, verify block, error, forecast, epilogue) pays one engine call and
a dozen small tensor ops per segment boundary; on a GPU that is launch-bound
(issue 18: DiT-S/2 size on an H100 ran *slower* with fewer full steps).  As
one graph, a compiler fuses the forecast arithmetic into the kernels around
it, and the whole step can be captured as one CUDA graph.

Two builders, both pure functions of the program:

* ``full_step_segment``: prologue, block stack, epilogue; outputs the
  program's outputs and the state at the cuts the feature cache records.
* ``speculative_step_segment``: prologue; the forecast of each feature group
  (``sum_k w[:, k] * term_k`` plus the base stream it is a residual of, the
  arithmetic of ``forecaster.combine_terms`` and ``feature_cache.add_base``);
  with ``checked``, the verify block on the forecast state before it and the
  per-sample relative error of the forecast (``runtime/verify.py``'s, traced), the rest
  forecast from the *real* state after it (every row of a checked sub-batch
  is checked); the epilogue.  Outputs the program's outputs, then the errors.

The forecast inputs are named ``FORECAST_PREFIX + group + ...``: per group a
``[rows, terms]`` float64 weight tensor and ``terms x streams`` cached rows,
in the order ``forecast_inputs`` lists them.  Their placeholders carry fake
values with the batch symbol of the state they forecast, so a lowering that
compiles with a symbolic batch (Inductor) compiles the step once.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx

from speca_compile.passes.fuse_stack import chain_segments
from speca_compile.passes.partition import Segment, SpeculativeProgram

FULL_STEP = "full_step"
FORECAST_PREFIX = "speca_fc_"
ERRORS = "speca_errors"


@dataclasses.dataclass(frozen=True)
class GroupForecast:
    """How one feature group is forecast: cuts ``base`` -> ``target``, ``terms`` weighted rows
    per stream, for each target stream the base stream it is a residual of (None: the
    forecast is the state itself, ``feature_cache.residual_pairing``), and each target
    stream's rank and dtype (the forecast is computed in the stream's dtype, as
    ``combine_terms`` does)."""

    name: str
    base: int
    target: int
    terms: int
    pairing: Optional[Tuple[int, ...]]
    ranks: Tuple[int, ...]
    dtypes: Tuple[torch.dtype, ...]


def weight_name(group: str) -> str:
    return f"{FORECAST_PREFIX}{group}_w"


def term_name(group: str, k: int, stream: int) -> str:
    return f"{FORECAST_PREFIX}{group}_t{k}_{stream}"


def forecast_inputs(group: GroupForecast, streams: int) -> List[str]:
    """The forecast inputs of ``group`` in order: the weights, then term k's streams for each k."""
    return [weight_name(group.name)] + [term_name(group.name, k, s)
                                        for k in range(group.terms) for s in range(streams)]


def full_step_segment(program: SpeculativeProgram, outputs: Sequence[str], cache_cuts: Sequence[int]) -> Segment:
    """The full path as one segment giving ``outputs`` and the tensor state at ``cache_cuts``.
    A cut's Python numbers (a prologue's scalars a block reads) are left out: a compiler
    compiles tensor programs only, and the cache never uses them (a residual's base is a
    tensor of the target's shape, ``feature_cache.residual_pairing``)."""
    fakes = _fake_values(program)
    state = [n for c in cache_cuts for n in program.cuts[c] if isinstance(fakes.get(n), torch.Tensor)]
    return chain_segments(FULL_STEP, program.full_path, list(dict.fromkeys(list(outputs) + state)))


def speculative_step_segment(program: SpeculativeProgram, groups: Sequence[GroupForecast],
                             verify_unit: int, checked: bool, outputs: Sequence[str],
                             error: Callable) -> Segment:
    """The speculative path as one segment (module docstring); ``groups`` in order prefix,
    verify, rest, as ``feature_cache.feature_groups`` gives them; ``error(predicted, real)``:
    the per-sample error of the checked forecast, traced into the graph."""
    cuts = program.cuts
    fakes = _fake_values(program)
    pieces: List[Segment] = [program.prologue]
    for group in groups:
        is_verify = group.base == verify_unit
        targets = list(cuts[group.target])
        if is_verify and checked:
            forecast_names = [f"{FORECAST_PREFIX}{group.name}_out{s}" for s in range(len(targets))]
            pieces.append(_forecast_segment(group, list(cuts[group.base]), targets, forecast_names, fakes))
            pieces.append(program.units[verify_unit])
            pieces.append(_error_segment(forecast_names, targets, error))
        else:
            pieces.append(_forecast_segment(group, list(cuts[group.base]), targets, targets, fakes))
    pieces.append(program.epilogue)
    name = "speculative_step_checked" if checked else "speculative_step"
    return chain_segments(name, pieces, list(dict.fromkeys(outputs)) + ([ERRORS] if checked else []))


def _forecast_segment(group: GroupForecast, bases: List[str], targets: List[str], names: List[str],
                      fakes: Dict[str, object]) -> Segment:
    """``names[s] = base[pairing[s]] + sum_k w[:, k] * term_k[s]`` (or the sum alone)."""
    graph = fx.Graph()
    streams = len(targets)
    inputs = forecast_inputs(group, streams)
    weight = graph.placeholder(inputs[0])
    like = fakes.get(targets[0])
    if isinstance(like, torch.Tensor):
        with like.fake_mode:
            weight.meta["example_value"] = torch.empty((like.shape[0], group.terms), dtype=torch.float64,
                                                       device=like.device)
    terms = [[None] * streams for _ in range(group.terms)]
    for k in range(group.terms):
        for s in range(streams):
            node = terms[k][s] = graph.placeholder(term_name(group.name, k, s))
            if targets[s] in fakes:
                node.meta["example_value"] = fakes[targets[s]]
    base_nodes = []
    if group.pairing is not None:
        for b in bases:
            base_nodes.append(graph.placeholder(b))
            if b in fakes:
                base_nodes[-1].meta["example_value"] = fakes[b]
    results = []
    for s in range(streams):
        dtype, acc = group.dtypes[s], None
        for k in range(group.terms):
            column = graph.call_function(operator.getitem, (weight, (slice(None), k)))
            column = graph.call_method("to", (column, dtype))
            column = graph.call_method("reshape", (column, (-1,) + (1,) * (group.ranks[s] - 1)))
            term = graph.call_function(torch.mul, (graph.call_method("to", (terms[k][s], dtype)), column))
            acc = term if acc is None else graph.call_function(torch.add, (acc, term))
        if group.pairing is not None:
            acc = graph.call_function(torch.add, (base_nodes[group.pairing[s]], acc))
        results.append(acc)
    graph.output(tuple(results))
    module = fx.GraphModule({}, graph, class_name="SpecaForecast")
    inputs = inputs + (list(bases) if group.pairing is not None else [])
    return Segment(f"forecast_{group.name}", module, tuple(inputs), tuple(names))


def _error_segment(predicted: List[str], real: List[str], error: Callable) -> Segment:
    """``error(predicted, real)`` (the runtime's per-sample error, ``verify.per_sample_error``)
    traced into a segment: the fused step computes the error the segment runner computes."""
    graph = fx.Graph()
    tracer = fx.proxy.GraphAppendingTracer(graph)
    preds = [fx.Proxy(graph.placeholder(n), tracer) for n in predicted]
    reals = [fx.Proxy(graph.placeholder(f"{FORECAST_PREFIX}real{s}"), tracer) for s in range(len(real))]
    graph.output((error(preds, reals).node,))
    module = fx.GraphModule({}, graph, class_name="SpecaError")
    return Segment("forecast_error", module, tuple(predicted) + tuple(real), (ERRORS,))


def cut_shapes(program: SpeculativeProgram) -> Tuple[Tuple[Optional[Tuple[str, ...]], ...], ...]:
    """Each cut's streams' shapes as expressions (``"s0"``, ``"256"``: Dynamo's symbolic sizes,
    so equal shapes are equal for every batch and token count); None where a stream has no
    fake value."""
    fakes = _fake_values(program)

    def shape(name):
        value = fakes.get(name)
        return tuple(str(s) for s in value.shape) if isinstance(value, torch.Tensor) else None
    return tuple(tuple(shape(n) for n in names) for names in program.cuts)


def _fake_values(program: SpeculativeProgram) -> Dict[str, object]:
    """The fake value (Dynamo's ``example_value``, symbolic sizes) of every named value the
    program's segments take or give."""
    fakes: Dict[str, object] = {}
    for seg in program.segments:
        nodes = list(seg.module.graph.nodes)
        for node, name in zip([n for n in nodes if n.op == "placeholder"], seg.inputs):
            if "example_value" in node.meta:
                fakes.setdefault(name, node.meta["example_value"])
        out = next(n for n in nodes if n.op == "output")
        for value, name in zip(out.args[0], seg.outputs):
            if isinstance(value, fx.Node) and "example_value" in value.meta:
                fakes.setdefault(name, value.meta["example_value"])
    return fakes

