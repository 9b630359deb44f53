"""lowering="onnxruntime": every segment runs as an ONNX Runtime session, checked against eager."""

import pytest
import torch

import speca_compile
from speca_compile.runtime.engine_check import FP16_BOUND
from tests import helpers

pytest.importorskip("onnxruntime", reason="onnxruntime is a base dependency; this install lacks it")


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("engines"))


def ort(engines_dir, **options):
    return {"lowering": "onnxruntime", "cache_dir": engines_dir, **options}


def engine_info(compiled):
    """The engines built (a full step runs prologue, block_stack, epilogue; a per-block engine
    is built when the speculative path first runs that block)."""
    return [e for e in speca_compile.stats(compiled)["per_graph"][-1]["engines"] if e["builds"]]


@pytest.mark.parametrize("name", helpers.ALL_MODELS)
def test_full_path_matches_eager(name, engines_dir):
    z = helpers.build(name)
    eager = helpers.trajectory(z, z.model, 2, 10)
    compiled = torch.compile(z.model, backend="speca", options=ort(engines_dir, speculate=False))
    out = helpers.trajectory(z, compiled, 2, 10)
    assert helpers.rel_err(out, eager) < 1e-4
    info = engine_info(compiled)
    expected = ["prologue", "epilogue", "block_stack"] if speca_compile.stats(compiled)["blocks"] else ["whole_graph"]
    assert [e["segment"] for e in info] == expected
    assert all(e["builds"] == 1 for e in info)
    # each engine's first call was compared with eager (issue 16), within the fp32 bound
    assert all(e["checked"] is True and e["check_error"] < e["check_bound"] == 1e-4 for e in info)


@pytest.mark.parametrize("name", ["dit", "flux"])
def test_speculative_decisions_equal_the_eager_lowering(name, engines_dir):
    z = helpers.build(name)
    reference = torch.compile(z.model, backend="speca")
    expected = helpers.trajectory(z, reference, 2, 50, seed=2)
    eager_summary = speca_compile.stats(reference)["trajectories"][-1]
    torch._dynamo.reset()
    compiled = torch.compile(z.model, backend="speca", options=ort(engines_dir))
    out = helpers.trajectory(z, compiled, 2, 50, seed=2)
    summary = speca_compile.stats(compiled)["trajectories"][-1]
    assert summary["decisions"] == eager_summary["decisions"]
    assert helpers.rel_err(out, expected) < 1e-4
    # full steps run the fused stack, speculative ones the verify block alone: 4 engines in all
    verify = speca_compile.stats(compiled)["blocks"][-1]
    built = [e["segment"] for e in engine_info(compiled)]
    assert len(built) == 4 and built[1].endswith(f":{verify}") and built[-1] == "block_stack"


def test_one_export_serves_every_batch_size_under_dynamic_shapes(engines_dir):
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", dynamic=True,
                             options=ort(engines_dir, speculate=False))
    for batch in (2, 3, 5):
        eager = helpers.trajectory(z, z.model, batch, 4)
        assert helpers.rel_err(helpers.trajectory(z, compiled, batch, 4), eager) < 1e-4
    assert speca_compile.stats(compiled)["graphs"] == 1
    assert all(e["builds"] == 1 for e in engine_info(compiled))


def test_second_compile_loads_from_the_cache_and_a_weight_change_misses_it(tmp_path):
    z = helpers.build("reference_dit")
    options = ort(str(tmp_path), speculate=False)
    first = torch.compile(z.model, backend="speca", options=options)
    helpers.trajectory(z, first, 2, 2)
    assert {e["cache"] for e in engine_info(first)} == {"miss"}
    torch._dynamo.reset()
    second = torch.compile(z.model, backend="speca", options=options)
    helpers.trajectory(z, second, 2, 2)
    assert {e["cache"] for e in engine_info(second)} == {"hit"}

    with torch.no_grad():
        z.model.blocks[1].mlp[0].weight.add_(0.5)  # only block 1's weights change
    torch._dynamo.reset()
    third = torch.compile(z.model, backend="speca", options=options)
    out = helpers.trajectory(z, third, 2, 2)
    caches = {e["segment"]: e["cache"] for e in engine_info(third)}
    assert caches == {"prologue": "hit", "epilogue": "hit", "block_stack": "miss"}
    assert helpers.rel_err(out, helpers.trajectory(z, z.model, 2, 2)) < 1e-4


