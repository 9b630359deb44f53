"""precision="bf16" (eager and Inductor segments in bfloat16) and the cache_dtype option (issue 18).

bf16: each segment computes in bfloat16 (runtime/precision.py: activations cast as they enter,
the body under autocast, outputs cast back; weights replaced by one cached bfloat16 copy each),
checked against the float32 eager segment at bfloat16's bound.  cache_dtype="bf16": the feature
cache stores its rows in bfloat16, forecasts are computed in the stream's dtype.
"""

from __future__ import annotations

import pytest
import torch

import speca_compile
from speca_compile import registry
from speca_compile.errors import OptionsError
from speca_compile.options import Options
from speca_compile.runtime import precision
from speca_compile.runtime.engine import resolve_lowering
from speca_compile.runtime.engine_check import BF16_BOUND, FP32_BOUND
from speca_compile.runtime.feature_cache import FeatureCache, FeatureGroup, add_base
from speca_compile.runtime.forecaster import combine_terms, make_forecaster, weight_tensor
from tests import helpers

BATCH, STEPS = 2, 3


def _engines(compiled):
    (runner,) = registry.runners_for(compiled)
    return runner.engines


def _eager_fp32(z, steps=STEPS):
    torch._dynamo.reset()
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "eager", "speculate": False})
    return helpers.trajectory(z, compiled, BATCH, steps)


def _assert_bf16_engines(compiled):
    """Every engine that ran is checked against float32 eager at bfloat16's bound, and differs
    from it by more than float32 noise: its arithmetic really ran in bfloat16."""
    infos = [e for e in speca_compile.stats(compiled)["per_graph"][-1]["engines"]]
    assert infos
    for info in infos:
        assert info["precision"] == "bf16", info
        assert info["checked"] is True and info["check_bound"] == BF16_BOUND, info
        assert 10 * FP32_BOUND < info["check_error"] < BF16_BOUND, info


# ------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("lowering", ["eager", "inductor", "auto"])
def test_bf16_is_accepted_with_eager_inductor_and_auto(lowering):
    assert Options.parse({"precision": "bf16", "lowering": lowering}).precision == "bf16"


@pytest.mark.parametrize("lowering", ["onnxruntime", "tensorrt"])
def test_bf16_is_refused_by_the_onnx_lowerings_naming_option_and_lowerings(lowering):
    with pytest.raises(OptionsError) as err:
        Options.parse({"precision": "bf16", "lowering": lowering})
    message = str(err.value)
    for fragment in ("'precision'", "'bf16'", "'eager'", "'inductor'", repr(lowering)):
        assert fragment in message, message


@pytest.mark.parametrize("lowering", ["eager", "inductor"])
def test_fp16_stays_onnx_only(lowering):
    with pytest.raises(OptionsError, match=r"'precision' 'fp16' needs lowering 'onnxruntime' or 'tensorrt'"):
        Options.parse({"precision": "fp16", "lowering": lowering})


def test_auto_resolves_bf16_to_inductor_on_the_cpu_and_eager_elsewhere():
    options = Options.parse({"precision": "bf16"})
    resolved, note = resolve_lowering(options, [torch.zeros(2)])
    assert resolved.lowering == "inductor" and resolved.precision == "bf16"
    assert "bf16" in note and "inductor" in note
    assert resolve_lowering(options, [torch.zeros(2, device="meta")])[0].lowering == "eager"
    # fp32 and fp16 keep ONNX Runtime on the cpu
    assert resolve_lowering(Options.parse({"precision": "fp16"}), [torch.zeros(2)])[0].lowering == "onnxruntime"


@pytest.mark.parametrize("value", ["fp16", "float16", "half", torch.bfloat16, 16])
def test_a_bad_cache_dtype_is_named(value):
    with pytest.raises(OptionsError) as err:
        Options.parse({"cache_dtype": value})
    assert "'cache_dtype'" in str(err.value) and "'bf16'" in str(err.value)


@pytest.mark.parametrize("value", [None, "fp32", "bf16"])
def test_cache_dtypes_accepted(value):
    assert Options.parse({"cache_dtype": value}).cache_dtype == value


# ------------------------------------------------------------------------------------ bf16 eager
@pytest.fixture(scope="module")
def dit():
    return helpers.build("dit")


def test_bf16_eager_is_close_to_fp32_and_really_bf16(dit):
    reference = _eager_fp32(dit)
    torch._dynamo.reset()
    compiled = torch.compile(dit.model, backend="speca",
                             options={"lowering": "eager", "precision": "bf16", "speculate": False})
    out = helpers.trajectory(dit, compiled, BATCH, STEPS)
    assert out.dtype == torch.float32
    assert 10 * FP32_BOUND < helpers.rel_err(out, reference) < BF16_BOUND
    _assert_bf16_engines(compiled)
    # the graph it runs: activations cast as they enter, the body under bfloat16 autocast
    engine = _engines(compiled)["block_stack"].engine
    module = next(iter(engine._bf16._modules.values()))
    targets = [n.target for n in module.graph.nodes if n.op == "call_function"]
    assert torch.amp.autocast_mode._enter_autocast in targets
    assert any(n.op == "call_method" and n.target == "to" and n.args[1] == torch.bfloat16
               for n in module.graph.nodes)


