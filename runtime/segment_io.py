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

import ast
import dataclasses
import operator
import threading
import weakref
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
    size = SizeExpr(str(expr), {sym: axes[sym] for sym in sorted(map(str, expr.free_symbols))})
    # the engines recompute the size from the text: keep it only if that gives this call's value
    # (else it is baked in, and another value means another build)
    concrete = {sym: values[j].shape[axis] for sym, (j, axis) in size.symbols.items()}
    try:
        if size.evaluate(concrete) != values[placeholders.index(node)]:
            return None
    except LoweringError:
        return None
    return size


@dataclasses.dataclass(frozen=True)
class SizeExpr:
    """A size such as ``2*((s33//2))``: its text (sympy's printing, as Dynamo's symbolic shapes
    print it) and where each symbol's value comes from."""

    text: str
    symbols: Dict[str, Tuple[int, int]]

    def evaluate(self, sizes: Dict[str, object]):
        """Evaluate with ``sizes[symbol]`` (ints, or SymInts while exporting).

        The text is read as the integer arithmetic it prints (``//`` is floor division,
        ``FloorDiv``, ``Mod``, ``PythonMod``, ``Max``, ``Min``), not through ``sympy.sympify``,
        which reads ``a//b`` as ``floor(a/b)``: rational arithmetic no engine recomputes
        (``2*((s77//2))``, the batch of a DiT that halves its input for CFG, failed with
        "size expression 1/2 uses Half")."""
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise LoweringError(f"size expression {self.text!r} cannot be parsed") from exc
        return _eval(tree.body, sizes, self.text)


def _eval(node, sizes, text):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name) and node.id in sizes:
        return sizes[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand, sizes, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, sizes, text), _eval(node.right, sizes, text)
        if isinstance(node.op, ast.Pow):
            if not isinstance(right, int) or right < 0:
                raise LoweringError(f"size expression {text!r}: power {right} is not a fixed "
                                    "non-negative integer")
            out = 1
            for _ in range(right):
                out = out * left
            return out
        return _BINARY[type(node.op)](left, right)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        args = [_eval(a, sizes, text) for a in node.args]
        fn = _FUNCTIONS[node.func.id]
        if node.func.id in ("Max", "Min"):
            symbolic = any(isinstance(a, torch.SymInt) for a in args)
            pick = (torch.sym_max if node.func.id == "Max" else torch.sym_min) if symbolic else fn
            out = args[0]
            for a in args[1:]:
                out = pick(out, a)
            return out
        if len(args) != 2:
            raise LoweringError(f"size expression {text!r}: {node.func.id} takes 2 arguments")
        return fn(*args)
    raise LoweringError(f"size expression {text!r} uses {ast.unparse(node)!r}, which the engines "
                        "cannot recompute")


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: None}
# sympy's Mod and torch's PythonMod of sizes (non-negative) are Python's %; FloorDiv is //
_FUNCTIONS = {"FloorDiv": operator.floordiv, "Mod": operator.mod, "PythonMod": operator.mod,
              "Max": max, "Min": min}


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
    """This call's values of what an engine bakes in: the ``const`` inputs, then a digest of each
    ``weight`` input.  An engine serves only calls with the same tuple; another tuple needs another
    build.  Weights count: Dynamo passes parameters as graph inputs and does not guard on which
    module they belong to, so one graph serves every instance of a block class (HunyuanVideo 1.5,
    whose forward breaks the graph per block, ran block 2 with block 1's baked weights)."""
    consts = tuple(values[i] for i, spec in enumerate(io.inputs) if spec.kind == "const")
    return consts + tuple(tensor_digest(values[i]) for i, spec in enumerate(io.inputs) if spec.kind == "weight")


class BakedValuesMemo:
    """``baked_values`` for one engine's calls, remembering each weight position's last tensor.

    Every call of an engine passes the same parameter objects, so a position whose tensor is the
    one seen last time, at the same version, keeps its digest: one identity and version compare
    per weight instead of a trip through the process-wide memo (68 weights a call of a DiT
    stack cost 0.3 ms a call, 4% of a speculative step).  Each position's entry is one tuple,
    replaced whole, so threads calling one engine read a consistent entry."""

    def __init__(self, io: SegmentIO):
        self.consts = [i for i, spec in enumerate(io.inputs) if spec.kind == "const"]
        self.weights = [i for i, spec in enumerate(io.inputs) if spec.kind == "weight"]
        self._seen: List[Optional[Tuple[object, int, str]]] = [None] * len(self.weights)

    def __call__(self, values: Sequence) -> Tuple:
        seen = self._seen
        digests = []
        for position, i in enumerate(self.weights):
            t = values[i]
            entry = seen[position]
            if entry is not None and entry[0]() is t and entry[1] == t._version:
                digests.append(entry[2])
                continue
            digest = tensor_digest(t)
            seen[position] = (weakref.ref(t), t._version, digest)
            digests.append(digest)
        return tuple(values[i] for i in self.consts) + tuple(digests)


# id(tensor) -> (weakref to it, its version counter, digest): each weight is hashed once (and again
# after an in-place change), then found by identity on every call
_DIGESTS: Dict[int, Tuple[object, int, str]] = {}
_DIGESTS_LOCK = threading.Lock()


# a weight of at most this many elements on the CPU is digested by its values, unmemoised: Dynamo
# passes a Python float it does not specialise (a module's scale, an epsilon) as a new 0-d float64
# tensor on every call, which the memo by identity never finds (22 sha256 hashes a DiT call)
SMALL_WEIGHT = 16


def tensor_digest(t: torch.Tensor) -> str:
    """A digest of ``t``'s contents (dtype, shape, bytes), memoised by identity and version; a
    small CPU tensor's is its values, read directly."""
    if t.device.type == "cpu" and t.numel() <= SMALL_WEIGHT:
        return f"{t.dtype}{tuple(t.shape)}{t.tolist()}"
    key = id(t)
    entry = _DIGESTS.get(key)
    version = t._version
    if entry is not None and entry[0]() is t and entry[1] == version:
        return entry[2]
    from speca_compile.runtime.engine_cache import weights_digest

    digest = weights_digest([t])[:24]
    with _DIGESTS_LOCK:
        _DIGESTS[key] = (weakref.ref(t, lambda _, key=key: _forget(key)), version, digest)
    return digest


def _forget(key: int) -> None:
    with _DIGESTS_LOCK:
        entry = _DIGESTS.get(key)
        if entry is not None and entry[0]() is None:
            del _DIGESTS[key]


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
