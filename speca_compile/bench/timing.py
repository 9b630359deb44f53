"""Interleaved timing: every method runs once per round, rounds repeat.

Timing methods one after another lets machine noise (frequency scaling, a
neighbour's load) favour whichever ran in the quiet minute; interleaving
spreads it over all of them, and the median drops the outliers.  Speedups are
ratios of medians taken in the same run, never figures from another run.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional


def interleaved_medians(methods: Dict[str, Callable[[], object]], repeats: int,
                        on_tick: Optional[Callable[[str], None]] = None) -> Dict[str, float]:
    """Median wall seconds per method over ``repeats`` interleaved rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: Dict[str, List[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if on_tick is not None:
                on_tick(name)
    return {name: statistics.median(values) for name, values in times.items()}
