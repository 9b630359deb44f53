"""Issue 16: no engine runs unchecked.

Each variant an engine builds is compared with the eager segment on its first
real call (runtime/engine_check.py, runtime/engine.py ``CheckedEngine``).  A
wrong, non-finite, misshapen or failing engine makes its segment eager (with a
warning, the first call already returning eager's values) or raises
``LoweringError``; the verdict is kept beside cached ONNX files, so a later
engine over the same cache neither compares again nor builds a file known to
be wrong.

Fake engines (the eager segment with its outputs corrupted) test the wrapper
without building anything; one module fixture exports the reference DiT's
ONNX files once, and each test works on its own copy of that cache.
"""

from __future__ import annotations

import re
import shutil
import types
import warnings

import pytest
import torch

import speca_compile
from speca_compile.errors import LoweringError
from speca_compile.options import Options
from speca_compile.runtime import engine as engine_module
from speca_compile.runtime import engine_check, onnxruntime_engine
from speca_compile.runtime.eager_engine import EagerEngine
from speca_compile.runtime.engine import CheckedEngine, Engine
from speca_compile.runtime.engine_cache import file_digest
from tests import helpers

STEPS = 3


def _speca_warnings(caught):
    return [str(w.message) for w in caught if "speca: running segment" in str(w.message)]


def _engines(compiled):
    return {e["segment"]: e for e in speca_compile.stats(compiled)["per_graph"][-1]["engines"]}


def _eager_trajectory(z):
    return helpers.trajectory(z, z.model, 2, STEPS)


# ----------------------------------------------------------------------------- fake engines
def _corrupt(kind):
    def apply(outputs):
        first = outputs[0]
        if kind == "wrong":
            return [first * 1.05] + outputs[1:]
        if kind == "nan":
            first = first.clone(memory_format=torch.contiguous_format)
            first.view(-1)[0] = float("nan")
            return [first] + outputs[1:]
        if kind == "shape":
            return [first[:1]] + outputs[1:]
        raise RuntimeError("kernel exploded")
    return apply


class _Fake(Engine):
    """The eager segment, its outputs corrupted for one segment: a lowering that built fine and
    computes wrong numbers."""

    name = "fake"

    def __init__(self, segment, bad: str, corrupt):
        self.segment, self.inner = segment, EagerEngine(segment)
        self.bad, self.corrupt = bad, corrupt
        self.info = {"segment": segment.name, "builds": 1}
        self.calls = 0

    def run(self, inputs):
        self.calls += 1
        outputs = self.inner.run(inputs)
        return self.corrupt(outputs) if self.segment.name == self.bad else outputs


@pytest.fixture
def fake_lowering(monkeypatch):
    """Compile the reference DiT with every segment lowered to a ``_Fake`` engine; returns
    (model, compiled, fakes by segment)."""
    def compile_with(kind, on_error, bad="block_stack"):
        fakes = {}

        def lower(program, options):
            fakes.update({s.name: _Fake(s, bad, _corrupt(kind)) for s in program.all_segments})
            return dict(fakes)

        monkeypatch.setattr(engine_module, "_lower", lower)
        z = helpers.build("reference_dit")
        compiled = torch.compile(z.model, backend="speca", options={
            "lowering": "inductor", "on_lowering_error": on_error, "speculate": False})
        return z, compiled, fakes
    return compile_with


