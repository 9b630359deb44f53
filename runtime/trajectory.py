"""Trajectories: the state of one denoising run, and how calls are routed to them.

A call continues the oldest active trajectory with the same input shapes
whose last timestep is strictly larger than the call's; otherwise it starts a
new one, and every active trajectory whose last timestep is below the call's
(the timestep went back up: a new generation) is finished.  So two calls at
the same timestep in one denoising step (CFG branches run separately) get two
trajectories, and a new generation never inherits the last one's cache.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional, Tuple

from speca_compile.options import Options
from speca_compile.runtime.feature_cache import FeatureCache, FeatureGroup
from speca_compile.runtime.policy import Outcome, SamplePolicy

MAX_ACTIVE = 8
MAX_FINISHED = 16

# Generation ids are global (across graphs and models) so that "the latest generation"
# is well defined when a shape change moves a model's calls to a new graph.
_GENERATIONS = itertools.count(1)


@dataclasses.dataclass
class StepRecord:
    timestep: float
    tau: Optional[float]
    outcomes: List[Outcome]
    errors: List[Optional[float]]


class Trajectory:
    """Policy, feature cache and step log of one denoising run."""

    def __init__(self, number: int, signature: Tuple, batch_size: int, t_first: float,
                 options: Options, groups: Tuple[FeatureGroup, ...]):
        self.number = number
        self.generation = 0     # set by the tracker
        self.signature = signature
        self.batch_size = batch_size
        self.t_first = t_first
        self.t_scale = abs(t_first) if t_first != 0 else 1.0
        self.last_t: Optional[float] = None
        self.policy = SamplePolicy(batch_size, options.warmup, options.min_speculative,
                                   options.max_speculative)
        self.cache = FeatureCache(groups, options.forecaster, options.order, batch_size,
                                  options.hermite_sigma)
        self.steps: List[StepRecord] = []
        self.peak_cache_bytes = 0

    def log(self, record: StepRecord) -> None:
        self.steps.append(record)
        self.last_t = record.timestep
        for sample, outcome in enumerate(record.outcomes):
            self.policy.record(sample, outcome)
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache.nbytes())

    def progress(self) -> Dict:
        """The figures a ``progress`` callback receives after each step."""
        last = self.steps[-1]
        flat = [o for step in self.steps for o in step.outcomes]
        return {"generation": self.generation, "trajectory": self.number, "step": len(self.steps),
                "timestep": last.timestep, "decisions": "".join(o.value for o in last.outcomes),
                "full": sum(o.computed_fully for o in flat), "sample_steps": len(flat)}

    def summary(self) -> Dict:
        """Counts and the per-step log, as plain Python values (JSON-ready)."""
        flat = [o for step in self.steps for o in step.outcomes]
        full_per_sample = [sum(step.outcomes[s].computed_fully for step in self.steps)
                           for s in range(self.batch_size)]
        return {
            "trajectory": self.number,
            "generation": self.generation,
            "batch_size": self.batch_size,
            "steps": len(self.steps),
            "full": sum(o.computed_fully for o in flat),
            "speculative": sum(o in (Outcome.SPEC, Outcome.ACCEPTED, Outcome.DEFERRED) for o in flat),
            "rejected": sum(o in (Outcome.REJECTED, Outcome.DEFERRED) for o in flat),
            "checked": sum(o in (Outcome.ACCEPTED, Outcome.REJECTED, Outcome.DEFERRED) for o in flat),
            "full_per_sample": full_per_sample,
            "decisions": ["".join(o.value for o in step.outcomes) for step in self.steps],
            "errors": [step.errors for step in self.steps],
            "timesteps": [step.timestep for step in self.steps],
            "thresholds": [step.tau for step in self.steps],
            "cache_bytes": self.peak_cache_bytes,
        }


class TrajectoryTracker:
    """Routes calls to trajectories; owns the active and recently finished ones.

    A trajectory that starts while no other is active opens a new generation
    (one pipeline call); the CFG branch started beside an active one joins its
    generation.
    """

    def __init__(self):
        self.active: List[Trajectory] = []
        self.finished: List[Trajectory] = []
        self.count = 0

    def route(self, t: float, signature: Tuple, make) -> Trajectory:
        """The trajectory a call at timestep ``t`` belongs to (``make(number)`` builds a new one)."""
        for traj in self.active:
            if traj.signature == signature and traj.last_t is not None and traj.last_t > t:
                return traj
        for traj in [tr for tr in self.active if tr.last_t is None or tr.last_t < t]:
            self._finish(traj)
        self.count += 1
        traj = make(self.count)
        traj.generation = self.active[-1].generation if self.active else next(_GENERATIONS)
        self.active.append(traj)
        while len(self.active) > MAX_ACTIVE:
            self._finish(self.active[0])
        return traj

    def reset(self) -> None:
        for traj in list(self.active):
            self._finish(traj)

    def _finish(self, traj: Trajectory) -> None:
        self.active.remove(traj)
        self.finished.append(traj)
        del self.finished[:-MAX_FINISHED]
        traj.cache = None  # free the cached features; the log stays

    def all(self) -> List[Trajectory]:
        return sorted(self.finished + self.active, key=lambda tr: tr.number)
