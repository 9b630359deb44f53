"""lowering="inductor": segments compiled by Inductor, checked against eager; lowering errors and the fallback option."""

import pytest
import torch

import speca_compile
from speca_compile.errors import LoweringError, OptionsError
from speca_compile.runtime.inductor_engine import InductorEngine
from tests import helpers


def engine_info(compiled):
    return speca_compile.stats(compiled)["per_graph"][-1]["engines"]


@pytest.mark.parametrize("name", helpers.ALL_MODELS)
def test_full_path_matches_eager(name):
    z = helpers.build(name)
    eager = helpers.trajectory(z, z.model, 2, 6)
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "inductor", "speculate": False})
    assert helpers.rel_err(helpers.trajectory(z, compiled, 2, 6), eager) < 1e-4
    info = {e["segment"]: e for e in engine_info(compiled)}
    # the full path is compiled; only a prologue returning Python numbers stays eager, and says so
    full_path = ["block_stack", "epilogue"] if "block_stack" in info else ["whole_graph"]
    assert all(info[name]["builds"] >= 1 for name in full_path)
    if "prologue" in info:
        assert info["prologue"]["builds"] >= 1 or info["prologue"]["runs"] == "eager (returns non-tensor values)"
    assert set(info) <= {"prologue", "whole_graph", *full_path}   # no block compiled alone
    # every compiled variant's first call was compared with eager (issue 16)
    assert all(info[name]["checked"] is True and info[name]["check_error"] < 1e-4 for name in full_path)


@pytest.mark.parametrize("name", ["dit", "flux"])
def test_speculative_decisions_equal_the_eager_lowering(name):
    z = helpers.build(name)
    runs = {}
    for lowering in ("eager", "inductor"):
        compiled = torch.compile(z.model, backend="speca", dynamic=True,
                                 options={"lowering": lowering, "tau0": 0.1})
        out = helpers.trajectory(z, compiled, 3, 20)
        runs[lowering] = (out, speca_compile.stats(compiled)["trajectories"][-1]["decisions"])
    assert runs["inductor"][1] == runs["eager"][1]
    assert any("S" in d or "A" in d for d in runs["eager"][1])
    assert helpers.rel_err(runs["inductor"][0], runs["eager"][0]) < 1e-4


def _failing_build(self, inputs):
    raise LoweringError(f"segment {self.segment.name!r}: Inductor could not compile it: aten.fake_op")


def test_a_failed_build_raises_naming_the_segment(monkeypatch):
    monkeypatch.setattr(InductorEngine, "_build", _failing_build)
    z = helpers.build("dit")
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "inductor"})
    with pytest.raises(LoweringError, match=r"segment 'prologue': .*fake_op"):
        helpers.trajectory(z, compiled, 2, 2)


def test_eager_fallback_is_chosen_and_reported(monkeypatch):
    monkeypatch.setattr(InductorEngine, "_build", _failing_build)
    z = helpers.build("dit")
    compiled = torch.compile(z.model, backend="speca",
                             options={"lowering": "inductor", "on_lowering_error": "eager", "speculate": False})
    with pytest.warns(UserWarning, match="running segment 'block_stack' eagerly"):
        out = helpers.trajectory(z, compiled, 2, 3)
    assert helpers.rel_err(out, helpers.trajectory(z, z.model, 2, 3)) < 1e-5
    fell_back = [e["segment"] for e in engine_info(compiled) if "fake_op" in e.get("fallback", "")]
    assert fell_back == ["prologue", "epilogue", "block_stack"]


def test_on_lowering_error_is_validated():
    with pytest.raises(OptionsError, match="on_lowering_error"):
        speca_compile.Options.parse({"on_lowering_error": "ignore"})