def test_a_corrupt_cache_file_is_reported_and_rebuilt(tmp_path):
    z = helpers.build("reference_dit")
    options = ort(str(tmp_path), speculate=False)
    helpers.trajectory(z, torch.compile(z.model, backend="speca", options=options), 2, 2)
    victim = sorted(tmp_path.glob("*.onnx"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    torch._dynamo.reset()
    compiled = torch.compile(z.model, backend="speca", options=options)
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        out = helpers.trajectory(z, compiled, 2, 2)
    events = [e["cache"] for e in engine_info(compiled)]
    assert events.count("corrupt") == 1 and events.count("hit") == len(events) - 1
    assert helpers.rel_err(out, helpers.trajectory(z, z.model, 2, 2)) < 1e-4


@pytest.mark.parametrize("name", ["dit", "flux"])
def test_fp16_engines_compute_in_half_precision_with_float32_inputs_and_outputs(name, engines_dir):
    """precision='fp16': the ONNX graphs compute in float16 (initializers converted), their inputs
    and outputs stay float32 (the cache and forecasts keep full precision); results are within
    half-precision error of eager, not equal to the float32 engines'."""
    import onnx

    z = helpers.build(name)
    eager = helpers.trajectory(z, z.model, 2, 10)
    compiled = torch.compile(z.model, backend="speca", options=ort(engines_dir, speculate=False, precision="fp16"))
    err = helpers.rel_err(helpers.trajectory(z, compiled, 2, 10), eager)
    assert 1e-6 < err < 1e-2
    for engine in engine_info(compiled):
        assert engine["checked"] is True and engine["check_bound"] == FP16_BOUND   # half precision's bound
        graph = onnx.load(engine["file"]).graph
        kinds = {i.data_type for i in graph.initializer}
        assert onnx.TensorProto.FLOAT16 in kinds, engine["segment"]
        io = [v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)]
        assert onnx.TensorProto.FLOAT16 not in io and onnx.TensorProto.FLOAT in io


def test_baked_values_memo_follows_identity_version_and_small_values():
    """An engine's per-call key (``BakedValuesMemo``) equals ``baked_values`` whatever the call
    passes: the same weights (found by identity), a weight changed in place (its version), another
    tensor of equal contents at the same position, and a small weight passed as a new tensor on
    every call (Dynamo's unspecialised floats), digested by its values."""
    from speca_compile.runtime.segment_io import BakedValuesMemo, InputSpec, SegmentIO, baked_values

    io = SegmentIO("s", (InputSpec("x", "tensor"), InputSpec("w", "weight"), InputSpec("c", "const", value=2.0),
                         InputSpec("eps", "weight")), (0,), (), None)
    memo = BakedValuesMemo(io)
    w = torch.randn(64, 64)
    calls = [[torch.randn(3), w, 2.0, torch.tensor(1e-6, dtype=torch.float64)] for _ in range(2)]
    keys = [memo(c) for c in calls]
    assert keys[0] == keys[1] == baked_values(io, calls[0])
    w.add_(1.0)   # in place: a new version, a new key
    changed = memo(calls[0])
    assert changed != keys[0] and changed == baked_values(io, calls[0])
    other = [calls[0][0], w.clone(), 2.0, torch.tensor(1e-5, dtype=torch.float64)]
    assert memo(other) == baked_values(io, other) != changed
    assert "1e-05" in memo(other)[-1] and "1e-06" in keys[0][-1]   # by value, not by a hash of it


def test_each_weight_is_hashed_once_per_process(tmp_path, monkeypatch):
    """The fused stack and the verify block bake in the same block's weights, and every engine's
    cache key depends on them: each weight is read (and, off the CPU, copied) once, then found by
    identity; an in-place change hashes it again."""
    import sys

    from speca_compile.runtime import engine_cache

    hashed = []
    real = engine_cache.weights_digest
    # every hash goes through engine_cache.weights_digest by attribute (what the spy sees)
    holders = [n for n, m in list(sys.modules.items())
               if n.startswith("speca_compile") and m is not engine_cache and getattr(m, "weights_digest", None) is real]
    assert not holders, f"{holders} import weights_digest by name: hash through segment_io.tensor_digest"
    monkeypatch.setattr(engine_cache, "weights_digest", lambda ts: (hashed.extend(id(t) for t in ts), real(ts))[1])
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options=ort(str(tmp_path)))
    helpers.trajectory(z, compiled, 2, 8)
    segments = {e["segment"] for e in engine_info(compiled)}
    assert "block_stack" in segments and any(s.startswith("block_") and s != "block_stack" for s in segments)
    assert len(hashed) == len(set(hashed)) > 0
    assert len(set(hashed)) <= sum(1 for _ in z.model.parameters()) + sum(1 for _ in z.model.buffers())
