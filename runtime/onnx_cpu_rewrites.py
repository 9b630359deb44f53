"""Rewrites of an exported ONNX graph that make ONNX Runtime's CPU provider faster.

Applied by ``onnx_export.export_segment`` to float32 graphs whose inputs live on
the CPU (``rewrite_target``); the target is part of the file's cache key, so a
GPU export (TensorRT, ONNX Runtime's CUDA provider) keeps the graph as torch
exported it.  Every rewrite uses standard ONNX ops only (the file stays a plain
ONNX graph any runtime reads) and is exact or within float32 rounding.  The file
records what was rewritten in its metadata (``REWRITES_KEY``).

Why, measured on this project's 2-core CPU with ONNX Runtime 1.32 (50 rows of 64
tokens, 2 intra-op threads, the fused block stacks of the reference models):

* **LayerNormalization, decomposed.**  ORT's LayerNormalization kernel (also the
  one behind SimplifiedLayerNormalization, into which it fuses RMSNorm) ran 2x
  slower with 2 threads than with 1: 225 vs 114 us for 3200 rows of 64 channels,
  where torch's layer_norm takes 110 us.  The same arithmetic as separate ops
  (ReduceMean, Sub, Mul(d, d), ReduceMean, Add eps, Sqrt, Div, then the affine
  Mul/Add if the weights are not ones/zeros) takes 111 us.  ORT does not fuse it
  back (its LayerNormFusion looks for Pow).  At 512 rows the kernel and the
  decomposition are even (35.6 vs 40.8 us), so it is done unconditionally.
  Outputs agree to ~1e-6 relative.  The DiT reference's 12-block stack went from
  34.3-38.3 ms to 32.0-32.2 ms.
* **Interleaved rotary embedding as one MatMul.**  diffusers' ``apply_rotary_emb``
  rotates pairs with reshape (..., D/2, 2), unbind, neg, stack, flatten: eight
  ops that copy the tensor several times.  It is ``x @ R`` for a D x D matrix R
  with one +-1 per column (exact in float32: each output is one input times +-1
  plus zeros).  20 matches in the Flux reference stack (1017 -> 836 nodes),
  whose time went from 37.6-37.9 ms to 34.9-36.1 ms, and to 33.8-34.6 ms with
  both rewrites.

Not on GPUs: a MatMul there may run in TF32 (TensorRT's default), which would make
the rotation inexact, and the fused LayerNormalization is the fast path there.  A
bundle exported on the CPU holds the rewritten graph, checked against eager on the
CPU at export; run on a GPU provider, its rotation MatMuls are then as precise as
every other MatMul of that graph there (TF32 where the provider chooses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

REWRITES_KEY = "speca.cpu_rewrites"


def rewrite_target(values: Sequence) -> str:
    """``"cuda"`` when any of a segment's input values lives on a GPU, else ``"cpu"``: the
    device the exported file is for, and so whether ``rewrite_file`` applies."""
    return "cuda" if any(isinstance(v, torch.Tensor) and v.is_cuda for v in values) else "cpu"


def rewrite_file(path: Path) -> Dict[str, int]:
    """Apply the CPU rewrites to the ONNX file at ``path`` in place; returns how many of each
    were made.  The weights are not read (external data stays where it is), so a file of any
    size is rewritten in the memory of its graph."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    counts = rewrite_model(model)
    if any(counts.values()):
        onnx.save(model, str(path))
    return counts


def rewrite_model(model) -> Dict[str, int]:
    """Apply the CPU rewrites to a ``ModelProto`` in place; returns the count of each."""
    graph = _Graph(model)
    counts = {"layer_norm": 0, "rotary": 0}
    for node in list(model.graph.node):
        if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
            counts["layer_norm"] += graph.decompose_layer_norm(node)
    for node in list(model.graph.node):
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
            counts["rotary"] += graph.rotary_as_matmul(node)
    if any(counts.values()):
        graph.remove_dead()
        _set_metadata(model, REWRITES_KEY, ",".join(f"{k}={v}" for k, v in counts.items()))
    return counts