def test_a_wrong_engine_is_caught_on_its_first_call_and_the_segment_runs_eagerly(fake_lowering):
    z, compiled, fakes = fake_lowering("wrong", "eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = helpers.trajectory(z, compiled, 2, STEPS)
    assert helpers.rel_err(out, _eager_trajectory(z)) < 1e-5      # the first call too: eager's values
    (warning,) = _speca_warnings(caught)                           # one warning, naming segment and bound
    assert re.match(r"speca: running segment 'block_stack' eagerly .*: segment 'block_stack': fake disagrees "
                    r"with the eager segment: output 0 differs \(relative L2 error 5\.\d+e-02, bound 1e-04\)",
                    warning), warning
    assert fakes["block_stack"].calls == 1                         # never called after its first call
    info = _engines(compiled)
    assert info["block_stack"]["fallback"].startswith("eager (segment 'block_stack': fake disagrees")
    assert info["block_stack"]["checked"] is False and info["block_stack"]["check_bound"] == 1e-4
    assert info["block_stack"]["check_error"] == pytest.approx(0.05, rel=1e-3)   # outputs 1.05x eager
    for name in ("prologue", "epilogue"):
        assert info[name]["checked"] is True and info[name]["check_error"] == 0.0
        assert "fallback" not in info[name] and fakes[name].calls == STEPS


def test_a_wrong_engine_raises_naming_segment_error_and_bound_when_asked(fake_lowering):
    z, compiled, _ = fake_lowering("wrong", "raise")
    with pytest.raises(LoweringError, match=r"segment 'block_stack': fake disagrees with the eager segment: "
                                            r"output 0 differs \(relative L2 error 5\.\d+e-02, bound 1e-04\)"):
        helpers.trajectory(z, compiled, 2, 1)


class _Toy(Engine):
    """A one-output engine for a toy segment computing ``x * 2``: right, or corrupted."""

    name = "toy"

    def __init__(self, kind=None):
        self.kind, self.calls = kind, 0
        self.info = {"builds": 1}

    def run(self, inputs):
        self.calls += 1
        outputs = [inputs[0] * 2]
        return _corrupt(self.kind)(outputs) if self.kind else outputs


@pytest.mark.parametrize("kind, says", [
    ("nan", r"output 0 has 1 non-finite values where eager is finite \(relative L2 error inf, bound 1e-04\)"),
    ("shape", r"output 0 has shape \(1, 3\), eager \(2, 3\) \(relative L2 error inf, bound 1e-04\)"),
    ("raises", r"toy failed to run: RuntimeError: kernel exploded"),
])
def test_non_finite_misshapen_and_failing_engines_are_caught(kind, says):
    x = torch.randn(2, 3)
    fake = _Toy(kind)
    engine = CheckedEngine(fake, _toy_segment(), Options.parse({"lowering": "inductor", "on_lowering_error": "eager"}))
    with pytest.warns(UserWarning, match=r"running segment 'toy' eagerly .*: segment 'toy': .*" + says):
        torch.testing.assert_close(engine.run([x])[0], x * 2)
    torch.testing.assert_close(engine.run([x])[0], x * 2)
    assert fake.calls == 1 and engine.info["fallback"].startswith("eager (segment 'toy'")
    engine = CheckedEngine(_Toy(kind), _toy_segment(), Options.parse({"lowering": "inductor"}))
    with pytest.raises(LoweringError, match=r"segment 'toy': .*" + says):
        engine.run([x])


class _Variants(Engine):
    """An engine with one variant per input shape, right or wrong by a flag."""

    name = "variants"

    def __init__(self, factor=1.0):
        self.factor, self.info = factor, {"builds": 0}
        self.seen = set()

    def run(self, inputs):
        (x,) = inputs
        if x.shape not in self.seen:
            self.seen.add(x.shape)
            self.info["builds"] += 1
        return [x * 2 * self.factor]

    def variant_key(self, inputs):
        return tuple(inputs[0].shape)


def _toy_segment():
    return types.SimpleNamespace(name="toy", module=lambda x: (x * 2,))


def test_each_variant_is_checked_once(monkeypatch):
    compared = []
    real = engine_check.compare
    monkeypatch.setattr(engine_module, "compare", lambda *a: compared.append(1) or real(*a))
    engine = CheckedEngine(_Variants(), _toy_segment(), Options.parse({"lowering": "inductor"}))
    for shape in [(2, 3), (2, 3), (4, 3), (2, 3), (4, 3), (4, 3)]:
        torch.testing.assert_close(engine.run([torch.ones(shape)])[0], torch.full(shape, 2.0))
    assert len(compared) == 2
    assert engine.info["checked"] is True and engine.info["checked_variants"] == 2


def test_an_fp16_model_is_compared_at_half_precisions_bound():
    assert engine_check.bound_for("fp32", [torch.zeros(2)]) == engine_check.FP32_BOUND
    assert engine_check.bound_for("fp16", [torch.zeros(2)]) == engine_check.FP16_BOUND
    assert engine_check.bound_for("fp32", [torch.zeros(2, dtype=torch.float16), 3]) == engine_check.FP16_BOUND
    engine = CheckedEngine(_Variants(factor=1.001), _toy_segment(), Options.parse({"lowering": "inductor"}))
    with pytest.raises(LoweringError, match="bound 1e-04"):
        engine.run([torch.ones(3)])
    engine = CheckedEngine(_Variants(factor=1.001), _toy_segment(), Options.parse({"lowering": "inductor"}))
    engine.run([torch.ones(3, dtype=torch.float16)])
    assert engine.info["checked"] is True and engine.info["check_bound"] == engine_check.FP16_BOUND


# ------------------------------------------------------------------ ONNX Runtime, cached verdicts
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A cache holding the reference DiT's ONNX files, each checked (and its verdict written) by
    one compiled call; and the engines' stats from that call."""
    torch._dynamo.reset()
    directory = tmp_path_factory.mktemp("checked_engines")
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options=_ort(directory, "onnxruntime"))
    helpers.trajectory(z, compiled, 2, 1)
    info = _engines(compiled)
    torch._dynamo.reset()
    return directory, info


