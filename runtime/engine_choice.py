"""Each segment on the faster of two engines, measured where it runs.

Why: on the CPU a lowering does not win on every segment.  ONNX Runtime runs a
fused block stack (a full step: hundreds of ops in one call) faster than
PyTorch, but the small per-step segments of a speculative step (prologue,
epilogue, the verify block at a few rows) cost more through it than as
PyTorch calls: each call pays ONNX Runtime's binding, and its intra-op threads
meet cores that libgomp's workers still spin on after the runtime's own torch
ops (forecasts, errors) right before it.  Measured alone, outside a trajectory,
the two tie on the verify block; inside one the eager lowering's checks took
0.07 s where ONNX Runtime's took 0.11 s (flux_digits, 25 images, README
"Speculation policy").  Which side wins depends on the model's size, the
batch and the machine, so it is measured, not assumed.

``MeasuredChoice`` wraps one segment's lowered engine (a ``CheckedEngine``:
its first call builds and is checked against eager) and an alternative that
computes the same, here the eager segment (``against_eager``).  After the lowered engine's first call, the next
``trials`` calls run both engines on the same inputs, in alternating order
(each sees what ran before it in the trajectory half the time), each timed;
those calls return the lowered engine's outputs, as they would without the
choice.  Then the segment runs on the alternative from there on if the median
of its per-call time ratios to the lowering is under 1 (a ratio per call: trial calls
differ in size, sub-batches of a step), else on the lowering (ties keep it).  A trial call in which the lowered
engine built a new variant (an export, a session) is not counted.  Both
candidates agree with eager within the lowering's checked bound, so the choice
changes numbers only by that much (``trial_rel_diff`` in ``stats``: the largest
relative L2 between the two on the trial calls); ``stats`` reports it per segment
(``chosen``, ``trial_ms``).

Used where ``engine_choice="measure"`` (the default under ``lowering="auto"``
on the CPU; a named lowering runs every segment on it).  Not in loaded bundles:
they hold no eager segments, and racing a one-thread session of each small
segment against the default one gave no measurable serving gain
(``examples/serve_tick_profile.py`` style A/B, dit_digits stride 16, 2026-12-08:
speculative tick medians 12.8 vs 12.3 ms inside the host's noise; the two
sessions gave the same bits).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from speca_compile.passes.partition import Segment
from speca_compile.runtime.eager_engine import EagerEngine
from speca_compile.runtime.engine import Engine

TRIALS = 4   # calls timed per engine: even, so each engine runs first in half of them


class MeasuredChoice(Engine):
    """A segment's lowered engine or an alternative, whichever ran faster on its first calls."""

    def __init__(self, lowered: Engine, alternative: Engine, trials: int = TRIALS,
                 clock: Callable[[], float] = time.perf_counter):
        self.lowered = lowered
        self.alternative = alternative
        self.trials = trials
        self.clock = clock
        self.times: Dict[str, List[float]] = {"lowered": [], "alternative": []}
        self.chosen: Optional[Engine] = None
        self.difference = 0.0   # the largest relative L2 between the two engines' trial outputs
        self._lock = threading.Lock()

    def __getattr__(self, name):   # what the choice lacks is the lowered engine's (bundle export)
        if name == "lowered":      # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.lowered, name)

    @property
    def name(self):
        return self.lowered.name

    @property
    def info(self) -> Dict[str, object]:
        info = dict(self.lowered.info)
        if self.chosen is not None:
            info["chosen"] = self.chosen.name
        if any(self.times.values()):
            info["trial_ms"] = {self._engine(side).name: [round(t * 1e3, 3) for t in times]
                                for side, times in self.times.items()}
            info["trial_rel_diff"] = self.difference
        return info

    def _engine(self, side: str) -> Engine:
        return self.lowered if side == "lowered" else self.alternative

    def alternative_ratio(self) -> float:
        """Median over the trial calls of the alternative's time over the lowering's on the same
        inputs: a ratio per call, so calls of different sizes (sub-batches) weigh alike, and the
        median, so one call the OS interrupted does not decide."""
        pairs = zip(self.times["alternative"], self.times["lowered"])
        return statistics.median(a / max(low, 1e-12) for a, low in pairs)

    def built(self) -> bool:
        return self.chosen is self.alternative or self.lowered.built()

    def run(self, inputs: Sequence) -> List:
        chosen = self.chosen
        if chosen is not None:
            return chosen.run(inputs)
        if not self.lowered.built():   # the first call builds and checks: not a timing
            return self.lowered.run(inputs)
        with self._lock:   # trial calls one at a time: threads would time each other
            if self.chosen is not None:
                return self.chosen.run(inputs)
            return self._trial(inputs)

    def _trial(self, inputs: Sequence) -> List:
        """Both engines on ``inputs``, timed; the lowered engine's outputs."""
        lowered_first = len(self.times["lowered"]) % 2 == 0
        builds = self.lowered.info.get("builds")
        outputs: Dict[str, List] = {}
        spent: Dict[str, float] = {}
        for side in (("lowered", "alternative") if lowered_first else ("alternative", "lowered")):
            engine = self._engine(side)
            _synchronize(inputs)
            start = self.clock()
            outputs[side] = engine.run(inputs)
            _synchronize(inputs)
            spent[side] = self.clock() - start
        if self.lowered.info.get("builds") == builds and "fallback" not in self.lowered.info:
            for side, seconds in spent.items():
                self.times[side].append(seconds)
            self.difference = max(self.difference, _difference(outputs["lowered"], outputs["alternative"]))
        if "fallback" in self.lowered.info:   # the check failed: the lowered engine runs eagerly now
            self.chosen = self.lowered
        elif len(self.times["lowered"]) >= self.trials:
            self.chosen = self.alternative if self.alternative_ratio() < 1 else self.lowered
        return outputs["lowered"]


def against_eager(engines: Dict[str, Engine], segments: Dict[str, Segment]) -> Dict[str, Engine]:
    """Every engine of ``engines`` wrapped in a ``MeasuredChoice`` against its eager segment."""
    return {name: MeasuredChoice(engine, EagerEngine(segments[name])) for name, engine in engines.items()}


def _difference(a: Sequence, b: Sequence) -> float:
    """The largest relative L2 difference between corresponding tensor outputs (0.0: same bits
    or no tensors)."""
    worst = 0.0
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.is_floating_point():
            if not torch.equal(x, y):
                worst = max(worst, float((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)))
    return worst


def _synchronize(inputs: Sequence) -> None:
    """Wait for the GPU where the inputs live there (its calls return before they finish)."""
    for value in inputs:
        if isinstance(value, torch.Tensor) and value.is_cuda:
            torch.cuda.synchronize(value.device)
            return
