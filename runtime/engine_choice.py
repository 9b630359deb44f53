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
computes the same, here the eager segment (``against_eager``).  On the
segment's first call, after the lowered engine's own, both engines run
``trials`` more times on the same inputs, in alternating order, each timed (a
lowered call right after an eager one meets its spinning workers, as it does
after the runtime's torch ops in a trajectory).  The segment then runs on the
alternative if the median of the per-trial time ratios is under 1, else on the
lowering (ties keep it); a trial in which the lowered engine built a variant
is not counted.  The first call already returns the chosen engine's outputs,
so every call of the segment computes what the chosen engine computes: a
repeated call with the same inputs gives the same bits (a pipeline called
twice with one seed; ``examples/pipeline_flux_digits.py``).  Both candidates
agree with eager within the lowering's checked bound, so the choice changes
numbers only by that much (``trial_rel_diff`` in ``stats``: the largest
relative L2 between the two on the trials); ``stats`` reports it per segment
(``chosen``, ``chosen_by``, ``trial_ms``).  The choice is kept in the engine
cache beside the checked ONNX file (``<key>.choice``, keyed by that file's
checksum and input specs, the machine's name, torch's thread count), so a
fresh compile or a later process on the same cache runs the same engines and
gives the same bits; an engine without cached files measures again.

Used where ``engine_choice="measure"`` (the default under ``lowering="auto"``
on the CPU; a named lowering runs every segment on it).  Not in loaded bundles:
they hold no eager segments, and racing a one-thread session of each small
segment against the default one gave no measurable serving gain
(``examples/serve_tick_profile.py`` style A/B, dit_digits stride 16, 2026-12-08:
speculative tick medians 12.8 vs 12.3 ms inside the host's noise; the two
sessions gave the same bits).
"""

from __future__ import annotations

import platform
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from speca_compile.passes.partition import Segment
from speca_compile.runtime.eager_engine import EagerEngine
from speca_compile.runtime.engine import Engine, WrappingEngine

TRIALS = 4   # timed runs per engine: even, so each engine runs first in half of them


class MeasuredChoice(WrappingEngine):
    """A segment's lowered engine or an alternative, whichever ran faster on its first call."""

    wrapped = "lowered"

    def __init__(self, lowered: Engine, alternative: Engine, trials: int = TRIALS,
                 clock: Callable[[], float] = time.perf_counter):
        self.lowered = lowered
        self.alternative = alternative
        self.trials = trials
        self.clock = clock
        self.times: Dict[str, List[float]] = {"lowered": [], "alternative": []}
        self.chosen: Optional[Engine] = None
        self.difference = 0.0   # the largest relative L2 between the two engines' trial outputs
        self.recalled = False   # chosen from the cache (an earlier compile's or process's timings)
        self._lock = threading.Lock()

    @property
    def info(self) -> Dict[str, object]:
        info = dict(self.lowered.info)
        if self.chosen is not None:
            info["chosen"] = self.chosen.name
            info["chosen_by"] = "cache" if self.recalled else "trials"
        if any(self.times.values()):
            info["trial_ms"] = {self._engine(side).name: [round(t * 1e3, 3) for t in times]
                                for side, times in self.times.items()}
            info["trial_rel_diff"] = self.difference
        return info

    def _engine(self, side: str) -> Engine:
        return self.lowered if side == "lowered" else self.alternative

    def alternative_ratio(self) -> float:
        """Median over the trials of the alternative's time over the lowering's: the median, so
        one call the OS interrupted does not decide."""
        pairs = zip(self.times["alternative"], self.times["lowered"])
        return statistics.median(a / max(low, 1e-12) for a, low in pairs)

    def built(self) -> bool:
        return self.chosen is self.alternative or self.lowered.built()

    def run(self, inputs: Sequence) -> List:
        chosen = self.chosen
        if chosen is not None:
            return chosen.run(inputs)
        with self._lock:   # the first call chooses, once: threads would time each other
            if self.chosen is not None:
                return self.chosen.run(inputs)
            return self._choose(inputs)

    def _choose(self, inputs: Sequence) -> List:
        """The first call: the lowered engine once (it builds and is checked), then both engines
        ``trials`` times each on ``inputs``, timed, in alternating order; the chosen engine's
        outputs."""
        last = {"lowered": self.lowered.run(inputs)}
        if "fallback" in self.lowered.info:   # the check failed: the lowered engine runs eagerly now
            self.chosen = self.lowered
            return last["lowered"]
        cache, key = self._memory(inputs)
        known = _read_choice(cache, key)
        if known is not None:   # chosen before for this file, machine and thread count
            self.chosen, self.recalled = self._engine(known), True
            return last["lowered"] if known == "lowered" else self.chosen.run(inputs)
        for trial in range(self.trials):
            builds = self.lowered.info.get("builds")
            spent: Dict[str, float] = {}
            for side in ("lowered", "alternative") if trial % 2 == 0 else ("alternative", "lowered"):
                _synchronize(inputs)
                start = self.clock()
                last[side] = self._engine(side).run(inputs)
                _synchronize(inputs)
                spent[side] = self.clock() - start
            if "fallback" in self.lowered.info:
                self.chosen = self.lowered
                return last["lowered"]
            if self.lowered.info.get("builds") == builds:   # a build is not a timing
                for side, seconds in spent.items():
                    self.times[side].append(seconds)
                self.difference = max(self.difference, _difference(last["lowered"], last["alternative"]))
        faster = bool(self.times["lowered"]) and self.alternative_ratio() < 1
        self.chosen = self.alternative if faster else self.lowered
        if cache is not None and self.times["lowered"]:
            try:
                cache.write_text(key, ".choice", "alternative" if faster else "lowered")
            except OSError:   # a cache that cannot be written: the next compile measures again
                pass
        return last["alternative" if faster else "lowered"]

    def _memory(self, inputs: Sequence):
        """Where this choice is kept: the lowered engine's cache, keyed by the checked file the
        inputs ran on (its key holds the file's checksum, the input specs and the bound), this
        machine, torch's thread count and the alternative; (None, None) for an engine without
        cached files (a fresh compile then measures again)."""
        engine = self.lowered
        while isinstance(engine, WrappingEngine):   # the first-call check's wrapper: the engine itself
            engine = getattr(engine, type(engine).wrapped)
        try:
            variant = engine.variants.get(engine.variant_key(inputs))
            cache = engine.cache
        except AttributeError:
            return None, None
        check_key = getattr(variant, "check_key", None)
        if check_key is None or not hasattr(cache, "write_text"):
            return None, None
        from speca_compile.runtime.engine_cache import cache_key

        return cache, cache_key("choice", check_key, platform.node(), str(torch.get_num_threads()),
                                self.alternative.name)


def against_eager(engines: Dict[str, Engine], segments: Dict[str, Segment]) -> Dict[str, Engine]:
    """Every engine of ``engines`` wrapped in a ``MeasuredChoice`` against its eager segment."""
    return {name: MeasuredChoice(engine, EagerEngine(segments[name])) for name, engine in engines.items()}


def _read_choice(cache, key: Optional[str]) -> Optional[str]:
    """The side kept under ``key`` ("lowered" or "alternative"), or None (none, or unreadable)."""
    if cache is None:
        return None
    try:
        text = cache.path(key, ".choice").read_text().strip()
    except (FileNotFoundError, OSError, UnicodeDecodeError):
        return None
    return text if text in ("lowered", "alternative") else None


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
