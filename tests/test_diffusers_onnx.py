"""The ONNX Runtime lowering on diffusers classes it once got wrong (issue 16), against eager.

Each class is built from diffusers' own tiny test config (``tests/diffusers_cases.py``: 2 blocks per
stack, batch 2) and run over a few decreasing timesteps.  What each test would have caught:

* HunyuanVideo 1.5 and HunyuanVideo Framepack break the graph per block, so one Dynamo graph serves
  every block with that block's weights as inputs; the engines bake weights in, and ran block 2
  with block 1's (6.5e-2, 1.2e-1).  HunyuanVideo 1.5 also masks whole query rows (absent image
  tokens), where torch's attention gives zeros and the exported one the mean of the values.
* Sana (int64 timestep): onnxscript's optimizer dropped the ``+ 1e-15`` of its linear attention
  as an ``x + 0`` no-op; ``0 / 0`` gave NaN.
* AuraFlow (9.4e-4) and AceStep (2.5e-3): timestep embeddings whose sine arguments reach 1e6, where
  one ulp of the frequency table (ONNX Runtime's ``Exp`` against torch's) moves the sine by 0.06.
* AnyFlow and WanAnimate 2 compute rotary embeddings with complex numbers, which ONNX Runtime
  cannot bind ("Numpy_type 15"): the export refuses those segments naming the dtype, and under
  ``on_lowering_error="eager"`` they run eagerly (reported in ``stats``).
"""

import pytest
import torch

import speca_compile
from speca_compile.errors import LoweringError
from tests import diffusers_cases as dc

pytest.importorskip("onnxruntime", reason="onnxruntime is a base dependency; this install lacks it")
pytest.importorskip("diffusers")

STEPS = 2
EXACT = ["HunyuanVideo15Transformer3DModel", "HunyuanVideoFramepackTransformer3DModel",
         "SanaTransformer2DModel", "AceStepTransformer1DModel", "AuraFlowTransformer2DModel"]
COMPLEX = ["AnyFlowTransformer3DModel", "WanAnimate2Transformer3DModel"]


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("diffusers_onnx_engines"))


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def fallbacks(compiled):
    return [f"{e['segment']}: {e['fallback']}" for g in speca_compile.stats(compiled)["per_graph"]
            for e in g["engines"] if e.get("fallback")]


@pytest.mark.parametrize("name", EXACT)
def test_full_path_matches_eager(name, engines_dir):
    case = dc.CASES[name]()
    eager = dc.trajectory(case, case.model, STEPS)
    compiled = torch.compile(case.model, backend="speca", options={
        "lowering": "onnxruntime", "on_lowering_error": "raise", "speculate": False, "cache_dir": engines_dir})
    out = dc.trajectory(case, compiled, STEPS)
    assert torch.isfinite(out).all()
    assert rel_err(out, eager) < 1e-4
    assert not fallbacks(compiled)


SPECULATE = {"warmup": 1, "tau0": 1e3, "acceptance": "step"}   # every forecast after the first step accepted


@pytest.mark.parametrize("name", ["SanaTransformer2DModel"])
def test_speculation_matches_the_eager_lowering(name, engines_dir):
    """The speculative path (forecasts, the verify block's own engine) equals the eager lowering's."""
    case = dc.CASES[name]()
    reference = torch.compile(case.model, backend="speca", options={"lowering": "eager", **SPECULATE})
    expected = dc.trajectory(case, reference, 3)
    decisions = speca_compile.stats(reference)["trajectories"][-1]["decisions"]
    torch._dynamo.reset()
    compiled = torch.compile(case.model, backend="speca", options={
        "lowering": "onnxruntime", "on_lowering_error": "raise", "cache_dir": engines_dir, **SPECULATE})
    out = dc.trajectory(case, compiled, 3)
    assert speca_compile.stats(compiled)["trajectories"][-1]["decisions"] == decisions
    assert sum(t["speculative"] for t in speca_compile.stats(compiled)["trajectories"]) > 0
    assert torch.isfinite(out).all() and rel_err(out, expected) < 1e-4


def _refused_by_name(case, engines_dir):
    named = torch.compile(case.model, backend="speca", options={
        "lowering": "onnxruntime", "on_lowering_error": "raise", "speculate": False, "cache_dir": engines_dir})
    with pytest.raises(Exception, match=r"segment '\w+'.*complex128") as info:
        dc.trajectory(case, named, 1)
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, LoweringError) for e in chain) or "LoweringError" in str(info.value)


@pytest.mark.parametrize("name", COMPLEX)
def test_complex_segments_are_refused_naming_segment_and_dtype(name, engines_dir):
    _refused_by_name(dc.CASES[name](), engines_dir)


def test_complex_segments_run_eagerly_under_the_default_lowering(engines_dir):
    """Under lowering="auto" (on_lowering_error="eager") the refused segments run eagerly, with a
    warning naming them and the dtype; the rest runs on ONNX Runtime, and the result is eager's."""
    case = dc.anyflow()
    eager = dc.trajectory(case, case.model, 2)
    auto = torch.compile(case.model, backend="speca", options={"speculate": False, "cache_dir": engines_dir})
    with pytest.warns(Warning, match=r"running segment '\w+' eagerly.*complex128"):
        out = dc.trajectory(case, auto, 2)
    assert rel_err(out, eager) < 1e-4
