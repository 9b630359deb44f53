"""Each segment on the faster of its lowering and eager (runtime/engine_choice.py).

The choice is timed, so the unit tests drive it with a fake clock that advances
by each engine's declared cost: the decisions are then exact.  The end-to-end
tests check what must hold whatever the timings: under ``lowering="auto"`` on
the CPU every segment reports a choice after a trajectory, the trajectory
agrees with the eager lowering's, and a named lowering races nothing.
"""

from __future__ import annotations

import types

import pytest
import torch

import speca_compile
from speca_compile.errors import OptionsError
from speca_compile.options import Options
from speca_compile.runtime.engine import Engine, resolve_lowering
from speca_compile.runtime.eager_engine import EagerEngine
from speca_compile.runtime.engine_choice import TRIALS, MeasuredChoice
from tests import helpers


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class CostlyEngine(Engine):
    """Doubles its input, advancing the clock by ``cost`` per call; builds on its first call."""

    name = "fake"

    def __init__(self, clock, cost, builds_at=(0,)):
        self.clock, self.cost, self.builds_at = clock, cost, set(builds_at)
        self.calls = 0
        self.info = {"segment": "s", "builds": 0}

    def run(self, inputs):
        if self.calls in self.builds_at:
            self.info["builds"] += 1
        self.calls += 1
        self.clock.now += self.cost
        return [inputs[0] * 2 + 1e-7]   # not eager's bits: tells whose outputs came back


def _segment(clock, eager_cost):
    def module(x):
        clock.now += eager_cost
        return (x * 2,)
    return types.SimpleNamespace(name="s", module=module)


def _choice(lowered_cost, eager_cost, builds_at=(0,)):
    clock = FakeClock()
    lowered = CostlyEngine(clock, lowered_cost, builds_at)
    return MeasuredChoice(lowered, EagerEngine(_segment(clock, eager_cost)), clock=clock), lowered


def _run(choice, calls):
    x = torch.ones(3)
    return [choice.run([x])[0] for _ in range(calls)]


def test_a_slower_lowering_gives_way_to_eager_after_its_trials():
    choice, lowered = _choice(lowered_cost=2.0, eager_cost=1.0)
    outputs = _run(choice, 1 + TRIALS + 3)
    # first call builds (untimed), TRIALS calls run both, then eager alone
    assert lowered.calls == 1 + TRIALS
    assert choice.info["chosen"] == "eager"
    assert choice.info["trial_ms"] == {"fake": [2000.0] * TRIALS, "eager": [1000.0] * TRIALS}
    # the trial calls return the lowering's outputs, as without the choice; then eager's
    assert all(torch.equal(o, torch.full((3,), 2 + 1e-7)) for o in outputs[:1 + TRIALS])
    assert all(torch.equal(o, torch.full((3,), 2.0)) for o in outputs[1 + TRIALS:])


def test_a_faster_lowering_is_kept_and_ties_keep_it():
    for eager_cost in (3.0, 1.0):   # slower eager, then a tie
        choice, lowered = _choice(lowered_cost=1.0, eager_cost=eager_cost)
        _run(choice, 1 + TRIALS + 5)
        assert choice.info["chosen"] == "fake"
        assert lowered.calls == 1 + TRIALS + 5


def test_a_call_that_built_a_variant_is_not_a_timing():
    # the lowering builds again on its 3rd call (a new variant): that trial is not counted
    choice, lowered = _choice(lowered_cost=2.0, eager_cost=1.0, builds_at=(0, 2))
    _run(choice, 1 + TRIALS)
    assert "chosen" not in choice.info
    assert len(choice.info["trial_ms"]["fake"]) == TRIALS - 1
    _run(choice, 1)
    assert choice.info["chosen"] == "eager"


def test_the_median_ratio_decides_not_one_slow_call():
    clock = FakeClock()
    costs = iter([0.0, 9.0, 1.0, 1.0, 1.0] + [1.0] * 10)   # build, one slow trial, then fast

    class Jittery(CostlyEngine):
        def run(self, inputs):
            self.cost = next(costs)
            return super().run(inputs)

    lowered = Jittery(clock, 0.0)
    choice = MeasuredChoice(lowered, EagerEngine(_segment(clock, 1.5)), clock=clock)
    _run(choice, 1 + TRIALS)
    assert choice.info["chosen"] == "fake"   # median ratio 1.5, though its mean time is 3.0 > 1.5


