"""Routing calls to sample state: which trajectory of which generation a call continues.

The generation is named (``runtime/generation.py``); inside one generation a
call continues the trajectory that

* has the same input shapes (a batch or resolution change is a new trajectory),
* was last called at a timestep at or above the call's (samplers such as Heun,
  KDPM2 and DPM-Solver singlestep evaluate one timestep twice, as corrector
  and as the next step: equal timesteps stay in one trajectory), and
* was last called with the same conditioning inputs (prompt embeddings, class
  labels: a branch keeps them; CFG's halves called separately differ in them,
  while their latents are identical), where one does, and
* whose samples' last latent input is near the call's (L2 distance relative
  to the smaller of the two norms below ``CONTINUATION_BOUND``: a latent of a
  very different scale is no continuation either), the nearest first.

At an equal timestep a trajectory with other conditioning is never continued:
that call is another branch of the same step.

The latent test is what keeps separately called CFG branches at the same
timestep apart, and, where nobody named the generation (a raw sampling loop
in its thread's implicit scope), what stops a later run from inheriting an
interrupted one (an img2img pass from t=600 after a run stopped at t=620
satisfies the timestep rule but not this one).  There it is judged **per
sample**: a sample of the continued trajectory whose latent jumped is
restarted (warmup again, its cache window emptied) and ``stats`` counts it,
so a wrong continuation costs compute, never correctness.  Inside a named
generation (``speca_compile.generation``, a pipeline call) a call at a lower
timestep continues its nearest branch whatever the distance: the caller
named the run, and random-weight models' latents can jump by more than the
bound in one step (their noise predictions are noise).  Equal timesteps
need the bound in either scope: that is where a second branch begins.  The bound: a sampler step moves the latent by
a fraction of its norm (DDIM-50 a few percent, a 4-step flow sampler up to
~0.5, an ancestral sampler's fresh noise up to ~0.9 at its last steps); an
unrelated latent of the same scale is ~sqrt(2) = 1.41 away.

A call whose timestep goes above a trajectory's last one finishes that
trajectory (a new run started) and frees its cache.  At most ``MAX_ACTIVE``
trajectories stay active per generation; beyond it the oldest is finished
and ``stats`` says so.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, List, Optional, Tuple

import torch

from speca_compile.runtime.generation import Generation, new_number

CONTINUATION_BOUND = 1.0
MAX_ACTIVE = 64       # per generation: CFG branches, interleaved same-shape runs
MAX_FINISHED = 64     # finished trajectories kept for stats (their caches are freed)


def latent_distance(previous: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """Per-sample ||latent - previous|| / min(||latent||, ||previous||) (float64, CPU, [batch])."""
    a = latent.detach().reshape(latent.shape[0], -1).float()
    b = previous.to(a.device).reshape(previous.shape[0], -1).float()
    scale = torch.minimum(a.norm(dim=1), b.norm(dim=1)).clamp_min(1e-12)
    return ((a - b).norm(dim=1) / scale).double().cpu()


class GenerationState:
    """The trajectories of one generation (its sample state)."""

    def __init__(self, generation: Generation):
        self.generation = weakref.ref(generation)
        self.numbered = generation.numbered
        self.number = generation.number
        self.active: List = []

    def alive(self) -> bool:
        generation = self.generation()
        return generation is not None and not generation.ended


class Router:
    """Per Runner: generation -> its trajectories, plus the log of finished ones.

    Generations are held weakly: when nobody refers to a generation any more
    (a pipeline call's schedule was replaced, a thread ended, the caller dropped
    or ended it), the next call finishes its trajectories and frees their caches.
    All methods are called under the runner's lock.
    """

    def __init__(self):
        self._states: "weakref.WeakKeyDictionary[Generation, GenerationState]" = weakref.WeakKeyDictionary()
        self._live: List[GenerationState] = []     # strong refs, swept when their generation is gone
        self.finished: List = []
        self.count = 0
        self.evicted = 0
        self.lock = threading.Lock()

    def route(self, generation: Generation, t: float, signature: Tuple, latent: Optional[torch.Tensor],
              condition: Tuple, make: Callable[[int], object]):
        """The trajectory a call at timestep ``t`` continues, or a new one from ``make(number)``;
        samples of a continued trajectory whose latent jumped are restarted."""
        self._sweep()
        state = self._states.get(generation)
        if state is None:
            state = self._states[generation] = GenerationState(generation)
            self._live.append(state)
        found = self._continued(state, t, signature, latent, condition)
        if found is not None:
            traj, jumped = found
            if jumped:
                traj.restart(jumped)
            traj.last_latent, traj.last_condition = _keep(latent), condition
            return traj
        for traj in [tr for tr in state.active if tr.last_t is None or tr.last_t < t]:
            self._finish(state, traj)
        self.count += 1
        traj = make(self.count)
        if state.numbered:
            traj.generation = state.number
        else:   # an implicit scope: a new number when no trajectory of the scope is active
            traj.generation = state.active[-1].generation if state.active else new_number()
        traj.scope = generation.kind
        traj.last_latent, traj.last_condition = _keep(latent), condition
        state.active.append(traj)
        while len(state.active) > MAX_ACTIVE:
            self.evicted += 1
            self._finish(state, state.active[0])
        return traj

    def _continued(self, state: GenerationState, t: float, signature: Tuple, latent: Optional[torch.Tensor],
                   condition: Tuple) -> Optional[Tuple[object, List[int]]]:
        candidates = []
        for traj in state.active:
            if traj.signature != signature or traj.last_t is None or traj.last_t < t:
                continue
            other = not _same_tensors(traj.last_condition, condition)
            if other and traj.last_t == t:
                continue                  # another branch of this step
            candidates.append((traj, other))
        if len(candidates) == 1 and state.numbered and t < candidates[0][0].last_t:
            return candidates[0][0], []   # trusted and alone: no branch for the latent to pick
        best = None
        for traj, other in candidates:
            if latent is None or traj.last_latent is None or traj.last_latent.shape != latent.shape:
                jumped, score = [], 0.0   # no latent to compare: timesteps and conditioning alone
            else:
                dist = latent_distance(traj.last_latent, latent)
                near = dist < CONTINUATION_BOUND
                # inside a named generation a call at a lower timestep continues (the caller
                # said so); the latent only picks among its concurrent branches
                trusted = state.numbered and t < traj.last_t
                if not trusted and not bool(near.any()):
                    continue
                jumped = [] if trusted else [s for s, ok in enumerate(near.tolist()) if not ok]
                score = float(dist.mean())
            if best is None or (other, score) < best[0]:
                best = ((other, score), traj, jumped)
        return None if best is None else (best[1], best[2])

    def _sweep(self) -> None:
        for state in [s for s in self._live if not s.alive()]:
            for traj in list(state.active):
                self._finish(state, traj)
            self._live.remove(state)

    def _finish(self, state: GenerationState, traj) -> None:
        state.active.remove(traj)
        self.finished.append(traj)
        del self.finished[:-MAX_FINISHED]
        if traj.cache is not None:
            traj.cache.release()   # a pooled cache's slots go back to its pool
        traj.cache = None          # free the cached features; the log stays
        traj.last_latent, traj.last_condition = None, ()

    def reset(self) -> None:
        for state in self._live:
            for traj in list(state.active):
                self._finish(state, traj)
        self._live.clear()
        self._states.clear()

    def all(self) -> List:
        active = [tr for s in self._live for tr in s.active]
        return sorted(self.finished + active, key=lambda tr: tr.number)

    def active(self) -> List:
        return [tr for s in self._live for tr in s.active]

    def of(self, generation: Generation) -> List:
        """The active trajectories of ``generation`` (none once it was swept)."""
        state = self._states.get(generation)
        return list(state.active) if state is not None else []


def _same_tensors(a: Tuple, b: Tuple) -> bool:
    if len(a) != len(b):
        return False
    return all(x is y or (x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
                          and torch.equal(x, y)) for x, y in zip(a, b))


def _keep(latent: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A copy: a sampler may update its latent in place, which would hide a jump."""
    return None if latent is None else latent.detach().clone()
