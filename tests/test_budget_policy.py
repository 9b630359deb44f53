"""The budget policy and tau0="auto" on constructed error sequences: exact decision strings.

``drive`` plays a trajectory against the policy the way the runner does (decide, measure the
checked samples, judge, record) with an error that is a known function of the step and the
forecast horizon, so each expected string can be worked out by hand (the comments do)."""

import math

import pytest
import torch

import speca_compile
from speca_compile.runtime.budget_policy import BudgetPolicy
from speca_compile.runtime.calibration import AUTO_FACTOR, Calibration
from speca_compile.runtime.policy import Decision, Outcome, StepPolicy
from tests import helpers


def drive(policy, steps, error, tau=0.105, batch=1):
    """Per-sample outcome strings of ``steps`` steps; ``error(step, horizon, sample)``."""
    out = [""] * batch
    for step in range(steps):
        decisions = policy.decide(tau)
        for s, d in enumerate(decisions):
            horizon = policy.since_full[s] + 1
            if d is Decision.FULL:
                outcome, e = Outcome.FULL, None
            elif d is Decision.SPEC:
                outcome, e = Outcome.SPEC, None
            else:
                e = error(step, horizon, s)
                outcome = Outcome.ACCEPTED if policy.accepts(s, e, tau) else Outcome.REJECTED
            policy.record(s, outcome, e)
            out[s] += outcome.value
    return out


def budget(**changes):
    settings = dict(batch_size=1, warmup=2, min_speculative=0, max_speculative=50, check_margin=1e-9,
                    max_check_gap=1)
    return BudgetPolicy(**{**settings, **changes})


def linear(a):
    return lambda step, horizon, sample: a * horizon


def test_a_run_ends_when_its_summed_errors_would_exceed_the_budget():
    # errors 0.01 k, budget 0.105: sums 0.01, 0.03, 0.06, 0.10 fit; the fifth forecast's
    # estimate (0.10 + 0.05) does not, so it is a full step, without spending a check on it
    assert drive(budget(), 12, linear(0.01)) == ["FFAAAAFAAAAF"]


def test_full_steps_by_estimate_fall_on_the_alignment_grid():
    # align=2: on even steps the estimate looks one step ahead.  Step 6 (k=5) would spend
    # 0.10 + 0.05 anyway; at step 10 (k=4) 0.06 + 0.04 would fit, but 0.06 + 0.04 + 0.05 by
    # step 11 would not, so the run ends early, on the grid: full steps at 6 and 10, never odd
    assert drive(budget(align=2), 12, linear(0.01)) == ["FFAAAAFAAAFA"]


def test_the_per_step_threshold_runs_far_longer_on_the_same_errors():
    # each error 0.01 k <= 0.105 up to k = 10: runs of 10 (the reason for the budget: see
    # runtime/budget_policy.py)
    step = StepPolicy(1, warmup=2, min_speculative=0, max_speculative=50)
    assert drive(step, 24, linear(0.01)) == ["FF" + "A" * 10 + "R" + "A" * 10 + "R"]


def test_checks_are_spaced_while_the_estimate_is_far_from_the_budget():
    # budget 1.0, margin 0.5, at most 3 steps between checks, errors 0.01 k:
    # k=1 checked (no slope yet: spent 0.01); k=2,3 unchecked (estimates 0.02, 0.03: 0.06);
    # k=4 checked (gap of 3: 0.10); k=5,6 unchecked (0.21); k=7 checked (0.28); k=8,9 (0.45);
    # k=10 checked because 0.45 + 0.10 > 0.5, and so on to k=13 (0.91); k=14 would reach 1.05
    policy = budget(check_margin=0.5, max_check_gap=3)
    assert drive(policy, 16, linear(0.01), tau=1.0) == ["FFASSASSASSAAAAF"]


def test_min_speculative_forecasts_go_unchecked_first():
    policy = budget(min_speculative=2)
    # k=1,2 unchecked (no slope yet: estimate 0), k=3 checked (0.03: slope 0.01); k=4 estimate
    # 0.04 fits (0.07), checked; k=5 estimate 0.05 would exceed: full.  Next run: k=1,2
    # unchecked at estimates 0.01, 0.02 (0.03), k=3 checked (0.06), k=4 (0.10), k=5: full.
    assert drive(policy, 13, linear(0.01)) == ["FFSSAAFSSAAFS"]


def test_a_rejection_recomputes_and_a_carried_slope_never_locks_speculation_out():
    # a spike at step 4 is rejected (recomputed fully); its slope (0.5) says the next run
    # is over budget at once, but a slope from another run only decides to check: the
    # next step is checked, and the run goes on at 0.01 k again
    def spiky(step, horizon, sample):
        return 0.5 if step == 4 else 0.01 * horizon
    assert drive(budget(), 12, spiky) == ["FFAARAAAAFAA"]


