"""The verifier-driven policy: a sample forecasts while its run's errors fit one budget.

Why a budget over the run, not a threshold per step.  A forecast run starts
at a full step; its verification error grows with the horizon, nearly
linearly (measured on both reference models: 0.005-0.01 one step after a
full step, about that much more per step, for 10-40 steps in mid-trajectory,
then fast in the last few steps).  Each step's noise-prediction error moves
the latent, so the final image's deviation is about the *sum* of the step
errors.  With a local growth rate ``a`` a run of ``k`` steps costs one full
step and adds about ``a k^2 / 2`` error; minimising the total error for a
given number of full steps gives ``k ~ 1 / sqrt(a)``, which is what a fixed
budget ``a k^2 / 2 <= tau`` on the run's summed error yields.  A per-step
threshold (``a k <= tau``) instead runs ``k ~ 1 / a``: too long where the
features are smooth (many small errors add up) and too short where they
change, and below the run cap it hardly depends on tau at all (measured:
22-23 % full steps for tau0 = 0.1, 0.2 and 0.4).

Per sample the policy keeps ``spent``, the errors of the current run so far,
and ``slope``, its latest measured error per step of horizon (error / k at
the latest check).  An unchecked step adds its estimate ``slope * k``.  A
step is

* FULL when the estimate says the budget would be spent
  (``spent + slope * k > tau``: a check could only reject) and the slope was
  measured in this run (a slope carried over from the last run only decides
  when to check: otherwise one bad run would make every later step full),
  after ``max_speculative`` forecasts in a row (a safety cap) or during
  warmup;
* SPEC (forecast, unchecked) during the first ``min_speculative`` steps of a
  run, and while the estimate stays under ``check_margin * tau`` with fewer
  than ``max_check_gap`` unchecked steps since the last check: evidence far
  from the budget is not re-checked every step, evidence near it is.  The
  slope carried from the last run counts as evidence here (requiring a
  fresh check at the start of every run cost 10 % more counted compute on
  dit_digits for the same PSNR);
* CHECK otherwise (always when no slope has been measured yet), accepted
  when ``spent + error <= tau``.

``tau`` is the schedule's threshold at that step (``tau0 * beta ** progress``).

Alignment (``align``, option ``align_full_steps``).  Samples whose runs end at
different steps make most steps mixed: a few rows run the full path, the
others the speculative one, and two small calls cost more wall time than one
call of both (measured on dit_digits, 50 rows: 2.67x eager with runs ending
anywhere, 2.90x aligned to every 2nd step, at the same 23 % full steps; the
step rule, whose capped runs stay in lockstep, 3.03x).  So full steps by
estimate fall on every ``align``-th step of the trajectory: on such a step a
sample whose budget would run out before the next one computes fully now.
The grid is the trajectory's step count, the same for a sample alone or in
any batch, so results never depend on batch companions.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from speca_compile.runtime.policy import Decision, Outcome, SamplePolicy


class BudgetPolicy(SamplePolicy):
    def __init__(self, batch_size: int, warmup: int, min_speculative: int, max_speculative: int,
                 check_margin: float, max_check_gap: int, align: int = 1):
        super().__init__(batch_size, warmup, min_speculative, max_speculative)
        self.align = align
        self.check_margin = check_margin
        self.max_check_gap = max_check_gap
        self.spent = [0.0] * batch_size
        self.slope: List[Optional[float]] = [None] * batch_size
        self.since_check = [0] * batch_size
        self.measured = [False] * batch_size    # a check measured the slope in the current run
        self._estimate = [0.0] * batch_size     # what this step's unchecked forecast adds

    def _speculative_decision(self, s: int, tau: float) -> Decision:
        horizon = self.since_full[s] + 1
        slope = self.slope[s]
        if slope is None:
            self._estimate[s] = 0.0
            return Decision.SPEC if self.since_full[s] < self.min_speculative else Decision.CHECK
        estimate = slope * horizon
        self._estimate[s] = estimate
        if self.measured[s] and self._spends_budget(s, slope, horizon, tau):
            return Decision.FULL
        if self.since_full[s] < self.min_speculative:
            return Decision.SPEC
        if self.spent[s] + estimate > self.check_margin * tau or self.since_check[s] + 1 >= self.max_check_gap:
            return Decision.CHECK
        return Decision.SPEC

    def _spends_budget(self, s: int, slope: float, horizon: int, tau: float) -> bool:
        """Whether the estimate spends the budget now or, on a step of the ``align`` grid, before
        the next grid step (so full steps by estimate fall on common steps; see the module doc)."""
        ahead = self.align if self.step % self.align == 0 else 1
        return self.spent[s] + slope * sum(range(horizon, horizon + ahead)) > tau

    def accepts(self, sample: int, error: float, tau: float) -> bool:
        return self.spent[sample] + error <= tau

    def restart(self, samples: Sequence[int]) -> None:
        super().restart(samples)
        for s in samples:
            self.spent[s], self.slope[s], self.since_check[s], self.measured[s] = 0.0, None, 0, False

    def record(self, sample: int, outcome: Outcome, error: Optional[float] = None) -> None:
        horizon = self.since_full[sample] + 1
        super().record(sample, outcome, error)
        if error is not None:
            self.slope[sample] = error / horizon
        if outcome.computed_fully:
            self.spent[sample], self.since_check[sample], self.measured[sample] = 0.0, 0, False
        elif outcome is Outcome.SPEC:
            self.spent[sample] += self._estimate[sample]
            self.since_check[sample] += 1
        else:   # accepted or deferred: a measured error
            self.spent[sample] += error
            self.since_check[sample] = 0
            self.measured[sample] = True
