"""``precision="bf16"`` for the eager and Inductor lowerings: a segment computing in bfloat16.

The segment's arithmetic runs in bfloat16 while the runtime around it (the
feature cache, the forecasts, the verification error, the sampler) keeps the
model's dtype.  One object, ``Bf16Segment``, serves both lowerings: the eager
engine runs the graph it makes, the Inductor engine compiles that graph.  It
does two things:

* **Weights**: each float32 weight input (a parameter or buffer: Dynamo passes
  module state as graph inputs, ``segment_io.analyze_segment``) is replaced by
  one bfloat16 copy, kept process-wide by the weight's identity and
  ``._version`` (as ``segment_io.BakedValuesMemo`` keeps digests): a step
  costs one identity and version compare per weight, not a weight-sized cast,
  and a weight changed in place (``load_state_dict``, ``p.mul_()`` under
  ``no_grad``) is cast again on the next call.  The copy is made outside the
  graph on purpose: a cast inside it would run on every call (Inductor does
  not fold graph inputs), and the engines check that their weight inputs
  keep their dtypes anyway.  Segments sharing a weight (the block stack and
  the verify block) share its copy.  One-element weights (an epsilon, a rope
  theta, a scale baked in by ``.item()``) keep their dtype: they are values,
  not arithmetic, and bfloat16 would move a rope theta of 10000 to 9984.
* **The graph** (``bf16_graph``): a copy of the segment's fx graph whose
  float32 tensor inputs are cast to bfloat16 as they enter, whose body runs
  under ``torch.autocast(device, bfloat16)``, and whose floating outputs are
  cast back to the dtype the eager segment gives (its ``example_value``).
  Casts inside the graph cost nothing extra under Inductor: they fuse into the
  first kernel that reads the input and the last that writes the output.
  Autocast is needed because a graph Dynamo traced from a float32 model holds
  float32 explicitly: a sinusoidal timestep embedding built on
  ``torch.arange(dtype=torch.float32)``, diffusers' ``x.to(self.dtype)``
  recorded as ``x.to(torch.float32)``.  Without it those tensors would meet a
  bfloat16 weight in a matmul and fail ("expected both operands to have the
  same dtype"); with it every matmul, convolution and attention runs in
  bfloat16, and elementwise ops follow PyTorch's type promotion (bfloat16
  where every operand is, float32 where the model's graph upcast on purpose,
  as autocast's mixed precision does).  A tensor input of at most one
  dimension (one number per sample: the timestep, a guidance scale) keeps its
  dtype: bfloat16 has 8 significant bits, so a timestep of 999 would enter as
  1000 and its high-frequency sinusoids would be those of another timestep
  (measured against float32 on the tiny test models: PixArt's prologue 1.7e-1
  relative error with the timestep cast, 4.2e-3 with it kept; the DiT's block
  stack 1.4e-2 against 4.9e-3); the matmuls that embed it still run in
  bfloat16.

Inputs in another dtype (float64 scalars Dynamo passes as 0-d tensors, integer
labels, a model already in bfloat16) are left as they are.  The copies are
detached: this is an inference lowering.
"""

from __future__ import annotations

import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx

from speca_compile.passes.partition import Segment, is_module_state

BF16 = torch.bfloat16
_SOURCE = torch.float32   # what bf16 precision casts (the model's dtype is left alone otherwise)


def casts_input(node: fx.Node, value) -> bool:
    """Whether a segment input enters the bfloat16 graph as bfloat16: a float32 tensor that is
    not module state and has at least two dimensions (a per-sample vector such as the timestep
    keeps its value; see the module docstring)."""
    return (isinstance(value, torch.Tensor) and value.dtype == _SOURCE and value.dim() >= 2
            and not is_module_state(node))


def copies_weight(node: fx.Node, value) -> bool:
    """Whether a segment input is a float32 weight replaced by its bfloat16 copy."""
    return (isinstance(value, torch.Tensor) and value.dtype == _SOURCE and value.numel() > 1
            and is_module_state(node))


def bf16_graph(module: fx.GraphModule, cast: Sequence[int], device_type: str) -> fx.GraphModule:
    """A copy of ``module`` computing in bfloat16: placeholders ``cast`` (positions) converted as
    they enter, the body under autocast on ``device_type``, floating tensor outputs converted back
    to the dtype the original graph records for them (float32 where it records none)."""
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node in placeholders:
        env[node] = graph.node_copy(node, lambda a: env[a])
    uncast = dict(env)   # an input the segment returns as it is goes back as it came
    autocast = graph.call_function(torch.amp.autocast_mode._enter_autocast,
                                   (device_type, BF16, True, None))
    for i in cast:
        env[placeholders[i]] = graph.call_method("to", (env[placeholders[i]], BF16))
    output = None
    for node in module.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            output = node
            continue
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.call_function(torch.amp.autocast_mode._exit_autocast, (autocast,))

    def restore(node: fx.Node):
        if node in uncast:
            return uncast[node]
        value = env[node]
        meta = node.meta.get("example_value")
        if isinstance(meta, torch.Tensor):
            if not meta.is_floating_point():
                return value
            return graph.call_method("to", (value, meta.dtype))
        if meta is None:   # no record of what eager gives: bfloat16 goes back to float32
            return graph.call_function(_restore_float32, (value,))
        return value       # a Python number, a SymInt
    graph.output(fx.map_arg(output.args[0], restore))
    return fx.GraphModule(module, graph, class_name="SpecaBf16")


