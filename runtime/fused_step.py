"""A denoising step as one compiled program: the fused full and speculative steps of a Runner.

The segment-by-segment runner executes a speculative step as a Python
sequence: prologue engine, forecast arithmetic in torch ops, verify-block
engine, the error, forecast, epilogue engine.  On a GPU every one of those is
a launch and a sync point for the Python thread; with few full steps the step
is launch-bound and a larger threshold was measured *slower* (issue 18).  Here
the step is one segment (``passes/fuse_step.py``) lowered as one engine:

* the **full step** (prologue, block stack, epilogue), giving the outputs and
  the state the feature cache records;
* the **speculative step**, one program per checked-or-not: every row of a
  checked sub-batch is checked (the runner already splits the rows due a check
  from the others), so the program needs no per-row branch.  Decisions still
  come out per sample: the program returns each row's error and the runner's
  policy judges it; rejected rows are recomputed by the full step.

The forecast weights and cached rows are inputs (``forecast_rows.forecast_terms``):
the program does not change as the cache fills.  One program is built per
shape of forecast (terms per group, which base stream each target stream is a
residual of, ranks and dtypes), so in practice three programs per model.

**Buckets.**  With ``step_buckets`` (default on CUDA: powers of two) a
sub-batch of n rows is padded to the smallest bucket >= n, so a step runs
on one of a few static shapes: what a CUDA graph needs (``cuda_graph_step``).
Padding rows are copies of the sub-batch's first row (any finite value would
do); they never reach a real row: no op of a DiT mixes rows (the runner's
mixed steps already rely on this, ``passes/side_values``), their errors and
outputs are cut off, and they touch no cache.  A test fills them with NaN
(``fill``) and checks the real rows are bit-identical.  Without buckets (CPU)
Inductor compiles each program once with a symbolic batch (``inductor_engine``).

Applies to linear forecasters (Taylor, Hermite: a weighted sum of cached
rows) and sliceable batches; FoCa's forecast runs its own predictor, so those
models run segment by segment (the reason is in ``stats``).
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from speca_compile.errors import LoweringError
from speca_compile.options import Options
from speca_compile.passes.fuse_step import (ERRORS, FORECAST_PREFIX, GroupForecast, cut_shapes, forecast_inputs,
                                            full_step_segment, speculative_step_segment)
from speca_compile.passes.partition import Segment, SpeculativeProgram
from speca_compile.runtime.feature_cache import FeatureGroup, pair_by_shape
from speca_compile.runtime.forecast_rows import forecast_terms
from speca_compile.runtime.verify import per_sample_error

FUSED_LOWERINGS = ("eager", "inductor")
CUDA_BUCKETS = tuple(2 ** i for i in range(9))   # 1 .. 256 rows


def resolve_fuse_steps(options: Options, example_inputs: Sequence) -> Tuple[Options, Optional[str]]:
    """``fuse_steps=None`` made concrete for one graph, and a note for ``stats``: on for the
    Inductor lowering on CUDA inputs at fp32, where a step is launch-bound and one program (a
    CUDA graph per bucket) is meant to pay; off on the CPU, where the measurement is mixed
    (``examples/fused_step_ab.py``: dit_digits 3-8 % slower than segment by segment, a mixed
    step's rows then running the prologue and epilogue once per path instead of once;
    flux_digits 16 % faster)."""
    if options.fuse_steps is not None:
        return options, None
    cuda = any(isinstance(v, torch.Tensor) and v.is_cuda for v in example_inputs)
    on = options.lowering == "inductor" and cuda and options.precision == "fp32"
    note = None
    if options.lowering == "inductor":
        note = ("fuse_steps: on (inductor on cuda: each step one program, CUDA graphs per bucket)" if on else
                f"fuse_steps: off by default ({'precision ' + repr(options.precision) if cuda else 'inputs on the cpu'}; "
                f"fuse_steps=True runs each step as one program)")
    return options.replace(fuse_steps=on), note


def why_not_fused(program: SpeculativeProgram, options: Options, batch_inputs, speculating: bool) -> Optional[str]:
    """None when the steps run fused, else why not (``stats`` notes it when asked for)."""
    if options.fuse_steps is False:
        return "fuse_steps=False"
    if options.lowering not in FUSED_LOWERINGS:
        return f"lowering {options.lowering!r} runs segment by segment (fused steps: {', '.join(FUSED_LOWERINGS)})"
    if options.fuse_steps is None:
        return "fuse_steps is resolved per graph by the backend (resolve_fuse_steps)"
    if options.precision != "fp32":
        return f"precision {options.precision!r} runs segment by segment"
    if not speculating:
        return "the model does not speculate"
    if program.verify_tokens is not None:
        return f"verify_stride={options.verify_stride} checks a token subset, which runs segment by segment"
    if program.stack is None:
        return "no fused block stack"
    if batch_inputs is None:
        return "the batched graph inputs are not known, so a sub-batch cannot be cut"
    if options.forecaster == "foca":
        return "forecaster 'foca' is not a weighted sum of cached rows"
    return _batch_tied(program, batch_inputs)


def _batch_tied(program: SpeculativeProgram, batch_inputs) -> Optional[str]:
    """Why a sub-batch cannot run a whole step: Dynamo gave the batch the symbol of another size
    equal to it when it traced (duck sizing: 16 rows of a 16x16 latent make one ``s0``), so the
    graph computes that axis from the row count.  The segment-by-segment runner runs the
    prologue and epilogue over every row in such steps; a fused step would cut them too."""
    batch_symbols = {str(program.shapes[program.placeholders[i]][0]) for i in batch_inputs
                     if program.shapes.get(program.placeholders[i])}
    batch_symbols = {b for b in batch_symbols if re.fullmatch(r"[a-z]+\d+", b)}
    for name in program.placeholders:
        shape = program.shapes.get(name) or ()
        lead = 1 if program.placeholders.index(name) in batch_inputs else 0
        for axis, size in list(enumerate(shape))[lead:]:
            tied = [b for b in batch_symbols if re.search(rf"\b{b}\b", str(size))]
            if tied:
                return (f"the batch size {tied[0]} also sizes axis {axis} of input {name!r} (Dynamo traced "
                        f"them equal), so a sub-batch cannot run a whole step")
    return None


def lower_step(segment: Segment, options: Options):
    """The engine of one step program: eager, or Inductor checked against eager on each
    variant's first call (``engine.CheckedEngine``), as every lowered segment is."""
    from speca_compile.runtime.eager_engine import EagerEngine
    from speca_compile.runtime.engine import CheckedEngine

    if options.lowering == "eager":
        return EagerEngine(segment)
    from speca_compile.runtime.inductor_engine import InductorEngine

    return CheckedEngine(InductorEngine(segment), segment, options)


