"""The Inductor lowering: each segment compiled by TorchInductor into fused C++/Triton kernels.

The runner executes inside a Dynamo-compiled frame, where ``torch.compile``
does not trace again, so the segment's fx graph goes to Inductor directly
(``compile_fx``, the function ``torch.compile``'s default backend calls).

One compilation serves every sub-batch size (issue 18).  The runtime decides
per sample, so under ``dynamic=True`` a segment sees sub-batches of every size
from 1 to the batch; compiling once per size made a trajectory at a new batch
size 92x slower than warm.  So the segment is compiled as Dynamo hands graphs
to backends under dynamic shapes: on fake inputs of a ``ShapeEnv`` of the
engine's own, in which every size the Dynamo graph kept symbolic is a symbol:

* the batch (the symbol leading most of the segment's tensor inputs) is an
  *unbacked* symbol, which Inductor may not specialise or guard on (no
  ``batch != 1`` assumption: one variant runs batch 1 too);
* other symbolic sizes (tokens) are backed symbols, which Inductor may guard on;
* integer inputs that are those sizes (the runner passes a sub-batch's size as an
  int) are the same symbols, not constants; floats are baked in.

Inductor code checks its inputs' sizes and strides only partly, so each variant
keeps the guards of its ``ShapeEnv`` (``produce_guards``: every static size,
stride and constant, each symbol's relations and ranges, each guard Inductor
added while compiling) and is used only for inputs that pass them and match its
dtypes, devices, ranks and grad mode.  An input signature seen for the first
time is checked once (and remembered); inputs no variant fits compile a new
one, counted in ``info["builds"]``.  A tensor input laid out otherwise than the
variant expects (e.g. not dense) is copied into its layout first.  Should the
symbolic compilation fail, the engine compiles with a backed batch, and last
with the call's static shapes, one variant per input signature (the behaviour
before issue 18); ``info["shapes"]`` says which, and why, and
``info["signatures"]`` counts the input signatures served.  Compiled kernels
persist in Inductor's own on-disk cache, so a second process recompiles quickly.

A segment that returns Python numbers (the prologue, when sizes or scalars are
hoisted into it) runs eagerly: Inductor compiles tensor programs only.  That
segment is the timestep and patch embedding, a small part of a step, and
``stats`` reports it as ``eager (returns non-tensor values)``.

Each compiled variant's first call is checked against eager
(``engine.CheckedEngine``), once per variant, in memory: a variant that serves
every sub-batch size is checked on the first size it runs.

Concurrent first calls with one signature compile once: the build runs under
the engine's lock and the threads that waited use its result (``info["builds"]``
counts compilations).  Calls whose signature was seen take no lock.
Compilations of different engines do not overlap either: they hold Dynamo's
``compile_lock``, as Inductor's own lazy backward compilation does, because
Inductor patches process-wide config and state while it compiles.

With ``precision="bf16"`` the engine compiles the segment's bfloat16 graph
(``runtime/precision.py``: float32 activations cast as they enter, the body
under autocast, outputs cast back, all fused into Inductor's kernels) and
passes each float32 weight as its cached bfloat16 copy, so the variants see
bfloat16 weights and a call casts none.  The first-call check compares with
the float32 eager segment, at bfloat16's bound.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import fx

from speca_compile.errors import LoweringError
from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.onnx_export import prepare_for_export
from speca_compile.runtime.segment_io import SegmentIO, analyze_segment, tensor_digest

# how each variant's shapes are made, tried in this order until one compiles and fits its own inputs
UNBACKED, BACKED, STATIC = "symbolic batch (unbacked)", "symbolic (backed)", "static"
_MODES = (UNBACKED, BACKED, STATIC)


def _signature(inputs: Sequence, item_weights: Sequence[int] = ()) -> Tuple:
    """What a call's inputs look like: shapes, strides, offsets, dtypes, devices, scalar values, the
    grad mode, and the contents of the one-element weights the compiled graph bakes in."""
    key = tuple((tuple(v.shape), v.stride(), v.storage_offset(), v.dtype, v.device)
                if isinstance(v, torch.Tensor) else (type(v).__name__, v) for v in inputs)
    return (torch.is_grad_enabled(), key, tuple(tensor_digest(inputs[i]) for i in item_weights))


def _kinds(inputs: Sequence) -> Tuple:
    """What no symbolic shape can cover: each tensor's dtype, device, rank and requires_grad;
    each scalar's type."""
    return (torch.is_grad_enabled(),) + tuple(
        (v.dtype, v.device, v.dim(), v.requires_grad) if isinstance(v, torch.Tensor) else type(v).__name__
        for v in inputs)


