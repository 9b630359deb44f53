"""What a segment's inputs and outputs are, for lowerings that take only tensors.

ONNX Runtime and TensorRT run graphs of tensors.  A Dynamo segment also takes
weights (graph inputs, since Dynamo lifts parameters), symbolic sizes
(``SymInt``: under dynamic shapes the batch and token counts) and symbolic
floats (``.item()`` of module constants), and its prologue returns such
scalars for the blocks.  ``analyze_segment`` sorts each input into

* ``weight``: module state, embedded in the engine as an initializer;
* ``tensor``: a real engine input;
* ``dim``:   a size, recomputed inside the engine from a tensor input's shape;
* ``const``: a float, or a size no tensor input carries, baked in at build
  time (the engine keeps one build per distinct tuple of such values);

and splits the outputs into tensor outputs (the engine's) and scalar outputs,
which a small eager ``scalar_program`` computes from the same inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx

from speca_compile.errors import LoweringError
from speca_compile.passes.find_blocks import is_scalar
from speca_compile.passes.partition import Segment, is_module_state


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    kind: str                                   # weight | tensor | dim | const
    dtype: Optional[torch.dtype] = None
    shape: Tuple[Optional[int], ...] = ()       # None marks a dynamic dimension
    source: Optional[object] = None             # dim: SizeExpr over tensor input sizes
    value: Optional[float] = None               # const (a float, or an int that is fixed)


@dataclasses.dataclass(frozen=True)
class SegmentIO:
    segment: str
    inputs: Tuple[InputSpec, ...]
    tensor_outputs: Tuple[int, ...]
    scalar_outputs: Tuple[int, ...]
    scalar_program: Optional[fx.GraphModule]

    @property
    def tensor_inputs(self) -> Tuple[int, ...]:
        return tuple(i for i, spec in enumerate(self.inputs) if spec.kind == "tensor")

    def describe(self) -> str:
        """What the spec hashes to: every input's kind, dtype and shape."""
        parts = [f"{s.name}:{s.kind}:{s.dtype}:{s.shape}:{s.source!r}:{s.value!r}" for s in self.inputs]
        return "|".join(parts) + f"|out={self.tensor_outputs}"


def _meta(node: fx.Node):
    return node.meta.get("example_value")


