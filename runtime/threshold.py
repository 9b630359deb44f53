"""The acceptance threshold schedule tau(t) = tau0 * beta ** progress.

progress = 1 - t / t_first runs from 0 at the first step of a trajectory to
about 1 at the last, so the threshold tightens toward the end (where errors
show in the final image) without knowing the number of steps up front.
"""

from __future__ import annotations


def progress(t: float, t_first: float) -> float:
    """Fraction of the trajectory done, clamped to [0, 1]."""
    if t_first == 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - t / t_first))


def threshold(tau0: float, beta: float, t: float, t_first: float) -> float:
    return tau0 * beta ** progress(t, t_first)
