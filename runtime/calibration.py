"""``tau0="auto"``: the threshold scale set from the errors the first trajectory measures.

Forecast errors differ in scale between models (their verification errors one
step after a full step differ by 2x between the two reference models, and a
random-weight model's are larger still), so a ``tau0`` tuned on one model is
too strict or too loose on another.  Under the budget policy a run of ``k``
forecasts spends about ``slope * k^2 / 2`` (``runtime/budget_policy.py``),
so a budget proportional to the model's own slope fixes the run length it
allows where the features are as smooth as at the start:

    tau0 = AUTO_FACTOR * median(first measured slope of each sample)

measured on the first trajectory of the compiled graph (its first checks,
one step after warmup).  Until then no threshold exists: those first checks
are accepted (a forecast one step after a full step), and the value is fixed
after the step that measured them.  It holds for every later generation of the graph, so results
reproduce from then on; ``stats`` reports it and ``speca tune`` prints it, so
it can be pinned as a number.  ``AUTO_FACTOR`` was chosen by measurement on
both reference models (README "Speculation policy").
"""

from __future__ import annotations

import statistics
import threading
from typing import Dict, List, Optional, Sequence

AUTO_FACTOR = 40.0


class Calibration:
    """The numeric ``tau0`` of one compiled graph, fixed or calibrated."""

    def __init__(self, tau0, factor: float = AUTO_FACTOR):
        self.auto = tau0 == "auto"
        self.factor = factor
        self.value: Optional[float] = None if self.auto else float(tau0)
        self.slopes: List[float] = []
        self.trajectory: Optional[int] = None     # the trajectory that calibrates
        self._lock = threading.Lock()

    def tau0(self) -> Optional[float]:
        """The threshold scale, or None while the first trajectory has not measured it yet."""
        return self.value

    def observe(self, trajectory: int, errors: Sequence[Optional[float]], horizons: Sequence[int]) -> None:
        """After a step of trajectory ``trajectory``: each sample's verification error (None where
        unchecked) and forecast horizon (steps since its last full step).  The first step of the
        first trajectory that checks any sample fixes the value (all samples leave warmup at
        the same step, so that step checks them all)."""
        if self.value is not None:
            return
        with self._lock:
            if self.value is not None:
                return
            if self.trajectory is None:
                self.trajectory = trajectory
            slopes = [e / h for e, h in zip(errors, horizons) if e is not None]
            if trajectory == self.trajectory and slopes:
                self.slopes = slopes
                self.value = self.factor * statistics.median(slopes)

    def summary(self) -> Dict:
        return {"tau0": self.value, "auto": self.auto, "factor": self.factor if self.auto else None,
                "samples": len(self.slopes) if self.auto else None}