def _restore_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype == BF16:
        return value.to(_SOURCE)
    return value


# id(weight) -> (weakref to it, its version, its bfloat16 copy): one copy per weight, process-wide
_COPIES: Dict[int, Tuple[object, int, torch.Tensor]] = {}
_COPIES_LOCK = threading.Lock()
CASTS = {"count": 0}   # weights cast so far (tests count them: a step should add none)


def bf16_copy(t: torch.Tensor) -> torch.Tensor:
    """The bfloat16 copy of weight ``t``, made once per identity and version."""
    key = id(t)
    entry = _COPIES.get(key)
    version = t._version
    if entry is not None and entry[0]() is t and entry[1] == version:
        return entry[2]
    with torch.no_grad():
        copy = t.detach().to(BF16)
    with _COPIES_LOCK:
        CASTS["count"] += 1
        _COPIES[key] = (weakref.ref(t, lambda _, key=key: _forget(key)), version, copy)
    return copy


def _forget(key: int) -> None:
    with _COPIES_LOCK:
        entry = _COPIES.get(key)
        if entry is not None and entry[0]() is None:
            del _COPIES[key]


class Bf16Segment:
    """The bfloat16 form of one segment: its graph (per device type) and its weights' copies.

    ``inputs(values)`` gives the values the bfloat16 graph takes (the float32 weights replaced by
    their copies), ``module(values)`` the graph.  Which inputs are weights, and which enter as
    bfloat16, is decided on the first call's values (``casts_input`` / ``copies_weight``) and kept:
    the graph is the same for every call.  Each weight position remembers its last tensor, version
    and copy (one tuple, replaced whole, so threads read a consistent entry): a call whose weights
    are the ones seen last time costs one identity and version compare per weight."""

    def __init__(self, segment: Segment):
        self.segment = segment
        self.name = segment.name
        self._placeholders = [n for n in segment.module.graph.nodes if n.op == "placeholder"]
        self._weights: Optional[Tuple[int, ...]] = None   # positions of copied weights
        self._cast: Tuple[int, ...] = ()                  # positions cast inside the graph
        self._seen: List[Optional[Tuple[object, int, torch.Tensor]]] = []
        self._modules: Dict[str, fx.GraphModule] = {}
        self._lock = threading.Lock()

    def _plan(self, values: Sequence) -> None:
        with self._lock:
            if self._weights is not None:
                return
            pairs = list(zip(self._placeholders, values))
            self._cast = tuple(i for i, (n, v) in enumerate(pairs) if casts_input(n, v))
            self._seen = [None] * sum(copies_weight(n, v) for n, v in pairs)
            self._weights = tuple(i for i, (n, v) in enumerate(pairs) if copies_weight(n, v))

    def inputs(self, values: Sequence) -> List:
        """``values`` with each float32 weight replaced by its bfloat16 copy."""
        if self._weights is None:
            self._plan(values)
        args = list(values)
        seen = self._seen
        for position, i in enumerate(self._weights):
            t = args[i]
            entry = seen[position]
            if entry is not None and entry[0]() is t and entry[1] == t._version:
                args[i] = entry[2]
                continue
            if not (isinstance(t, torch.Tensor) and t.dtype == _SOURCE):
                continue   # not the float32 weight it was on the first call: passed as it is
            copy = bf16_copy(t)
            seen[position] = (weakref.ref(t), t._version, copy)
            args[i] = copy
        return args

    def module(self, values: Sequence) -> fx.GraphModule:
        """The bfloat16 graph for calls on ``values``' device (autocast is per device type)."""
        if self._weights is None:
            self._plan(values)
        device = next((v.device.type for v in values if isinstance(v, torch.Tensor)), "cpu")
        module = self._modules.get(device)
        if module is None:
            with self._lock:
                module = self._modules.get(device)
                if module is None:
                    module = self._modules[device] = bf16_graph(self.segment.module, self._cast, device)
        return module

    def run(self, values: Sequence) -> List:
        """The segment in bfloat16, eagerly."""
        args = self.inputs(values)
        return list(self.module(args)(*args))

    @property
    def builds(self) -> int:
        """The bfloat16 graphs made so far (one per device type, on its first call)."""
        return len(self._modules)