def _ort(directory, lowering="auto"):
    return {"lowering": lowering, "cache_dir": str(directory), "speculate": False}


@pytest.fixture
def cache(exported, tmp_path):
    """This test's own copy of the exported cache, and the first call's engine stats."""
    directory, info = exported
    shutil.copytree(directory, tmp_path / "cache")
    return tmp_path / "cache", info


@pytest.fixture
def counted(monkeypatch):
    """Eager comparisons and ONNX Runtime sessions made, by segment."""
    made = {"compare": 0, "sessions": []}
    real_compare, real_session = engine_check.compare, onnxruntime_engine.make_session

    def compare(*args):
        made["compare"] += 1
        return real_compare(*args)

    def session(path, on_gpu, what):
        made["sessions"].append(what)
        return real_session(path, on_gpu, what)

    monkeypatch.setattr(engine_module, "compare", compare)
    monkeypatch.setattr(onnxruntime_engine, "make_session", session)
    return made


def test_a_passing_engine_records_its_check_and_a_later_engine_does_not_repeat_it(cache, counted):
    directory, first = cache
    for name in ("prologue", "block_stack", "epilogue"):
        assert first[name]["checked"] is True and first[name]["checked_by"] == "eager"
        assert 0 <= first[name]["check_error"] < first[name]["check_bound"] == 1e-4
    assert len(list(directory.glob("*.checked"))) == 3
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options=_ort(directory, "onnxruntime"))
    out = helpers.trajectory(z, compiled, 2, STEPS)
    assert helpers.rel_err(out, _eager_trajectory(z)) < 1e-4
    assert counted["compare"] == 0                                 # the verdicts were read, not redone
    info = _engines(compiled)
    for name in ("prologue", "block_stack", "epilogue"):
        assert info[name]["cache"] == "hit" and info[name]["checked_by"] == "cache"
        assert info[name]["check_error"] == pytest.approx(first[name]["check_error"])


def _corrupt_file(path):
    """Perturb the largest weight of the ONNX file at ``path`` and re-save it with a matching
    checksum: a valid cache entry that computes wrong numbers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weight = max((w for w in model.graph.initializer if w.data_type == onnx.TensorProto.FLOAT),
                 key=lambda w: len(numpy_helper.to_array(w).reshape(-1)))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5 + 0.1, weight.name))
    onnx.save(model, str(path))
    path.with_name(path.name + ".sha256").write_text(file_digest(path) + "\n")


def test_a_wrong_cached_file_is_caught_and_its_verdict_remembered(cache, counted):
    directory, first = cache
    _corrupt_file(directory / first["block_stack"]["file"].rsplit("/", 1)[-1])
    z = helpers.build("reference_dit")
    eager = _eager_trajectory(z)

    compiled = torch.compile(z.model, backend="speca", options=_ort(directory))   # auto: fall back
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = helpers.trajectory(z, compiled, 2, STEPS)
    assert helpers.rel_err(out, eager) < 1e-5
    (warning,) = _speca_warnings(caught)
    assert "segment 'block_stack'" in warning and "bound 1e-04" in warning
    assert counted["compare"] == 1                                  # only the file with no verdict
    info = _engines(compiled)["block_stack"]
    assert info["checked"] is False and info["check_error"] > 1e-4 and "disagrees" in info["fallback"]
    failed = [p for p in directory.glob("*.checked") if '"passed": false' in p.read_text()]
    assert len(failed) == 1

    # a later engine over this cache falls back at once: no comparison, no session for the file
    for lowering in ("onnxruntime", "auto"):
        torch._dynamo.reset()
        counted["sessions"].clear()
        compiled = torch.compile(z.model, backend="speca", options=_ort(directory, lowering))
        if lowering == "onnxruntime":
            with pytest.raises(LoweringError, match=r"segment 'block_stack': .*relative L2 error .*"
                                                    r"bound 1e-04\); verdict cached in"):
                helpers.trajectory(z, compiled, 2, 1)
            continue
        with pytest.warns(UserWarning, match=r"running segment 'block_stack' eagerly.*verdict cached in"):
            out = helpers.trajectory(z, compiled, 2, STEPS)
        assert helpers.rel_err(out, eager) < 1e-5
        assert _engines(compiled)["block_stack"]["builds"] == 0
    assert counted["compare"] == 1
    assert not any("block_stack" in what for what in counted["sessions"])