def _compile_lock():
    """Dynamo's process-wide compile lock (an RLock), or a lock of our own if torch moved it."""
    try:
        from torch._dynamo.convert_frame import compile_lock
    except ImportError:
        return _FALLBACK_COMPILE_LOCK
    return compile_lock


_FALLBACK_COMPILE_LOCK = threading.RLock()


# ------------------------------------------------------------------------------------ layouts
def _layout(t: torch.Tensor) -> Tuple[int, ...]:
    """``t``'s axes from outermost to innermost in memory.  A size-1 axis has no meaningful
    stride: it is placed as if it were contiguous with the axis after it (so a batch of one
    sample of a transposed tensor is laid out as the batch of several)."""
    sizes, strides = t.shape, t.stride()
    dims = t.dim()

    def rank(d):
        if sizes[d] == 1:
            return (d + 1 < dims and strides[d + 1] * sizes[d + 1]) or 1
        return strides[d]
    return tuple(sorted(range(dims), key=lambda d: (-rank(d), d)))


def _dense_strides(sizes: Sequence, layout: Sequence[int]) -> List:
    """Strides of a dense tensor of ``sizes`` (ints or SymInts) laid out in ``layout``."""
    strides: List = [1] * len(sizes)
    step = 1
    for d in reversed(layout):
        strides[d] = step
        step = step * sizes[d]
    return strides


def _fix(t: torch.Tensor, layout: Tuple[int, ...]) -> Optional[str]:
    """How ``t`` becomes a dense tensor laid out in ``layout``: None (it is one), "restride" (it is,
    but for the strides of size-1 axes: a free view) or "copy"."""
    if t.storage_offset() == 0:
        want = _dense_strides(t.shape, layout)
        have = t.stride()
        if tuple(want) == have:
            return None
        if all(w == h or s == 1 for w, h, s in zip(want, have, t.shape)):
            return "restride"
    return "copy"


def _apply(inputs: Sequence, fixes: Sequence[Tuple[int, str, Tuple[int, ...]]]) -> List:
    args = list(inputs)
    for i, how, layout in fixes:
        t = args[i]
        if how == "restride":
            args[i] = t.as_strided(t.shape, _dense_strides(t.shape, layout))
        else:
            args[i] = torch.empty_permuted(t.shape, layout, dtype=t.dtype, device=t.device).copy_(t)
    return args


# ------------------------------------------------------------------------------------ variants
class _Variant:
    """One compiled graph and the inputs it serves."""

    def __init__(self, key: Hashable, compiled: Callable, mode: str, kinds: Tuple,
                 layouts: Dict[int, Tuple[int, ...]], shape_env=None, guards: Optional[str] = None,
                 signature: Optional[Tuple] = None, symbols: str = ""):
        self.key, self.compiled, self.mode, self.kinds = key, compiled, mode, kinds
        self.layouts = layouts            # non-weight tensor input -> its expected layout
        self.shape_env, self.guards = shape_env, guards
        self.signature = signature        # a static variant serves this signature only
        self.symbols = symbols            # what is symbolic, for stats

    def fixes_for(self, inputs: Sequence, signature: Tuple) -> Optional[List]:
        """The layout fixes under which ``inputs`` fit this variant, or None if they do not fit."""
        if self.mode == STATIC:
            return [] if signature == self.signature else None
        if _kinds(inputs) != self.kinds:
            return None
        fixes = [(i, how, layout) for i, layout in self.layouts.items()
                 for how in [_fix(inputs[i], layout)] if how is not None]
        if self.guards is None:
            return fixes
        try:
            fits = bool(self.shape_env.evaluate_guards_expression(self.guards, _apply(inputs, fixes)))
        except Exception:  # noqa: BLE001  (a guard that cannot be evaluated does not hold)
            fits = False
        return fixes if fits else None


class _Plan:
    """How calls of one input signature run: on which variant, after which layout fixes."""

    __slots__ = ("variant", "fixes")

    def __init__(self, variant: _Variant, fixes: List):
        self.variant, self.fixes = variant, fixes


class _Eager:
    """The marker for a segment run eagerly (it returns Python numbers)."""


