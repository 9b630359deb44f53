"""Per-sample speculation policies: when to compute fully, forecast, or check.

Two policies share the decisions and the bookkeeping below; they differ in
what a check accepts and in when a check is due (``acceptance`` option):

* ``"step"`` (``StepPolicy``, the original SpeCa rule): every check compares
  that one step's error with the threshold; the first ``min_speculative``
  steps after a full one are unchecked, every later one is checked, and
  ``max_speculative`` forecasts in a row force a full step.
* ``"budget"`` (``BudgetPolicy``, the default; ``runtime/budget_policy.py``):
  the errors of a run since its last full step share one budget, checks are
  spaced by how far the evidence is from it, and ``max_speculative`` is only
  a safety cap.

Decisions are per sample: each sample of a batch decides alone.
"""

from __future__ import annotations

import enum
from typing import List, Optional, Sequence


class Decision(enum.Enum):
    FULL = "F"
    SPEC = "S"
    CHECK = "C"


class Outcome(enum.Enum):
    """What finally happened to one sample at one step (as shown in stats)."""

    FULL = "F"        # computed fully by the schedule
    SPEC = "S"        # forecast, not checked
    ACCEPTED = "A"    # forecast, checked and accepted
    REJECTED = "R"    # forecast rejected, recomputed fully (on_reject=recompute)
    DEFERRED = "D"    # forecast rejected but kept; next step full (on_reject=defer)

    @property
    def computed_fully(self) -> bool:
        return self in (Outcome.FULL, Outcome.REJECTED)


class SamplePolicy:
    """Counters every policy keeps per sample: full steps so far, forecasts since the last
    full step, and whether a deferred rejection forces the next step full."""

    def __init__(self, batch_size: int, warmup: int, min_speculative: int, max_speculative: int):
        self.warmup = warmup
        self.min_speculative = min_speculative
        self.max_speculative = max_speculative
        self.full_steps = [0] * batch_size
        self.since_full = [0] * batch_size
        self.force_full = [False] * batch_size
        self.step = 0      # steps decided so far: the same count for every sample of the trajectory

    def decide(self, tau: float) -> List[Decision]:
        """Each sample's decision for the next step (called once per step)."""
        decisions = [Decision.FULL if self._must_compute(s) else self._speculative_decision(s, tau)
                     for s in range(len(self.full_steps))]
        self.step += 1
        return decisions

    def _must_compute(self, s: int) -> bool:
        return (self.force_full[s] or self.full_steps[s] < self.warmup
                or self.since_full[s] >= self.max_speculative)

    def _speculative_decision(self, s: int, tau: float) -> Decision:
        raise NotImplementedError

    def accepts(self, sample: int, error: float, tau: float) -> bool:
        """Whether a checked forecast of ``sample`` with verification ``error`` stands."""
        raise NotImplementedError

    def restart(self, samples: Sequence[int]) -> None:
        """Forget ``samples``' history: warmup again (their trajectory restarted)."""
        for s in samples:
            self.full_steps[s] = 0
            self.since_full[s] = 0
            self.force_full[s] = False

    def record(self, sample: int, outcome: Outcome, error: Optional[float] = None) -> None:
        if outcome.computed_fully:
            self.full_steps[sample] += 1
            self.since_full[sample] = 0
            self.force_full[sample] = False
        else:
            self.since_full[sample] += 1
            self.force_full[sample] = outcome is Outcome.DEFERRED


class StepPolicy(SamplePolicy):
    """SpeCa's rule: FULL during ``warmup``, after ``max_speculative`` forecasts in a row or
    after a deferred rejection; SPEC (unchecked) for the first ``min_speculative`` steps after
    a full one; CHECK otherwise, accepted when that step's error is at most the threshold."""

    def _speculative_decision(self, s: int, tau: float) -> Decision:
        return Decision.SPEC if self.since_full[s] < self.min_speculative else Decision.CHECK

    def accepts(self, sample: int, error: float, tau: float) -> bool:
        return error <= tau


def make_policy(options, batch_size: int) -> SamplePolicy:
    """The policy ``options.acceptance`` names, for a batch of ``batch_size`` samples."""
    if options.acceptance == "step":
        return StepPolicy(batch_size, options.warmup, options.min_speculative, options.max_speculative)
    from speca_compile.runtime.budget_policy import BudgetPolicy

    return BudgetPolicy(batch_size, options.warmup, options.min_speculative, options.max_speculative,
                        options.check_margin, options.max_check_gap, options.align_full_steps)
