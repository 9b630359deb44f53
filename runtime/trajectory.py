"""Trajectories: the state of one denoising run of a batch (which calls continue it:
``runtime/routing.py``).

A trajectory holds, for every sample of its batch, the policy counters and the
feature cache window, plus the per-step log that ``stats`` reports.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from speca_compile.options import Options
from speca_compile.runtime.feature_cache import FeatureCache, FeatureGroup
from speca_compile.runtime.policy import Outcome, make_policy


@dataclasses.dataclass
class StepRecord:
    timestep: float
    tau: Optional[float]
    outcomes: List[Outcome]
    errors: List[Optional[float]]


class Trajectory:
    """Policy, feature cache and step log of one denoising run."""

    def __init__(self, number: int, signature: Tuple, batch_size: int, t_first: float,
                 options: Options, groups: Tuple[FeatureGroup, ...], overrides: Optional[Dict] = None,
                 cache=None):
        self.number = number
        # the generation's own settings (one request's tau0, speculate), checked by generation.py
        self.overrides = dict(overrides or {})
        self.generation = 0     # set by the router
        self.scope = None       # who named the generation: explicit, pipeline, thread, task
        self.signature = signature
        self.batch_size = batch_size
        self.t_first = t_first
        self.t_scale = abs(t_first) if t_first != 0 else 1.0
        self.last_t: Optional[float] = None
        self.policy = make_policy(options, batch_size)
        # its own cache, or ``cache``: slots of the runner's pool (runtime/feature_pool.py)
        self.cache = cache if cache is not None else FeatureCache(
            groups, options.forecaster, options.order, batch_size, options.hermite_sigma, options.cache_dtype)
        self.cache_dtype = self.cache.dtype   # kept for stats after the router frees the cache
        self.steps: List[StepRecord] = []
        self.peak_cache_bytes = 0
        self.last_latent: Optional[torch.Tensor] = None   # for the router's continuation test
        self.last_condition: Tuple = ()
        self.restarts: List[Tuple[int, Tuple[int, ...]]] = []   # (step, samples) restarted
        self.lock = threading.Lock()   # one step at a time, whoever calls

    def restart(self, samples: Sequence[int]) -> None:
        """Start ``samples`` afresh: their latent is not the continuation of their last call."""
        self.policy.restart(samples)
        if self.cache is not None:
            self.cache.forget(torch.tensor(list(samples), dtype=torch.long))
        self.restarts.append((len(self.steps), tuple(samples)))

    def log(self, record: StepRecord) -> None:
        self.steps.append(record)
        self.last_t = record.timestep
        for sample, (outcome, error) in enumerate(zip(record.outcomes, record.errors)):
            self.policy.record(sample, outcome, error)
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
            # the peak bytes of the feature cache's rows, in the dtype they are stored in
            "cache_bytes": self.peak_cache_bytes,
            "cache_dtype": _dtype_name(self.cache_dtype),
            "scope": self.scope,
            # samples whose latent jumped (not the continuation of their last call): warmup again
            "restarted": [{"step": step, "samples": list(samples)} for step, samples in self.restarts],
        }


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    """``cache_dtype`` in ``stats``: the storage dtype, or "as computed" (the features' own)."""
    return "as computed" if dtype is None else str(dtype).replace("torch.", "")