class InductorEngine(Engine):
    name = "inductor"

    def __init__(self, segment: Segment, precision: str = "fp32"):
        self.segment = segment
        self.precision = precision
        self.variants: Dict[Hashable, _Variant] = {}   # by key, in build order
        self.info = {"segment": segment.name, "builds": 0, "build_seconds": 0.0}
        self._bf16 = None
        if precision == "bf16":
            from speca_compile.runtime.precision import Bf16Segment

            self._bf16 = Bf16Segment(segment)
            self.info["precision"] = "bf16"
        self._plans: Dict[Tuple, _Plan] = {}          # input signature -> plan (read without the lock)
        self._eager = False
        self._failed: Dict[str, str] = {}              # mode -> why it did not
        self._item_weights: Tuple[int, ...] = ()
        self._build_lock = threading.Lock()   # one compilation per signature, however many threads ask

    def _module(self, inputs: Sequence) -> fx.GraphModule:
        """The graph this engine runs: the segment's, or its bfloat16 form."""
        return self.segment.module if self._bf16 is None else self._bf16.module(inputs)

    def run(self, inputs: Sequence) -> List:
        if self._bf16 is not None:
            inputs = self._bf16.inputs(inputs)   # float32 weights -> their cached bfloat16 copies
        if self._eager:
            return list(self._module(inputs)(*inputs))
        key = _signature(inputs, self._item_weights)
        plan = self._plans.get(key)
        if plan is None:
            with self._build_lock:
                if self._eager:
                    return list(self._module(inputs)(*inputs))
                key = _signature(inputs, self._item_weights)   # a first build may name item weights
                plan = self._plans.get(key)   # planned by the thread this one waited for?
                if plan is None:
                    plan = self._plan(list(inputs), key)
                    if plan is None:   # the segment runs eagerly
                        return list(self._module(inputs)(*inputs))
        args = _apply(inputs, plan.fixes) if plan.fixes else inputs
        return list(plan.variant.compiled(*args))

    def variant_key(self, inputs: Sequence):
        """The compiled variant the inputs ran on (checked once: in memory, as Inductor's own cache
        holds kernels, not verdicts); None for a segment that runs eagerly anyway (in bfloat16
        too: then its bfloat16 graph is checked once, as the variant ``("eager",)``)."""
        if self._bf16 is not None:
            inputs = self._bf16.inputs(inputs)
        if self._eager:
            return None if self._bf16 is None else ("eager",)
        plan = self._plans.get(_signature(inputs, self._item_weights))
        return None if plan is None else plan.variant.key

    # ------------------------------------------------------------------ planning (under the lock)
    def _plan(self, inputs: List, key: Tuple) -> Optional[_Plan]:
        """The plan for a signature seen for the first time: an existing variant the inputs fit,
        else a new one; None when the segment runs eagerly."""
        for variant in self.variants.values():
            fixes = variant.fixes_for(inputs, key)
            if fixes is not None:
                plan = self._plans[key] = _Plan(variant, fixes)
                self._count()
                return plan
        variant = self._build(inputs)
        if isinstance(variant, _Eager):
            self._eager = True
            return None
        self.variants[variant.key] = variant
        key = _signature(inputs, self._item_weights)
        fixes = variant.fixes_for(inputs, key)
        if fixes is None:   # _build only returns variants that fit the inputs they were built for
            raise LoweringError(f"segment {self.segment.name!r}: the Inductor variant does not fit "
                                "the inputs it was compiled for")
        plan = self._plans[key] = _Plan(variant, fixes)
        self._count()
        return plan

    def _count(self) -> None:
        self.info["signatures"] = len(self._plans)

    def _build(self, inputs: List):
        """Compile a variant for ``inputs``: symbolic where the Dynamo graph is, else static.
        Returns the variant, or ``_Eager`` for a segment returning Python numbers."""
        io_spec = analyze_segment(self.segment, inputs)
        if io_spec.scalar_outputs:
            self.info["runs"] = "eager (returns non-tensor values)"
            return _Eager()
        placeholders = [n for n in self.segment.module.graph.nodes if n.op == "placeholder"]
        self._item_weights = _item_weights(placeholders, io_spec, inputs)
        start = time.perf_counter()
        try:
            # .item() of one-element constants (an eps, a rope theta) becomes its number,
            # as for ONNX export: Inductor cannot trace data-dependent scalars
            module = prepare_for_export(self._module(inputs), io_spec, inputs)
        except Exception as exc:
            raise LoweringError(f"segment {self.segment.name!r}: Inductor could not compile it: "
                                f"{type(exc).__name__}: {exc}") from exc
        shapes = _Shapes(placeholders, io_spec, inputs)
        modes = [m for m in _MODES if m not in self._failed and (m == STATIC or shapes.symbolic)
                 and (m != UNBACKED or shapes.batch is not None)]
        key = (len(self.variants),)
        variant = None
        for mode in modes:
            try:
                with _compile_lock():
                    variant = self._compile(module, inputs, shapes, mode, key + (mode,))
                break
            except Exception as exc:  # noqa: BLE001  (the next mode is tried; the last one raises)
                if mode == STATIC:
                    raise LoweringError(f"segment {self.segment.name!r}: Inductor could not compile it: "
                                        f"{type(exc).__name__}: {exc}") from exc
                self._failed[mode] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}" \
                    if str(exc).strip() else type(exc).__name__
        self.info.update(builds=int(self.info["builds"]) + 1,
                         build_seconds=round(float(self.info["build_seconds"]) + time.perf_counter() - start, 3),
                         shapes=self._describe(variant))
        return variant

    def _describe(self, variant: _Variant) -> str:
        text = variant.mode + (f": {variant.symbols}" if variant.symbols else "")
        if variant.mode == STATIC:
            text += " (one variant per input signature)"
        failed = "; ".join(f"{mode} failed: {why}" for mode, why in self._failed.items())
        return text + (f" ({failed})" if failed else "")

    def _compile(self, module: fx.GraphModule, inputs: List, shapes: "_Shapes", mode: str,
                 key: Hashable) -> _Variant:
        from torch._inductor.compile_fx import compile_fx

        signature = _signature(inputs, self._item_weights)
        if mode == STATIC:
            return _Variant(key, compile_fx(module, inputs), STATIC, _kinds(inputs), {},
                            signature=signature)
        fakes, env, layouts, symbols = shapes.fake(mode)
        # Inductor's layout optimisation (channels-last for convolutions) asserts a stride its
        # fake kernels did not predict once the batch is an unbacked symbol (a DiT's patch
        # embedding, compiled with the rest of a fused step); a DiT has one such convolution
        from torch._inductor import config as inductor_config

        with inductor_config.patch(layout_optimization=False):
            compiled = compile_fx(module, fakes)
        guards = env.produce_guards_expression(fakes, ignore_static=False)
        variant = _Variant(key, compiled, mode, _kinds(inputs), layouts, env, guards, symbols=symbols)
        if variant.fixes_for(inputs, signature) is None:
            raise LoweringError("the compiled variant's guards reject the inputs it was compiled for")
        return variant