def test_weights_are_cast_once_and_again_after_an_in_place_change():
    dit = helpers.build("dit")   # weights of its own: no copy made by another test's compile
    torch._dynamo.reset()
    compiled = torch.compile(dit.model, backend="speca",
                             options={"lowering": "eager", "precision": "bf16", "speculate": False})
    x = helpers.noise_for(dit, BATCH, 0)
    extra = dit.make_inputs(BATCH, 1)
    before = precision.CASTS["count"]
    with torch.no_grad():
        first = dit.call(compiled, x, 999.0, extra)
    cast = precision.CASTS["count"] - before
    matrices = sum(p.numel() > 1 for p in dit.model.parameters())
    assert 0 < cast <= matrices + len(list(dit.model.buffers()))   # at most one copy per weight
    with torch.no_grad():
        for t in (999.0, 600.0, 300.0):
            again = dit.call(compiled, x, t, extra)
    assert precision.CASTS["count"] - before == cast              # no cast on later calls
    # a weight changed in place: its copy is made again, once, and the output follows
    weight = dit.model.proj_out_2.weight
    with torch.no_grad():
        original = weight.clone()
        weight.mul_(1.5)
        changed = dit.call(compiled, x, 999.0, extra)
        expected = dit.call(dit.model, x, 999.0, extra)
        weight.copy_(original)
    assert precision.CASTS["count"] - before == cast + 1
    assert helpers.rel_err(changed, expected) < BF16_BOUND
    assert helpers.rel_err(changed, first) > 10 * helpers.rel_err(first, dit.call(dit.model, x, 999.0, extra))
    del again


def test_weight_copies_are_shared_and_follow_the_version():
    w = torch.randn(4, 4)
    copy = precision.bf16_copy(w)
    assert copy.dtype == torch.bfloat16 and precision.bf16_copy(w) is copy
    with torch.no_grad():
        w.add_(1.0)
    fresh = precision.bf16_copy(w)
    assert fresh is not copy and torch.equal(fresh, w.to(torch.bfloat16))


# --------------------------------------------------------------------------------- bf16 inductor
def test_bf16_inductor_is_close_to_fp32_and_follows_weight_changes(dit):
    reference = _eager_fp32(dit)
    torch._dynamo.reset()
    compiled = torch.compile(dit.model, backend="speca",
                             options={"lowering": "inductor", "precision": "bf16", "speculate": False,
                                      "fuse_steps": False})
    out = helpers.trajectory(dit, compiled, BATCH, STEPS)
    assert out.dtype == torch.float32
    assert 10 * FP32_BOUND < helpers.rel_err(out, reference) < BF16_BOUND
    _assert_bf16_engines(compiled)
    stack = _engines(compiled)["block_stack"].engine
    (variant,) = stack.variants.values()
    # the compiled graph takes the weights as bfloat16 (activations enter as float32, cast inside)
    assert torch.bfloat16 in {k[0] for k in variant.kinds[1:] if isinstance(k, tuple)}
    builds = {name: e.info.get("builds") for name, e in _engines(compiled).items()}
    x, extra = helpers.noise_for(dit, BATCH, 0), dit.make_inputs(BATCH, 1)
    weight = dit.model.proj_out_2.weight
    with torch.no_grad():
        first = dit.call(compiled, x, 999.0, extra)
        original = weight.clone()
        weight.mul_(1.5)
        changed = dit.call(compiled, x, 999.0, extra)
        expected = dit.call(dit.model, x, 999.0, extra)
        weight.copy_(original)
    assert helpers.rel_err(changed, expected) < BF16_BOUND
    assert helpers.rel_err(changed, first) > 0.05
    assert {name: e.info.get("builds") for name, e in _engines(compiled).items()} == builds   # no rebuild


# ---------------------------------------------------------------------------------- cache dtype
def _fill(kind, dtype):
    forecaster = make_forecaster(kind, 2, 3, 0.5, dtype)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 4, generator=g)
    index = torch.arange(3)
    for t in (1.0, 0.9, 0.75, 0.6):
        forecaster.update(index, torch.full((3,), t, dtype=torch.float64), (base * (1 + t) + t ** 2,))
    forecaster.observe(index, torch.full((3,), 0.5, dtype=torch.float64), (base * 1.5 + 0.25,))
    forecaster.update(torch.tensor([1]), torch.tensor([0.6], dtype=torch.float64), (base[1:2] * 1.6 + 0.36,))
    return forecaster