class FusedSteps:
    """The fused step programs of one Runner, built on first use, one engine each."""

    def __init__(self, program: SpeculativeProgram, groups: Sequence[FeatureGroup], verify_unit: int,
                 leaves: Sequence[str], cache_cuts: Sequence[int], options: Options,
                 batch_inputs: Tuple[int, ...], make_engine: Callable[[Segment], object]):
        self.program, self.groups, self.verify_unit = program, tuple(groups), verify_unit
        self.leaves, self.cache_cuts = tuple(leaves), tuple(cache_cuts)
        self.metric = options.error_metric
        self.buckets = options.step_buckets
        self.make_engine = make_engine
        self.batched = {program.placeholders[i] for i in batch_inputs}
        self.state = set(program.placeholders) - set(program.user_inputs)   # module state: fixed addresses
        self.shapes = cut_shapes(program)
        self.capture_errors: List[str] = []   # CUDA graph captures that disagreed with their engine
        self.unfused_steps = 0   # speculative views run segment by segment (speculative returned None)
        self.fill: Optional[float] = None   # what padding rows hold (None: copies of the first row)
        self._programs: Dict[Hashable, Tuple[Segment, object]] = {}
        self._captured: Dict[Hashable, object] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ steps
    def full(self, env: Dict, rows: int) -> Dict:
        """The full step on ``env`` (the graph inputs of ``rows`` rows): the outputs and the
        state at the cache's cuts, by name (None for a cut's Python numbers, which the
        program does not give and the cache does not use: ``full_step_segment``)."""
        segment, engine = self._program(("full",), lambda: full_step_segment(
            self.program, self.leaves, self.cache_cuts))
        values = dict.fromkeys((n for c in self.cache_cuts for n in self.program.cuts[c]), None)
        values.update(zip(segment.outputs, self._run(("full",), segment, engine, env, rows)))
        return values

    def speculative(self, env: Dict, rows: Sequence[int], owner: Dict, checked: bool):
        """The speculative step on ``env`` (the graph inputs of the call rows ``rows``), every
        row checked or none: (the outputs by name, each row's error or None); None when a
        trajectory's cache paired its streams otherwise than the program would (sizes equal
        at run time that the graph keeps apart): the caller runs the step segment by segment."""
        env = dict(env)
        forecasts = []
        caches = {id(part.traj): part.traj.cache for part, _ in (owner[r] for r in rows)}
        for group in self.groups:
            weights, terms = forecast_terms(owner, group.name, rows)
            shaped = _shape(group, terms, self.shapes)
            if any(cache.pairings.get(group.name) != shaped.pairing for cache in caches.values()):
                return None
            env.update(zip(forecast_inputs(shaped, len(terms[0])),
                           [weights.to(terms[0][0].device)] + [t for per_k in terms for t in per_k]))
            forecasts.append(shaped)
        key = (checked, tuple(forecasts))
        segment, engine = self._program(key, lambda: speculative_step_segment(
            self.program, forecasts, self.verify_unit, checked, self.leaves,
            lambda predicted, real: per_sample_error(predicted, real, self.metric)))
        outputs = dict(zip(segment.outputs, self._run(key, segment, engine, env, len(rows))))
        return outputs, outputs.pop(ERRORS, None)

    def count(self) -> int:
        """Step programs built so far."""
        return len(self._programs)

    def engines(self) -> List:
        """The engines of the step programs built so far (their ``info`` goes into ``stats``)."""
        return [engine for _, engine in list(self._programs.values())]

    # --------------------------------------------------------------- helpers
    def _program(self, key: Hashable, build: Callable[[], Segment]):
        entry = self._programs.get(key)
        if entry is None:
            with self._lock:
                entry = self._programs.get(key)
                if entry is None:
                    segment = build()
                    entry = self._programs[key] = (segment, self.make_engine(segment))
        return entry

    def _run(self, key: Hashable, segment: Segment, engine, env: Dict, rows: int) -> List:
        cuda = _on_cuda(env[name] for name in segment.inputs)
        bucket = self._bucket(rows, cuda)
        values = [self._padded(name, env[name], rows, bucket) for name in segment.inputs]
        if bucket is not None and cuda:
            outputs = self._replay(key, bucket, segment, engine, values)
        else:
            outputs = engine.run(values)
        if bucket is None or bucket == rows:
            return list(outputs)
        return [o[:rows] if isinstance(o, torch.Tensor) and o.dim() and o.shape[0] == bucket else o
                for o in outputs]

    def _bucket(self, rows: int, cuda: bool) -> Optional[int]:
        buckets = self.buckets if self.buckets is not None else CUDA_BUCKETS if cuda else None
        if buckets is None:
            return None
        return next((b for b in buckets if b >= rows), None)

    def _padded(self, name: str, value, rows: int, bucket: Optional[int]):
        if bucket is None or bucket == rows or not (name in self.batched or name.startswith(FORECAST_PREFIX)):
            return value
        if not isinstance(value, torch.Tensor):
            return bucket if value == rows else value   # the sub-batch's size, as the view binds it
        extra = (bucket - rows,) + tuple(value.shape[1:])
        if self.fill is not None and value.is_floating_point():
            padding = value.new_full(extra, self.fill)
        else:
            padding = value[:1].expand(extra)
        return torch.cat([value, padding])

    def _replay(self, key: Hashable, bucket: int, segment: Segment, engine, values: List) -> List:
        from speca_compile.runtime.cuda_graph_step import CudaGraphStep

        static = [name in self.state for name in segment.inputs]
        captured = self._captured.get((key, bucket))
        if captured is False:   # its capture disagreed with the engine: run uncaptured
            return engine.run(values)
        if captured is None or not captured.fits(values):
            with self._lock:
                try:
                    captured = self._captured[(key, bucket)] = CudaGraphStep(engine.run, values, static)
                except LoweringError as exc:
                    self._captured[(key, bucket)] = False
                    self.capture_errors.append(f"{segment.name} at {bucket} rows: {exc}")
                    warnings.warn(f"speca: running {segment.name!r} without a CUDA graph: {exc}", stacklevel=2)
                    return engine.run(values)
        return captured(values)


def _shape(group: FeatureGroup, terms, shapes) -> GroupForecast:
    """The ``GroupForecast`` (what its program depends on) of ``group``'s cached terms;
    ``shapes``: ``passes.fuse_step.cut_shapes`` of the program, the streams' symbolic shapes,
    so the pairing the cache applies to real values (``residual_pairing``) holds for every
    batch and token count."""
    first = terms[0]
    return GroupForecast(group.name, group.base, group.target, len(terms),
                         pair_by_shape(shapes[group.target], shapes[group.base]),
                         tuple(t.dim() for t in first), tuple(t.dtype for t in first))


def _on_cuda(values: Sequence) -> bool:
    return any(isinstance(v, torch.Tensor) and v.is_cuda for v in values)