def test_calls_of_different_sizes_weigh_alike():
    # eager is 10 % faster on every call; the calls alternate between 1 and 100 elements, and
    # eager's trials happen to fall on the small ones half the time: totals would mislead
    clock = FakeClock()

    class Sized(CostlyEngine):
        def run(self, inputs):
            self.cost = inputs[0].numel()
            return super().run(inputs)

    def module(x):
        clock.now += 0.9 * x.numel()
        return (x * 2,)

    choice = MeasuredChoice(Sized(clock, 0.0), EagerEngine(types.SimpleNamespace(name="s", module=module)),
                            clock=clock)
    for n in (1, 100, 1, 100, 1):
        choice.run([torch.ones(n)])
    assert choice.info["chosen"] == "eager"
    assert choice.alternative_ratio() == pytest.approx(0.9)


def test_options_name_the_bad_engine_choice():
    with pytest.raises(OptionsError, match="engine_choice.*'measure', 'lowering'"):
        Options.parse({"engine_choice": "fastest"})
    with pytest.raises(OptionsError, match="engine_choice.*lowering 'eager'"):
        Options.parse({"engine_choice": "measure", "lowering": "eager"})
    with pytest.raises(OptionsError, match="engine_choice.*precision 'fp16'"):
        Options.parse({"engine_choice": "measure", "lowering": "onnxruntime", "precision": "fp16"})


def test_auto_measures_on_the_cpu_and_a_named_lowering_does_not():
    x = [torch.zeros(2)]
    auto, note = resolve_lowering(Options.parse({}), x)
    assert (auto.lowering, auto.engine_choice) == ("onnxruntime", "measure")
    assert "faster of onnxruntime and eager" in note
    named, _ = resolve_lowering(Options.parse({"lowering": "onnxruntime"}), x)
    assert named.engine_choice == "lowering"
    asked, _ = resolve_lowering(Options.parse({"lowering": "onnxruntime", "engine_choice": "measure"}), x)
    assert asked.engine_choice == "measure"
    opted_out, _ = resolve_lowering(Options.parse({"engine_choice": "lowering"}), x)
    assert opted_out.engine_choice == "lowering"
    full_path, _ = resolve_lowering(Options.parse({"speculate": False}), x)   # back-to-back segments
    assert (full_path.lowering, full_path.engine_choice) == ("onnxruntime", "lowering")


def test_auto_chooses_per_segment_and_agrees_with_eager(tmp_path):
    z = helpers.build("reference_dit")
    eager = helpers.trajectory(z, z.model, 2, 12)
    compiled = torch.compile(z.model, backend="speca", options={"cache_dir": str(tmp_path), "tau0": 0.3})
    out = helpers.trajectory(z, compiled, 2, 12)
    reference = torch.compile(z.model, backend="speca",
                              options={"lowering": "eager", "tau0": 0.3, "cache_dir": str(tmp_path / "e")})
    lowered_eager = helpers.trajectory(z, reference, 2, 12)
    assert helpers.rel_err(out, lowered_eager) < 1e-3
    assert helpers.rel_err(out, eager) < 0.1
    graph = speca_compile.stats(compiled)["per_graph"][-1]
    engines = {e["segment"]: e for e in graph["engines"]}
    assert any("faster of onnxruntime and eager" in n for n in graph["notes"])
    for name in ("prologue", "epilogue"):   # run every step: decided within the trajectory
        assert engines[name]["chosen"] in ("onnxruntime", "eager") and engines[name]["checked"]
        assert len(engines[name]["trial_ms"]["onnxruntime"]) == TRIALS == len(engines[name]["trial_ms"]["eager"])
    for e in engines.values():   # the full steps' stack may still be on trial: never more than TRIALS
        times = e["trial_ms"]
        assert len(times["onnxruntime"]) == len(times["eager"]) <= TRIALS
        assert e["trial_rel_diff"] < 1e-4   # the two agree within the checked bound on every trial
        assert ("chosen" in e) == (len(times["eager"]) == TRIALS)
    named = torch.compile(z.model, backend="speca",
                          options={"lowering": "onnxruntime", "tau0": 0.3, "cache_dir": str(tmp_path)})
    helpers.trajectory(z, named, 2, 12)
    for e in speca_compile.stats(named)["per_graph"][-1]["engines"]:
        assert "chosen" not in e and "trial_ms" not in e