class _Graph:
    """Index of one graph: producers, consumers, constants, shapes; and the edits."""

    def __init__(self, model):
        import onnx

        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        try:   # shapes of the intermediate values; the exporter writes most of them already
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:   # noqa: BLE001 - inference is an aid: without it fewer patterns match
            inferred = self.graph
        self.types = {v.name: v.type for v in
                      [*inferred.value_info, *inferred.input, *inferred.output]}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.fresh = 0

    # --- reading ----------------------------------------------------------------
    def constant(self, name: str) -> Optional[np.ndarray]:
        """The value of ``name`` if it is an in-graph initializer or Constant, else None."""
        from onnx import numpy_helper
        from onnx.external_data_helper import uses_external_data

        tensor = self.initializers.get(name)
        if tensor is None:
            node = self.producer.get(name)
            if node is None or node.op_type != "Constant":
                return None
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
            if tensor is None:
                return None
        if uses_external_data(tensor):
            return None
        return numpy_helper.to_array(tensor)

    def shape(self, name: str) -> Optional[List]:
        """Dims of ``name`` (ints, symbol strings or None), or None when the rank is unknown."""
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.tensor_type.shape.dim]

    def elem_type(self, name: str) -> int:
        t = self.types.get(name)
        return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else 0

    def is_last_axis(self, axis: int, value: str) -> bool:
        if axis == -1:
            return True
        shape = self.shape(value)
        return shape is not None and axis == len(shape) - 1

    def axes(self, node, index: int = 1) -> Optional[List[int]]:
        """The axes of a Squeeze/Unsqueeze/Reduce node: its input ``index`` (opset >= 13/18)
        or its ``axes`` attribute."""
        for a in node.attribute:
            if a.name == "axes":
                return list(a.ints)
        if len(node.input) > index and node.input[index]:
            value = self.constant(node.input[index])
            return None if value is None else [int(v) for v in np.atleast_1d(value)]
        return None

    # --- writing ----------------------------------------------------------------
    def name(self, stem: str) -> str:
        self.fresh += 1
        return f"speca_{stem}_{self.fresh}"

    def add_constant(self, stem: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def replace(self, old, new_nodes: list) -> None:
        """Put ``new_nodes`` where ``old`` was (keeps the list in topological order)."""
        nodes = self.graph.node
        index = list(nodes).index(old)
        del nodes[index]
        for offset, node in enumerate(new_nodes):
            nodes.insert(index + offset, node)
        for node in new_nodes:
            for output in node.output:
                self.producer[output] = node

    def remove_dead(self) -> None:
        """Drop nodes and initializers nothing reads any more."""
        needed = {o.name for o in self.graph.output}
        keep = []
        for node in reversed(list(self.graph.node)):
            if any(o in needed for o in node.output):
                keep.append(node)
                needed.update(i for i in node.input if i)
                for attr in node.attribute:   # subgraphs read outer values
                    for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                        needed.update(_outer_reads(sub))
        keep.reverse()
        del self.graph.node[:]
        self.graph.node.extend(keep)
        unused = [t for t in self.graph.initializer if t.name not in needed]
        for tensor in unused:
            self.graph.initializer.remove(tensor)

    # --- the rewrites -------------------------------------------------------------
    def decompose_layer_norm(self, node) -> int:
        """LayerNormalization over the last axis -> ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div
        (+ Mul scale, Add bias); 1 if rewritten.  Left alone: other axes, a graph that reads the
        Mean/InvStdDev outputs, inputs that are not float32."""
        from onnx import TensorProto, helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x = node.input[0]
        if (not self.is_last_axis(int(attrs.get("axis", -1)), x)
                or any(o for o in node.output[1:]) or self.elem_type(x) != TensorProto.FLOAT
                or int(attrs.get("stash_type", 1)) != 1):
            return 0
        scale = node.input[1] if len(node.input) > 1 else ""
        bias = node.input[2] if len(node.input) > 2 else ""
        scale_value = self.constant(scale) if scale else None
        bias_value = self.constant(bias) if bias else None
        eps = self.add_constant("ln_eps", np.array(float(attrs.get("epsilon", 1e-5)), np.float32))
        nodes = []

        def op(kind, inputs, **kw):
            out = self.name(f"ln_{kind.lower()}")
            nodes.append(helper.make_node(kind, inputs, [out], name=out, **kw))
            return out

        def reduce_mean(value):
            if self.opset >= 18:
                axes = self.add_constant("ln_axes", np.array([-1], np.int64))
                return op("ReduceMean", [value, axes], keepdims=1)
            return op("ReduceMean", [value], axes=[-1], keepdims=1)

        centred = op("Sub", [x, reduce_mean(x)])
        variance = reduce_mean(op("Mul", [centred, centred]))
        y = op("Div", [centred, op("Sqrt", [op("Add", [variance, eps])])])
        if scale and not (scale_value is not None and np.all(scale_value == 1)):
            y = op("Mul", [y, scale])
        if bias and not (bias_value is not None and np.all(bias_value == 0)):
            y = op("Add", [y, bias])
        nodes[-1].output[0] = node.output[0]
        nodes[-1].name = node.name or nodes[-1].name
        self.replace(node, nodes)
        return 1

    def rotary_as_matmul(self, node) -> int:
        """Reshape(Concat([Unsqueeze([Neg](Squeeze(Slice(Reshape(x, [..., 2]))))) x 2], -1))
        -> MatMul(x, R) (reshaped as the original output when its shape may differ); 1 if
        rewritten.  R[2i + s, 2i + p] = sign: output p of each pair is sign * input s."""
        from onnx import helper

        concat = self.producer.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
            return 0
        if not self.is_last_axis(_int_attr(concat, "axis"), concat.output[0]):
            return 0
        pieces = [self._rotary_piece(value) for value in concat.input]
        if any(p is None for p in pieces) or pieces[0][0] != pieces[1][0]:
            return 0
        pairs = pieces[0][0]   # the Reshape(x, [..., D/2, 2]) both halves slice
        x = pairs.input[0]
        x_shape, pair_shape = self.shape(x), self.shape(pairs.output[0])
        if not x_shape or not pair_shape or pair_shape[-1] != 2 or not isinstance(x_shape[-1], int):
            return 0
        width = x_shape[-1]
        if width % 2 or sorted(p[1] for p in pieces) != [0, 1]:
            return 0
        dtype = {1: np.float32, 10: np.float16, 11: np.float64}.get(self.elem_type(x))
        if dtype is None:
            return 0
        rotation = np.zeros((width, width), dtype)
        for position, (_, source, sign) in enumerate(pieces):
            rotation[np.arange(source, width, 2), np.arange(position, width, 2)] = sign
        matrix = self.add_constant("rotary", rotation)
        if self.shape(node.output[0]) == x_shape and None not in x_shape:
            nodes = [helper.make_node("MatMul", [x, matrix], [node.output[0]], name=self.name("rotary"))]
        else:
            rotated = self.name("rotary")
            nodes = [helper.make_node("MatMul", [x, matrix], [rotated], name=rotated),
                     helper.make_node("Reshape", [rotated, node.input[1]], [node.output[0]],
                                      name=self.name("rotary_reshape"))]
        self.replace(node, nodes)
        return 1

    def _rotary_piece(self, value: str):
        """``(pairs_reshape, source_index, sign)`` when ``value`` is Unsqueeze(-1) of [Neg of]
        Squeeze(-1) of Slice(pairs, [s, s+1], axis -1); else None."""
        unsqueeze = self.producer.get(value)
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or self.axes(unsqueeze) != [-1]:
            return None
        inner, sign = self.producer.get(unsqueeze.input[0]), 1
        if inner is not None and inner.op_type == "Neg":
            inner, sign = self.producer.get(inner.input[0]), -1
        if inner is None or inner.op_type != "Squeeze" or self.axes(inner) != [-1]:
            return None
        slice_ = self.producer.get(inner.input[0])
        if slice_ is None or slice_.op_type != "Slice" or len(slice_.input) < 4:
            return None
        starts, ends, axes = (self.constant(slice_.input[i]) for i in (1, 2, 3))
        steps = self.constant(slice_.input[4]) if len(slice_.input) > 4 and slice_.input[4] else np.array([1])
        pairs = self.producer.get(slice_.input[0])
        if (starts is None or ends is None or axes is None or steps is None or pairs is None
                or pairs.op_type != "Reshape" or np.size(axes) != 1 or np.size(steps) != 1
                or int(np.ravel(steps)[0]) != 1
                or not self.is_last_axis(int(np.ravel(axes)[0]), slice_.input[0])):
            return None
        start, end = int(np.ravel(starts)[0]), int(np.ravel(ends)[0])
        if start not in (0, 1) or end != start + 1:
            return None
        return pairs, start, sign


def _int_attr(node, name: str, default: int = 0) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _outer_reads(graph) -> set:
    """Names a subgraph reads (a superset: everything its nodes take as input)."""
    reads = set()
    for node in graph.node:
        reads.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                reads |= _outer_reads(sub)
    return reads


def _set_metadata(model, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
