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
        return [inputs[0] * 2 + 1e-3]   # not eager's bits: tells whose outputs came back


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


def test_a_slower_lowering_gives_way_to_eager_on_its_first_call():
    choice, lowered = _choice(lowered_cost=2.0, eager_cost=1.0)
    outputs = _run(choice, 4)
    # the first call: the lowering once (it builds, untimed), then TRIALS timed runs of each
    assert lowered.calls == 1 + TRIALS
    assert choice.info["chosen"] == "eager"
    assert choice.info["trial_ms"] == {"fake": [2000.0] * TRIALS, "eager": [1000.0] * TRIALS}
    assert choice.info["trial_rel_diff"] > 0   # the fake lowering is off eager's bits
    # every call, the first included, returns the chosen engine's outputs: repeats are identical
    assert all(torch.equal(o, torch.full((3,), 2.0)) for o in outputs)


def test_a_faster_lowering_is_kept_and_ties_keep_it():
    for eager_cost in (3.0, 1.0):   # slower eager, then a tie
        choice, lowered = _choice(lowered_cost=1.0, eager_cost=eager_cost)
        outputs = _run(choice, 6)
        assert choice.info["chosen"] == "fake"
        assert lowered.calls == 1 + TRIALS + 5
        assert all(torch.equal(o, torch.full((3,), 2 + 1e-3)) for o in outputs)


def test_a_trial_that_built_a_variant_is_not_a_timing():
    # the lowering builds again on its 3rd run (trial 2): that trial is not counted
    choice, lowered = _choice(lowered_cost=2.0, eager_cost=1.0, builds_at=(0, 2))
    _run(choice, 1)
    assert len(choice.info["trial_ms"]["fake"]) == len(choice.info["trial_ms"]["eager"]) == TRIALS - 1
    assert choice.info["chosen"] == "eager"


def test_the_median_ratio_decides_not_one_slow_run():
    clock = FakeClock()
    costs = iter([0.0, 9.0, 1.0, 1.0, 1.0] + [1.0] * 10)   # build, one slow trial, then fast

    class Jittery(CostlyEngine):
        def run(self, inputs):
            self.cost = next(costs)
            return super().run(inputs)

    lowered = Jittery(clock, 0.0)
    choice = MeasuredChoice(lowered, EagerEngine(_segment(clock, 1.5)), clock=clock)
    _run(choice, 1)
    assert choice.info["chosen"] == "fake"   # median ratio 1.5, though its mean time is 3.0 > 1.5
    assert choice.alternative_ratio() == pytest.approx(1.5)


def test_threads_calling_at_once_choose_once():
    import threading

    choice, lowered = _choice(lowered_cost=2.0, eager_cost=1.0)
    barrier = threading.Barrier(4)
    results = []

    def call():
        barrier.wait()
        results.append(choice.run([torch.ones(3)])[0])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lowered.calls == 1 + TRIALS   # one choice, made by the first thread in
    assert len(choice.info["trial_ms"]["eager"]) == TRIALS
    assert all(torch.equal(r, torch.full((3,), 2.0)) for r in results)


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
    assert {"prologue", "block_stack", "epilogue"} <= set(engines)
    for e in engines.values():   # each chose on its first call, after TRIALS timed runs of each engine
        assert e["chosen"] in ("onnxruntime", "eager") and e["checked"]
        assert len(e["trial_ms"]["onnxruntime"]) == TRIALS == len(e["trial_ms"]["eager"])
        assert e["trial_rel_diff"] < 1e-4   # the two agree within the checked bound on every trial
    again = helpers.trajectory(z, compiled, 2, 12)
    assert torch.equal(again, out)   # the choice made, a repeated run gives the same bits
    assert {e["chosen_by"] for e in engines.values()} == {"trials"}
    assert len(list(tmp_path.glob("*.choice"))) == len(engines)   # kept beside the checked files
    torch._dynamo.reset()   # a fresh compile on the same cache: the same engines, the same bits
    fresh = torch.compile(z.model, backend="speca", options={"cache_dir": str(tmp_path), "tau0": 0.3})
    assert torch.equal(helpers.trajectory(z, fresh, 2, 12), out)
    recalled = {e["segment"]: e for e in speca_compile.stats(fresh)["per_graph"][-1]["engines"]}
    assert {e["chosen_by"] for e in recalled.values()} == {"cache"}
    assert {n: e["chosen"] for n, e in recalled.items()} == {n: e["chosen"] for n, e in engines.items()}
    assert all("trial_ms" not in e for e in recalled.values())
    named = torch.compile(z.model, backend="speca",
                          options={"lowering": "onnxruntime", "tau0": 0.3, "cache_dir": str(tmp_path)})
    helpers.trajectory(z, named, 2, 12)
    for e in speca_compile.stats(named)["per_graph"][-1]["engines"]:
        assert "chosen" not in e and "trial_ms" not in e