def _item_weights(placeholders: Sequence[fx.Node], io_spec: SegmentIO, inputs: Sequence) -> Tuple[int, ...]:
    """The one-element weights whose ``.item()`` ``prepare_for_export`` bakes in: the signature
    holds their contents."""
    return tuple(i for i, (node, spec) in enumerate(zip(placeholders, io_spec.inputs))
                 if spec.kind == "weight" and inputs[i].numel() == 1
                 and any(u.op == "call_method" and u.target == "item" for u in node.users))


class _Shapes:
    """A segment's inputs as fake tensors and SymInts, sized as the Dynamo graph says.

    Each size the Dynamo graph kept symbolic (a placeholder's ``example_value``) gets a symbol
    of the engine's own ShapeEnv, one per distinct Dynamo expression (``s47``, ``((s33//2))**2``):
    an int input that Dynamo knows as the same expression (the runner's sub-batch size) is the
    same symbol.  An expression over symbols that are sizes of their own (``2*s47``) is computed
    from theirs, so the relation stays known."""

    def __init__(self, placeholders: Sequence[fx.Node], io_spec: SegmentIO, inputs: Sequence):
        self.inputs, self.specs = list(inputs), io_spec.inputs
        self.metas = [p.meta.get("example_value") for p in placeholders]
        self.exprs: Dict[int, List[Optional[object]]] = {}   # input -> per axis: sympy expr or None
        self.ints: Dict[int, object] = {}                     # int input -> sympy expr
        leading = collections.Counter()
        for i, (value, spec, meta) in enumerate(zip(self.inputs, self.specs, self.metas)):
            if isinstance(value, torch.Tensor) and spec.kind != "weight":
                symbolic = isinstance(meta, torch.Tensor) and meta.dim() == value.dim()
                axes = [_expr(s) if symbolic else None for s in (meta.shape if symbolic else value.shape)]
                self.exprs[i] = axes
                if axes and axes[0] is not None and axes[0].is_symbol:
                    leading[axes[0]] += 1
            elif type(value) is int and _expr(meta) is not None:
                self.ints[i] = _expr(meta)
        self.symbolic = any(e is not None for axes in self.exprs.values() for e in axes) or bool(self.ints)
        # the batch: the symbol leading most tensor inputs (ties: the first input's)
        self.batch = leading.most_common(1)[0][0] if leading else None

    def fake(self, how: str):
        """For compilation mode ``how``: (fake inputs, their ShapeEnv, layout per non-weight tensor
        input, what is symbolic)."""
        from torch._dynamo.source import ConstantSource
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

        env = ShapeEnv()
        fake_mode = FakeTensorMode(shape_env=env)
        symbols: Dict[object, object] = {}   # Dynamo expr -> our SymInt (or int)
        values = self._values()

        def symbol_for(expr, value):
            if expr in symbols:
                return symbols[expr]
            if not expr.is_symbol and expr.free_symbols and all(s in symbols for s in expr.free_symbols):
                derived = _evaluate(expr, symbols)
                if derived is not None and (_has_unbacked(derived) or _hint(derived) == value):
                    symbols[expr] = derived
                    return derived
            source = ConstantSource(f"speca_size_{len(symbols)}")
            if how == UNBACKED and expr == self.batch:
                with env.ignore_fresh_unbacked_symbols():
                    sym = env.create_symbol(value, source, dynamic_dim=DimDynamic.UNBACKED)
                    symint = env.create_symintnode(sym, hint=None)
            else:
                sym = env.create_symbol(value, source, dynamic_dim=DimDynamic.DYNAMIC)
                symint = env.create_symintnode(sym, hint=value)
            symbols[expr] = symint
            return symint

        # bare symbols first, so that expressions over them can be computed from them
        for expr, value in sorted(values.items(), key=lambda kv: (not kv[0].is_symbol, str(kv[0]))):
            symbol_for(expr, value)
        fakes: List = []
        layouts: Dict[int, Tuple[int, ...]] = {}
        for i, (value, spec) in enumerate(zip(self.inputs, self.specs)):
            if i in self.exprs:
                sizes = [int(n) if e is None else symbols[e] for n, e in zip(value.shape, self.exprs[i])]
                layouts[i] = _layout(value)
                with fake_mode:
                    fakes.append(torch.empty_strided(sizes, _dense_strides(sizes, layouts[i]),
                                                     dtype=value.dtype, device=value.device,
                                                     requires_grad=value.requires_grad))
            elif isinstance(value, torch.Tensor):
                fakes.append(fake_mode.from_tensor(value, static_shapes=True))
            elif i in self.ints:
                fakes.append(symbols[self.ints[i]])
            else:
                fakes.append(value)
        return fakes, env, layouts, self._symbols(symbols, how)

    def _values(self) -> Dict[object, int]:
        values: Dict[object, int] = {}
        for i, axes in self.exprs.items():
            for size, expr in zip(self.inputs[i].shape, axes):
                if expr is not None:
                    values.setdefault(expr, int(size))
        for i, expr in self.ints.items():
            values.setdefault(expr, int(self.inputs[i]))
        return values

    def _symbols(self, symbols: Dict, how: str) -> str:
        free = [e for e, s in symbols.items() if isinstance(s, torch.SymInt) and not s.node.expr.is_number
                and s.node.expr.is_symbol]
        parts = []
        if self.batch in symbols and self.batch in free:
            parts.append("batch (any size)" if how == UNBACKED else "batch (2 or more)")
        others = [e for e in free if e != self.batch]
        if others:
            parts.append(f"{len(others)} other size{'s' if len(others) > 1 else ''}")
        return ", ".join(parts)


def _expr(value):
    """The sympy expression of a Dynamo SymInt that is not a number, else None."""
    if isinstance(value, torch.SymInt) and not value.node.expr.is_number:
        return value.node.expr
    return None


def _hint(value):
    """An int's value, a backed SymInt's hint (no guard is recorded), else None."""
    if isinstance(value, torch.SymInt):
        return value.node.hint
    return value if type(value) is int else None


def _has_unbacked(value) -> bool:
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    return isinstance(value, torch.SymInt) and bool(free_unbacked_symbols(value))


def _evaluate(expr, symbols: Dict):
    """``expr`` (a Dynamo size expression) computed from our SymInts for its symbols, or None."""
    from speca_compile.runtime.segment_io import SizeExpr

    try:
        return SizeExpr(str(expr), {}).evaluate({str(s): symbols[s] for s in expr.free_symbols})
    except Exception:  # noqa: BLE001  (not recomputable: the expression gets a symbol of its own)
        return None