def analyze_segment(segment: Segment, values: Sequence) -> SegmentIO:
    """Classify ``segment``'s inputs given one call's concrete ``values``."""
    placeholders = [n for n in segment.module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(values):
        raise LoweringError(f"segment {segment.name!r}: {len(values)} values for "
                            f"{len(placeholders)} inputs")
    specs: List[InputSpec] = []
    for node, value in zip(placeholders, values):
        if isinstance(value, torch.Tensor):
            kind = "weight" if is_module_state(node) else "tensor"
            specs.append(InputSpec(node.name, kind, value.dtype, _shape_spec(node, value)))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LoweringError(f"segment {segment.name!r}: input {node.name!r} is a "
                                f"{type(value).__name__}, which no engine can take")
        else:
            expr = None if isinstance(value, float) else size_expression(node, placeholders, values)
            if expr is None:  # a float, a fixed int, or a size no tensor input carries
                specs.append(InputSpec(node.name, "const", value=value))
            else:
                specs.append(InputSpec(node.name, "dim", source=expr))
    outputs = _output_nodes(segment)
    scalar = tuple(i for i, n in enumerate(outputs) if is_scalar(n))
    tensor = tuple(i for i in range(len(outputs)) if i not in scalar)
    program = _scalar_program(segment, placeholders, [outputs[i] for i in scalar]) if scalar else None
    return SegmentIO(segment.name, tuple(specs), tensor, scalar, program)


def _shape_spec(node: fx.Node, value: torch.Tensor) -> Tuple[Optional[int], ...]:
    meta = _meta(node)
    if not isinstance(meta, torch.Tensor) or meta.dim() != value.dim():
        return tuple(value.shape)
    return tuple(s if isinstance(s, int) else None for s in meta.shape)


def size_expression(node, placeholders, values) -> Optional["SizeExpr"]:
    """This SymInt input as arithmetic over the sizes of the tensor inputs, or
    ``None`` when it is fixed or uses a size no tensor input carries (then the
    engine bakes the value in and is rebuilt for another one)."""
    meta = _meta(node)
    if not isinstance(meta, torch.SymInt) or meta.node.expr.is_number:
        return None
    expr = meta.node.expr
    axes = {}
    for j, (other, v) in enumerate(zip(placeholders, values)):
        meta = _meta(other)
        if isinstance(v, torch.Tensor) and not is_module_state(other) and isinstance(meta, torch.Tensor):
            for axis, size in enumerate(meta.shape):
                if not isinstance(size, int) and size.node.expr.is_symbol:
                    axes.setdefault(str(size.node.expr), (j, axis))
    if any(str(sym) not in axes for sym in expr.free_symbols):
        return None
    return SizeExpr(str(expr), {sym: axes[sym] for sym in sorted(map(str, expr.free_symbols))})


@dataclasses.dataclass(frozen=True)
class SizeExpr:
    """A size such as ``s33 // 2``: its text and where each symbol's value comes from."""

    text: str
    symbols: Dict[str, Tuple[int, int]]

    def evaluate(self, sizes: Dict[str, object]):
        """Evaluate with ``sizes[symbol]`` (ints, or SymInts while exporting)."""
        from torch.utils._sympy.functions import FloorDiv, Mod
        import sympy

        return _eval(sympy.sympify(self.text, locals={"FloorDiv": FloorDiv, "Mod": Mod}), sizes)


def _eval(expr, sizes):
    import sympy
    from torch.utils._sympy.functions import FloorDiv, Mod

    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        return sizes[str(expr)]
    args = [_eval(a, sizes) for a in expr.args]
    if isinstance(expr, sympy.Add):
        return sum(args[1:], args[0])
    if isinstance(expr, sympy.Mul):
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if isinstance(expr, FloorDiv):
        return args[0] // args[1]
    if isinstance(expr, Mod):
        return args[0] % args[1]
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) >= 0:
        out = 1
        for _ in range(int(expr.exp)):
            out = out * args[0]
        return out
    raise LoweringError(f"size expression {expr} uses {type(expr).__name__}, which the engines "
                        "cannot recompute")


def _output_nodes(segment: Segment) -> List[fx.Node]:
    out = next(n for n in segment.module.graph.nodes if n.op == "output")
    return list(out.args[0])


def _scalar_program(segment: Segment, placeholders: List[fx.Node], targets: List[fx.Node]) -> fx.GraphModule:
    """An fx graph with the segment's inputs computing only the scalar outputs."""
    needed = set()
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for n in segment.module.graph.nodes:
        if n.op == "placeholder":
            env[n] = graph.placeholder(n.name)
        elif n in needed:
            env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(tuple(env[t] for t in targets))
    return fx.GraphModule(segment.module, graph, class_name="SpecaScalars")


def baked_values(io: SegmentIO, values: Sequence) -> Tuple:
    """This call's values of the inputs an engine bakes in (``const``): an engine
    serves only calls with the same tuple, another tuple needs another build."""
    return tuple(values[i] for i, spec in enumerate(io.inputs) if spec.kind == "const")


def tensor_values(io: SegmentIO, values: Sequence) -> List[torch.Tensor]:
    return [values[i] for i in io.tensor_inputs]


def merge_outputs(io: SegmentIO, tensors: Sequence, values: Sequence) -> List:
    """Segment outputs in order: engine tensors, and scalars from the scalar program."""
    result: List = [None] * (len(io.tensor_outputs) + len(io.scalar_outputs))
    for i, t in zip(io.tensor_outputs, tensors):
        result[i] = t
    if io.scalar_program is not None:
        for i, s in zip(io.scalar_outputs, io.scalar_program(*values)):
            result[i] = s
    return result