def test_samples_decide_alone():
    def per_sample(step, horizon, sample):
        return (0.01 if sample == 0 else 0.03) * horizon
    # sample 1: 0.03, 0.09 fit, 0.09 + 0.09 does not
    assert drive(budget(batch_size=2), 9, per_sample, batch=2) == ["FFAAAAFAA", "FFAAFAAFA"]


def test_the_safety_cap_and_warmup_still_hold():
    assert drive(budget(max_speculative=3, warmup=3), 11, linear(1e-6)) == ["FFFAAAFAAAF"]


def test_restart_forgets_the_slope_and_warms_up_again():
    policy = budget()
    drive(policy, 4, linear(0.01))
    policy.restart([0])
    assert policy.slope == [None] and policy.spent == [0.0]
    assert drive(policy, 4, linear(0.01)) == ["FFAA"]


def test_deferred_rejection_keeps_the_forecast_then_computes_fully():
    policy = budget()
    policy.record(0, Outcome.FULL)
    policy.record(0, Outcome.FULL)
    assert policy.decide(0.1) == [Decision.CHECK]
    policy.record(0, Outcome.DEFERRED, 0.2)
    assert policy.decide(0.1) == [Decision.FULL]


# --------------------------------------------------------------------------- tau0="auto"

def test_calibration_takes_the_median_slope_of_the_first_checks():
    cal = Calibration("auto")
    assert cal.tau0() is None
    cal.observe(7, [None, None, None], [1, 1, 1])          # warmup: nothing measured
    assert cal.tau0() is None
    cal.observe(7, [0.01, 0.03, 0.04], [1, 1, 2])          # slopes 0.01, 0.03, 0.02
    assert cal.tau0() == pytest.approx(AUTO_FACTOR * 0.02)
    cal.observe(7, [1.0, 1.0, 1.0], [1, 1, 1])              # fixed from then on
    assert cal.tau0() == pytest.approx(AUTO_FACTOR * 0.02)
    assert cal.summary() == {"tau0": pytest.approx(AUTO_FACTOR * 0.02), "auto": True, "factor": AUTO_FACTOR,
                             "samples": 3}


def test_calibration_listens_to_the_first_trajectory_only():
    cal = Calibration("auto", factor=10.0)
    cal.observe(1, [None], [1])
    cal.observe(2, [0.5], [1])      # another trajectory measured first: not the calibrating one
    assert cal.tau0() is None
    cal.observe(1, [0.02], [1])
    assert cal.tau0() == pytest.approx(0.2)


def test_a_number_is_used_as_given():
    assert Calibration(0.3).tau0() == 0.3 and Calibration(0.3).summary()["auto"] is False


def test_auto_end_to_end_sets_the_threshold_from_the_first_checks():
    """On a trained-style model: the first checked step is accepted whatever its error, the
    threshold recorded from then on is AUTO_FACTOR x the median slope of those first checks."""
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "eager", "tau0": "auto"})
    helpers.trajectory(z, compiled, 2, 20, seed=4)
    stats = speca_compile.stats(compiled)
    summary = stats["trajectories"][-1]
    first = next(i for i, errors in enumerate(summary["errors"]) if any(e is not None for e in errors))
    slopes = sorted(e for e in summary["errors"][first])     # horizon 1 (min_speculative applies)
    horizon = 1 + sum(1 for d in summary["decisions"][3:first] if d[0] != "F")
    expected = AUTO_FACTOR * (slopes[0] + slopes[1]) / 2 / horizon
    assert math.isinf(summary["thresholds"][first])
    assert stats["threshold"]["tau0"] == pytest.approx(expected)
    assert summary["thresholds"][first + 1] < expected and summary["thresholds"][first + 1] > 0.3 * expected


def test_rejections_are_recomputed_exactly_under_the_budget_policy():
    """tau0=0: every forecast is checked (no slope has a budget to spend), rejected and
    recomputed, so the output is the full-compute result, as under the step rule."""
    z = helpers.build("reference_dit")
    full = helpers.trajectory(z, z.model, 2, 12, seed=4)
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "eager", "tau0": 0.0})
    out = helpers.trajectory(z, compiled, 2, 12, seed=4)
    summary = speca_compile.stats(compiled)["trajectories"][-1]
    assert [d for d in summary["decisions"][3:]] == ["RR"] * 9
    assert helpers.rel_err(out, full) < 1e-5
