"""Per-sample speculation policy: when to compute fully, forecast, or check.

State per sample: how many full steps it has, how many speculative steps
since its last full one, and whether a deferred rejection forces the next
step full.  Decisions, for each sample alone:

* FULL  during ``warmup``, after ``max_speculative`` speculative steps in a
  row, or after a deferred rejection;
* SPEC  (forecast, unchecked) for the first ``min_speculative`` steps after
  a full one;
* CHECK (forecast, verified by one block) otherwise.
"""

from __future__ import annotations

import enum
from typing import List


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
    """Policy state of every sample in one trajectory."""

    def __init__(self, batch_size: int, warmup: int, min_speculative: int, max_speculative: int):
        self.warmup = warmup
        self.min_speculative = min_speculative
        self.max_speculative = max_speculative
        self.full_steps = [0] * batch_size
        self.since_full = [0] * batch_size
        self.force_full = [False] * batch_size

    def decide(self) -> List[Decision]:
        out = []
        for s in range(len(self.full_steps)):
            if (self.force_full[s] or self.full_steps[s] < self.warmup
                    or self.since_full[s] >= self.max_speculative):
                out.append(Decision.FULL)
            elif self.since_full[s] < self.min_speculative:
                out.append(Decision.SPEC)
            else:
                out.append(Decision.CHECK)
        return out

    def restart(self, samples) -> None:
        """Forget ``samples``' history: warmup again (their trajectory restarted)."""
        for s in samples:
            self.full_steps[s] = 0
            self.since_full[s] = 0
            self.force_full[s] = False

    def record(self, sample: int, outcome: Outcome) -> None:
        if outcome.computed_fully:
            self.full_steps[sample] += 1
            self.since_full[sample] = 0
            self.force_full[sample] = False
        else:
            self.since_full[sample] += 1
            self.force_full[sample] = outcome is Outcome.DEFERRED
