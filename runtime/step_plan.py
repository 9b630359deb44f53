"""The plan of one denoising step: which samples run which path, and what happened to each.

The policy decides per sample (FULL, SPEC, CHECK); the plan groups the
samples into the speculative sub-batch (with the flags of those due a
check) and the full one, has the policy judge each checked sample's error
(against the step's threshold, or its run's budget), and adds rejected
samples to the full run (``on_reject="recompute"``).  It holds no tensors and runs nothing: the runner executes it.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from speca_compile.runtime.policy import Decision, Outcome


class StepPlan:
    def __init__(self, decisions: Sequence[Decision], tau: float, on_reject: str):
        self.decisions = list(decisions)
        self.tau = tau
        self.on_reject = on_reject
        self.full = [s for s, d in enumerate(decisions) if d is Decision.FULL]
        self.speculative = [s for s, d in enumerate(decisions) if d is not Decision.FULL]
        self.checked = [decisions[s] is Decision.CHECK for s in self.speculative]
        self.outcomes: List[Optional[Outcome]] = [None] * len(decisions)
        self.errors: List[Optional[float]] = [None] * len(decisions)

    def judge(self, errors: Sequence[float], accepts: Callable[[int, float, float], bool]) -> None:
        """Record the speculative samples' outcomes; ``errors`` has one value per speculative
        sample (read only where it was checked), ``accepts(sample, error, tau)`` is the policy's
        verdict."""
        for j, s in enumerate(self.speculative):
            self.outcomes[s] = Outcome.SPEC
            if self.checked[j]:
                self.errors[s] = float(errors[j])
                self.outcomes[s] = self._verdict(accepts(s, self.errors[s], self.tau))
        for s in self.full:
            self.outcomes[s] = Outcome.FULL

    def _verdict(self, accepted: bool) -> Outcome:
        if accepted:
            return Outcome.ACCEPTED
        return Outcome.REJECTED if self.on_reject == "recompute" else Outcome.DEFERRED

    def recompute(self) -> List[int]:
        """Samples the full path runs: those due a full step and the rejected ones, in one run."""
        return sorted(self.full + [s for s in self.speculative if self.outcomes[s] is Outcome.REJECTED])
