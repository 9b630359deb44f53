"""Decisions and counts of SpeCa's per-step policy (``acceptance="step"``), end to end: exact, so
they are assertable.  The budget policy's are in ``tests/test_budget_policy.py``."""

import pytest
import torch

import speca_compile
from speca_compile import sampling
from speca_compile.runtime.policy import Decision, Outcome, StepPolicy
from speca_compile.runtime.threshold import threshold
from tests import helpers
from tests.reference_dit import PolyDiT

STEPS = 50
# SpeCa's per-step rule with the settings it shipped with here (the former defaults)
STEP_RULE = {"acceptance": "step", "min_speculative": 2, "max_speculative": 5}


def run(options, name="reference_dit", batch=2, steps=STEPS):
    """Decisions are the subject, not a lowering: the segments run eagerly unless a test names one."""
    z = helpers.build(name)
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "eager", **STEP_RULE, **options})
    out = helpers.trajectory(z, compiled, batch, steps, seed=4)
    return z, out, speca_compile.stats(compiled)["trajectories"][-1]


def per_sample(summary, s):
    return "".join(step[s] for step in summary["decisions"])


@pytest.mark.parametrize("options,cycle,full", [
    # every check accepted: 2 unchecked, 3 accepted, then max_speculative=5 forces a full step
    ({"tau0": 1e30}, "SSAAAF", 3 + 7 + 0),
    # every check rejected and recomputed: the recomputed step counts as full
    ({"tau0": 0.0}, "SSR", 3 + 15),
    # every check rejected but kept (defer): the next step is full
    ({"tau0": 0.0, "on_reject": "defer"}, "SSDF", 3 + 11),
])
def test_decision_cycles_and_full_step_counts(options, cycle, full):
    _, out, summary = run(options)
    expected = ("FFF" + cycle * STEPS)[:STEPS]
    for s in range(2):
        assert per_sample(summary, s) == expected
    assert summary["full_per_sample"] == [full, full]
    assert torch.isfinite(out).all()


def test_always_rejected_speculation_reproduces_full_compute():
    """min_speculative=0 and tau0=0: every step after warmup is checked, rejected
    and recomputed, so the output is the full-compute result."""
    z = helpers.build("reference_dit")
    eager = helpers.trajectory(z, z.model, 2, 20, seed=4)
    _, out, summary = run({"tau0": 0.0, "min_speculative": 0}, steps=20)
    assert set(per_sample(summary, 0)[3:]) == {"R"}
    assert summary["checked"] == 2 * 17 and summary["rejected"] == 2 * 17
    assert helpers.rel_err(out, eager) < 1e-5


def test_recorded_thresholds_follow_the_schedule():
    _, _, summary = run({"tau0": 0.2, "beta": 0.5}, steps=10)
    t_first = summary["timesteps"][0]
    for t, tau in zip(summary["timesteps"], summary["thresholds"]):
        assert tau == pytest.approx(threshold(0.2, 0.5, t, t_first))
    assert summary["thresholds"][0] == pytest.approx(0.2)
    assert summary["thresholds"][-1] < 0.2 * 0.5 ** 0.8


def test_error_metric_option_selects_rel_l1_or_rel_l2():
    seen = {}
    for metric in ("rel_l2", "rel_l1"):
        _, _, summary = run({"tau0": 1e30, "error_metric": metric}, steps=10)
        seen[metric] = [e[0] for e in summary["errors"] if e[0] is not None]
        assert seen[metric] and all(e > 0 for e in seen[metric])
    assert seen["rel_l1"] != seen["rel_l2"]


def poly_trajectory(model, batch=2, steps=20):
    """Flow sampler with t = sigma, over the PolyDiT toy."""
    x = torch.randn(batch, 4, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return sampling.denoise(lambda h, t: model(h, torch.full((batch,), t)), x, steps, "flow")


@pytest.mark.parametrize("verify_block", [0, 1, -1])
def test_taylor_forecast_is_exact_when_blocks_are_quadratic_in_t(verify_block):
    """Every block residual of PolyDiT is a quadratic in t: an order-2 forecast over
    the non-uniform shifted sigmas must be exact, so every check passes a tight
    threshold and the output matches full compute."""
    torch.manual_seed(0)
    model = PolyDiT().eval()
    full = poly_trajectory(model)
    compiled = torch.compile(model, backend="speca",
                             options={"forecaster": "taylor", "order": 2, "tau0": 1e-5, **STEP_RULE,
                                      "verify_block": verify_block, "lowering": "eager"})
    out = poly_trajectory(compiled)
    summary = speca_compile.stats(compiled)["trajectories"][-1]
    assert summary["checked"] > 0 and summary["rejected"] == 0
    assert max(e for step in summary["errors"] for e in step if e is not None) < 1e-5
    assert summary["full"] == 2 * (3 + 2)  # warmup, then only max_speculative forces full steps
    assert helpers.rel_err(out, full) < 1e-5


def test_an_order_too_low_is_caught_by_verification():
    """Order 1 cannot follow a quadratic: checks fail the same tight threshold."""
    torch.manual_seed(0)
    model = PolyDiT().eval()
    compiled = torch.compile(model, backend="speca", options={"forecaster": "taylor", "order": 1, "tau0": 1e-5,
                                                                **STEP_RULE, "lowering": "eager"})
    poly_trajectory(compiled)
    assert speca_compile.stats(compiled)["trajectories"][-1]["rejected"] > 0


def test_step_policy_alone():
    policy = StepPolicy(batch_size=2, warmup=1, min_speculative=1, max_speculative=2)
    tau = 0.1
    assert policy.decide(tau) == [Decision.FULL, Decision.FULL]
    for s in range(2):
        policy.record(s, Outcome.FULL)
    assert policy.decide(tau) == [Decision.SPEC, Decision.SPEC]
    policy.record(0, Outcome.SPEC)
    policy.record(1, Outcome.SPEC)
    assert policy.decide(tau) == [Decision.CHECK, Decision.CHECK]
    assert policy.accepts(0, 0.1, tau) and not policy.accepts(0, 0.11, tau)
    policy.record(0, Outcome.ACCEPTED, 0.05)
    policy.record(1, Outcome.DEFERRED, 0.2)
    assert policy.decide(tau) == [Decision.FULL, Decision.FULL]  # max reached / deferred
