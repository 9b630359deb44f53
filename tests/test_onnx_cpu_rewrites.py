"""The CPU rewrites of exported ONNX graphs (runtime/onnx_cpu_rewrites): which nodes they
rewrite, which they leave alone, and that ONNX Runtime computes the same outputs after."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from speca_compile.runtime.onnx_cpu_rewrites import (REWRITES_KEY, rewrite_file, rewrite_model,
                                                     rewrite_target)


def _session(model):
    """A session of a model object, or of a file (whose external weights lie beside it)."""
    import onnxruntime as ort

    source = str(model) if not isinstance(model, onnx.ModelProto) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _same_outputs(before, after, feeds, tol=1e-6):
    want = _session(before).run(None, feeds)
    got = _session(after).run(None, feeds)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        assert np.linalg.norm(g - w) <= tol * np.linalg.norm(w)


def _model(nodes, inputs, outputs, initializers=(), opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _layer_norm_model(axis=-1, scale=None, bias=None, extra_outputs=False, opset=20):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 6, 8])
    width = 8 if axis in (-1, 2) else 6 * 8
    inits = [numpy_helper.from_array(np.ones(width, np.float32) if scale is None else scale, "scale")]
    inputs = ["x", "scale"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs.append("bias")
    outs = ["y", "mean", "inv"] if extra_outputs else ["y"]
    node = helper.make_node("LayerNormalization", inputs, outs, axis=axis, epsilon=1e-5)
    graph_outputs = [y] + ([helper.make_tensor_value_info("mean", TensorProto.FLOAT, None)]
                           if extra_outputs else [])
    return _model([node], [x], graph_outputs, inits, opset)


@pytest.mark.parametrize("opset", [17, 20])
def test_layer_norm_without_affine_becomes_seven_ops(opset):
    model = _layer_norm_model(opset=opset)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert rewrite_model(rewritten) == {"layer_norm": 1, "rotary": 0}
    # scale all ones: no Mul by it; no bias: no Add of it
    assert _ops(rewritten) == ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Div"]
    assert "scale" not in {t.name for t in rewritten.graph.initializer}
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(0).standard_normal((5, 6, 8)).astype(np.float32) * 3 + 1
    _same_outputs(model, rewritten, {"x": x})


def test_layer_norm_keeps_its_scale_and_bias():
    rng = np.random.default_rng(1)
    model = _layer_norm_model(scale=rng.standard_normal(8).astype(np.float32),
                              bias=rng.standard_normal(8).astype(np.float32))
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert rewrite_model(rewritten)["layer_norm"] == 1
    assert _ops(rewritten)[-2:] == ["Mul", "Add"]
    assert [o.name for o in rewritten.graph.output] == ["y"]
    assert rewritten.graph.node[-1].output[0] == "y"
    _same_outputs(model, rewritten, {"x": rng.standard_normal((3, 6, 8)).astype(np.float32)})


@pytest.mark.parametrize("case", ["axis", "mean_output"])
def test_layer_norm_left_alone(case):
    """Over more than the last axis, or with its Mean output read: not rewritten."""
    model = _layer_norm_model(axis=1) if case == "axis" else _layer_norm_model(extra_outputs=True)
    before = model.SerializeToString()
    assert rewrite_model(model) == {"layer_norm": 0, "rotary": 0}
    assert model.SerializeToString() == before   # untouched, not even its metadata


def _rotary_model(negate_first=True, width=8, static=True):
    """diffusers' interleaved rotate-half as torch exports it: Reshape(..., D/2, 2), Slice each
    half, Squeeze, Neg one, Unsqueeze, Concat(-1), Reshape back."""
    dims = ["b", 6, width]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims if static else None)
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [c("pairs_shape", [0, 0, -1, 2]), c("zero", [0]), c("one", [1]), c("two", [2]),
             c("last", [-1])]
    inputs = [x]
    if static:
        inits.append(c("out_shape", [0, 0, width]))
    else:   # the shape is only known when it runs
        inputs.append(helper.make_tensor_value_info("out_shape", TensorProto.INT64, [3]))
    neg_of = "imag" if negate_first else "real"
    nodes = [
        helper.make_node("Reshape", ["x", "pairs_shape"], ["pairs"]),
        helper.make_node("Slice", ["pairs", "zero", "one", "last"], ["real_s"]),
        helper.make_node("Slice", ["pairs", "one", "two", "last"], ["imag_s"]),
        helper.make_node("Squeeze", ["real_s", "last"], ["real"]),
        helper.make_node("Squeeze", ["imag_s", "last"], ["imag"]),
        helper.make_node("Neg", [neg_of], ["negated"]),
        helper.make_node("Unsqueeze", ["negated", "last"], ["first"]),
        helper.make_node("Unsqueeze", ["real" if negate_first else "imag", "last"], ["second"]),
        helper.make_node("Concat", ["first", "second"], ["stacked"], axis=-1),
        helper.make_node("Reshape", ["stacked", "out_shape"], ["rotated"]),
        helper.make_node("Add", ["rotated", "x"], ["y"]),
    ]
    return _model(nodes, inputs, [y], inits)


@pytest.mark.parametrize("negate_first", [True, False])
def test_rotary_pairs_become_one_matmul(negate_first):
    model = _rotary_model(negate_first)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert rewrite_model(rewritten) == {"layer_norm": 0, "rotary": 1}
    assert _ops(rewritten) == ["MatMul", "Add"]
    matrix = numpy_helper.to_array(next(t for t in rewritten.graph.initializer
                                        if t.name.startswith("speca_rotary")))
    assert sorted(np.abs(matrix).sum(axis=0)) == [1] * 8   # one +-1 per column: exact
    x = np.random.default_rng(2).standard_normal((4, 6, 8)).astype(np.float32)
    _same_outputs(model, rewritten, {"x": x}, tol=0)
    meta = {p.key: p.value for p in rewritten.metadata_props}
    assert meta[REWRITES_KEY] == "layer_norm=0,rotary=1"


def test_rotary_keeps_the_reshape_when_the_output_shape_may_differ():
    model = _rotary_model(static=False)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert rewrite_model(rewritten)["rotary"] == 1
    assert _ops(rewritten) == ["MatMul", "Reshape", "Add"]
    x = np.random.default_rng(3).standard_normal((2, 6, 8)).astype(np.float32)
    _same_outputs(model, rewritten, {"x": x, "out_shape": np.array([0, 0, 8], np.int64)}, tol=0)


def test_concat_of_other_slices_left_alone():
    """A Concat of two slices that is not a rotation of pairs (both from the same half)."""
    model = _rotary_model()
    for node in model.graph.node:
        if node.op_type == "Unsqueeze" and node.input[0] == "real":
            node.input[0] = "imag"
    assert rewrite_model(model)["rotary"] == 0


class _Rotary(torch.nn.Module):
    def forward(self, x, cos, sin):
        from diffusers.models.embeddings import apply_rotary_emb

        return apply_rotary_emb(x, (cos, sin), use_real_unbind_dim=-1)


def test_diffusers_rotary_as_torch_exports_it(tmp_path):
    """The pattern as torch.onnx.export writes diffusers' apply_rotary_emb (Flux, SD3's RoPE
    models): found in the file, and the file computes the same as eager."""
    pytest.importorskip("diffusers")
    batch, heads, tokens, dim = 2, 2, 12, 16
    x = torch.randn(batch, heads, tokens, dim)
    angles = torch.randn(tokens, dim)
    args = (x, angles.cos(), angles.sin())
    path = tmp_path / "rotary.onnx"
    torch.onnx.export(_Rotary().eval(), args, str(path), dynamo=True, optimize=True,
                      input_names=["x", "cos", "sin"],
                      dynamic_shapes=({0: torch.export.Dim.AUTO}, None, None)).save(str(path))
    before = onnx.load(str(path))
    assert rewrite_file(path) == {"layer_norm": 0, "rotary": 1}
    after = onnx.load(str(path))
    assert "Neg" in _ops(before) and "Neg" not in _ops(after)
    feeds = {"x": torch.randn(3, heads, tokens, dim).numpy(), "cos": args[1].numpy(),
             "sin": args[2].numpy()}
    got = _session(after).run(None, feeds)[0]
    want = _Rotary()(*(torch.from_numpy(feeds[k]) for k in ("x", "cos", "sin"))).numpy()
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_rewrite_file_leaves_a_file_without_matches_unchanged(tmp_path):
    path = tmp_path / "plain.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])], [x],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]), str(path))
    before = path.read_bytes()
    assert rewrite_file(path) == {"layer_norm": 0, "rotary": 0}
    assert path.read_bytes() == before


def test_rewrite_target_names_the_device():
    assert rewrite_target([torch.zeros(1), 3, None]) == "cpu"
    if torch.cuda.is_available():
        assert rewrite_target([torch.zeros(1, device="cuda")]) == "cuda"


def test_rewrite_file_keeps_external_weights_where_they_are(tmp_path):
    """A large model's weights are beside its graph: the rewrite reads and rewrites only the graph."""
    rng = np.random.default_rng(4)
    model = _layer_norm_model(scale=rng.standard_normal(8).astype(np.float32),
                              bias=rng.standard_normal(8).astype(np.float32))
    path = tmp_path / "big.onnx"
    inline = onnx.ModelProto.FromString(model.SerializeToString())   # save() moves model's weights out
    onnx.save(model, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    data = (tmp_path / "big.onnx.data").read_bytes()
    assert rewrite_file(path)["layer_norm"] == 1
    assert (tmp_path / "big.onnx.data").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    _same_outputs(inline, path, {"x": rng.standard_normal((2, 6, 8)).astype(np.float32)})