@pytest.mark.parametrize("kind", ["taylor", "hermite", "foca"])
def test_bf16_cache_stores_bf16_halves_bytes_and_forecasts_in_the_stream_dtype(kind):
    full, half = _fill(kind, None), _fill(kind, torch.bfloat16)
    assert all(row.dtype == torch.bfloat16 for rows in half.diffs for row in rows)
    assert half.nbytes() * 2 == full.nbytes()
    index, at = torch.tensor([0, 2]), torch.tensor([0.4, 0.4], dtype=torch.float64)
    (want,), (got,) = full.predict(index, at), half.predict(index, at)
    assert got.dtype == torch.float32
    assert helpers.rel_err(got, want) < 1e-2


def test_combine_terms_upcasts_stored_rows_and_add_base_gives_the_stream_dtype():
    forecaster = _fill("taylor", torch.bfloat16)
    weights, rows = forecaster.linear_terms(torch.arange(3), torch.full((3,), 0.4, dtype=torch.float64))
    (combined,) = combine_terms(weight_tensor(weights, forecaster.terms), rows)
    assert rows[0][0].dtype == torch.bfloat16 and combined.dtype == torch.float32
    base16 = torch.zeros(3, 5, 4, dtype=torch.bfloat16)
    assert add_base((combined,), (base16,))[0].dtype == torch.bfloat16    # a bfloat16 model's stream
    assert add_base((combined,), (torch.zeros(3, 5, 4),))[0].dtype == torch.float32


def test_feature_cache_bytes_halve_exactly():
    caches = {d: FeatureCache([FeatureGroup("verify", 0, 1), FeatureGroup("rest", 1, 2)], "hermite", 1, 2,
                              cache_dtype=d) for d in (None, "fp32", "bf16")}
    index = torch.arange(2)
    for cache in caches.values():
        for t in (1.0, 0.8):
            state = torch.full((2, 6, 4), t)
            cache.update(index, torch.tensor([t, t]), {0: (state,), 1: (state * 2,), 2: (state * 3,)})
    assert caches[None].nbytes() == caches["fp32"].nbytes() == 2 * caches["bf16"].nbytes() > 0


def test_a_speculative_trajectory_with_a_bf16_cache_stays_close_and_stats_show_it(dit):
    runs = {}
    for cache_dtype in (None, "bf16"):
        torch._dynamo.reset()
        compiled = torch.compile(dit.model, backend="speca",
                                 options={"lowering": "eager", "cache_dtype": cache_dtype, "tau0": 0.3})
        out = helpers.trajectory(dit, compiled, BATCH, 10)
        runs[cache_dtype] = out, speca_compile.stats(compiled)["trajectories"][-1]
    (out32, traj32), (out16, traj16) = runs[None], runs["bf16"]
    assert traj16["speculative"] > 0 and traj16["decisions"] == traj32["decisions"]
    assert traj32["cache_bytes"] == 2 * traj16["cache_bytes"] > 0
    assert traj32["cache_dtype"] == "as computed" and traj16["cache_dtype"] == "bfloat16"
    assert out16.dtype == torch.float32
    assert helpers.rel_err(out16, out32) < 1e-3


def test_the_bf16_graph_casts_activations_keeps_vectors_and_returns_inputs_as_they_came():
    """A toy segment: ``x`` (2-d) enters as bfloat16, the per-sample ``t`` (1-d) keeps float32
    (bfloat16 would round 999 to 1000), the weight comes as its copy, a returned input is not
    rounded, and a matmul of a float32 intermediate with the bfloat16 weight runs (autocast)."""
    from speca_compile.passes.partition import Segment

    graph = torch.fx.Graph()
    x, t, w = graph.placeholder("x"), graph.placeholder("t"), graph.placeholder("l_self_w")
    freq = graph.call_function(torch.arange, (4,), {"dtype": torch.float32})   # float32 in the graph
    emb = graph.call_function(torch.mul, (graph.call_method("unsqueeze", (t, 1)), freq))
    out = graph.call_function(torch.matmul, (graph.call_function(torch.add, (x, emb)), w))
    graph.output((out, x, t))
    module = torch.fx.GraphModule(torch.nn.Module(), graph)
    values = [torch.randn(2, 4) + 1 / 3, torch.tensor([999.0, 500.0]), torch.randn(4, 4)]
    for node, value in zip([x, t, w], values):
        node.meta["example_value"] = value
    out.meta["example_value"] = values[0]
    segment = Segment("toy", module, ("x", "t", "l_self_w"), ("out", "x", "t"))
    bf16 = precision.Bf16Segment(segment)
    args = bf16.inputs(values)
    assert args[2].dtype == torch.bfloat16 and args[0] is values[0] and args[1] is values[1]
    graph16 = bf16.module(args).graph
    (cast,) = [n for n in graph16.nodes if n.op == "call_method" and n.target == "to" and n.args[1] == torch.bfloat16]
    assert cast.args[0].name == "x"   # x is cast in the graph; t is not
    got, same_x, same_t = bf16.run(values)
    want = (values[0] + values[1][:, None] * torch.arange(4.0)) @ values[2]
    assert got.dtype == torch.float32 and 1e-4 < helpers.rel_err(got, want) < BF16_BOUND
    assert torch.equal(same_x, values[0]) and torch.equal(same_t, values[1])
