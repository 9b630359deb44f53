"""Generations: who a call belongs to, named by the caller rather than guessed.

Each sample's state (its cache window and policy counters) belongs to one
*generation*: one image (or batch of images) being denoised.  The runtime
never infers the generation from global history; it is named, in this order:

1. by the caller: ``with speca_compile.generation():`` scopes every speca call
   made inside the block (in this thread or asyncio task) and ends it at the
   block's end; ``g = speca_compile.new_generation()`` names one of several
   concurrent generations, ``with speca_compile.generation(g):`` resumes it in
   any later block (a serving loop, a sampler driven step by step) and
   ``speca_compile.end_generation(g)`` frees its state (so does dropping ``g``);
2. by the pipeline call: ``speca_compile.apply`` gives the compiled model a
   ``generation_key`` callable that maps the pipeline's current schedule (the
   ``scheduler.timesteps`` tensor each pipeline call sets anew) to one
   generation, without touching the pipeline's classes or methods;
3. by the thread and asyncio task: without either, each thread and each task
   has its own implicit scope (context variables), so concurrent callers
   never share state.

Rows from many requests: a serving loop hands one batched call whose rows
belong to different requests at different timesteps, each row naming its
generation (``with speca_compile.rows([g1, g1, g2]):``, one generation per
row of the call).  The runner splits the rows by generation, routes each
group as ``routing`` routes a call (each request keeps its own trajectory,
cache window and policy), and the step plans of all groups run as one
sub-batch per path.  A generation may carry per-request ``overrides``
(``tau0``, ``speculate``) that its trajectories use instead of the compiled
model's options.

Inside one scope the runtime still tells trajectories apart (separately
called CFG branches, a raw sampling loop run twice): that fallback lives in
``runtime/routing.py``.  Nothing here holds runtime state; a ``Generation``
is an identity the runners key their state on (weakly, so a generation
nobody refers to any more frees its state).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
import weakref
from typing import Dict, Hashable, Optional, Tuple

from torch.utils.weak import WeakIdKeyDictionary

# The generation of each row of the next calls (``speca_compile.rows``), per thread / task.
_ROWS: contextvars.ContextVar[Optional[Tuple["Generation", ...]]] = contextvars.ContextVar(
    "speca_row_generations", default=None)

# What a generation may run differently from its compiled model's options (one request's settings)
OVERRIDES = ("tau0", "speculate")

# Identity numbers only (stats show them); no state is attached to the counter.
_NUMBERS = itertools.count(1)

# The generation the caller opened with ``speca_compile.generation`` (per thread / task).
_EXPLICIT: contextvars.ContextVar[Optional["Generation"]] = contextvars.ContextVar(
    "speca_generation", default=None)
# The implicit scope of this thread or task, created on its first call.
_IMPLICIT: contextvars.ContextVar[Optional["Generation"]] = contextvars.ContextVar(
    "speca_implicit_scope", default=None)


class Generation:
    """One named scope of calls.  ``kind`` says who named it (stats report it):
    ``"explicit"`` (``speca_compile.generation``), ``"pipeline"`` (a pipeline call
    through ``apply``), ``"thread"`` / ``"task"`` (the implicit scope).

    ``numbered`` generations give every trajectory inside them the generation's
    number (one pipeline call, one explicit block); an implicit scope lasts as
    long as its thread, so its trajectories are numbered by the router, a new
    number whenever a trajectory starts while none of the scope is active.
    """

    __slots__ = ("number", "kind", "label", "ended", "owner", "overrides", "__weakref__")

    def __init__(self, kind: str, label: Hashable = None, owner=None, overrides: Optional[Dict] = None):
        self.number = new_number()
        self.kind = kind
        self.label = label    # the caller's name for it, shown in stats
        self.ended = False
        self.owner = owner   # the thread token or task an implicit scope belongs to
        self.overrides = dict(overrides or {})   # OVERRIDES: what this generation runs differently

    @property
    def numbered(self) -> bool:
        return self.kind in ("explicit", "pipeline")

    def __repr__(self) -> str:
        label = "" if self.label is None else f" {self.label!r}"
        return f"<speca generation {self.number} ({self.kind}{label}{', ended' if self.ended else ''})>"


def new_number() -> int:
    """A fresh generation number (an implicit scope numbers its runs with these)."""
    return next(_NUMBERS)


def current(generation_key=None) -> Generation:
    """The generation a call made now belongs to (``generation_key``: the compiled
    model's option of that name, e.g. the pipeline's, or ``None``)."""
    explicit = _EXPLICIT.get()
    if explicit is not None:
        return explicit
    if generation_key is not None:
        named = generation_key()
        if named is not None:
            if not isinstance(named, Generation):
                raise TypeError(f"option 'generation_key' must return a speca Generation or None, "
                                f"got {type(named).__name__}")
            return named
    return implicit()


def implicit() -> Generation:
    """This thread's (or asyncio task's) own scope.  Context variables are per thread;
    a task starts with a copy of its creator's context, so the owner is checked and a
    task gets a scope of its own on its first call."""
    owner = _owner()
    scope = _IMPLICIT.get()
    if scope is None or scope.owner() is not owner:
        scope = Generation("task" if isinstance(owner, asyncio.Task) else "thread", owner=weakref.ref(owner))
        _IMPLICIT.set(scope)
    return scope


class _ThreadToken:
    """A per-thread identity that dies with the thread (thread ids are reused)."""

    __slots__ = ("__weakref__",)


_THREAD = threading.local()


def _owner():
    try:
        task = asyncio.current_task()
    except RuntimeError:   # no running event loop in this thread
        task = None
    if task is not None:
        return task
    token = getattr(_THREAD, "token", None)
    if token is None:
        token = _THREAD.token = _ThreadToken()
    return token


def row_generations() -> Optional[Tuple[Generation, ...]]:
    """The generation of each row of a call made now, if the caller named them."""
    return _ROWS.get()


def enter_rows(rows: Tuple[Generation, ...]) -> contextvars.Token:
    return _ROWS.set(rows)


def leave_rows(token: contextvars.Token) -> None:
    _ROWS.reset(token)


def check_overrides(overrides: Dict) -> Dict:
    """``overrides`` checked: only OVERRIDES keys; tau0 a number > 0 or "auto", speculate a bool."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"generation overrides: unknown key(s) {unknown}; valid: {list(OVERRIDES)}")
    tau0 = overrides.get("tau0")
    if tau0 is not None and tau0 != "auto" and (isinstance(tau0, bool) or not isinstance(tau0, (int, float))
                                                or not tau0 > 0 or tau0 == float("inf")):
        raise ValueError(f"generation overrides: tau0 must be a finite number > 0 or 'auto', got {tau0!r}")
    speculate = overrides.get("speculate")
    if speculate is not None and not isinstance(speculate, bool):
        raise ValueError(f"generation overrides: speculate must be true or false, got {speculate!r}")
    return {k: v for k, v in overrides.items() if v is not None}


def enter(generation: Generation) -> contextvars.Token:
    return _EXPLICIT.set(generation)


def leave(token: contextvars.Token) -> None:
    _EXPLICIT.reset(token)


class PipelineGenerations:
    """``generation_key`` for a diffusers pipeline: one generation per pipeline call.

    Every pipeline call runs ``scheduler.set_timesteps``, which assigns a new
    ``scheduler.timesteps`` tensor; that tensor (held weakly) names the call.
    The pipeline is read, never modified, and held weakly.  A call from another
    thread or task than the one that started the pipeline call (two pipelines
    sharing one compiled transformer) is not this pipeline's: it falls back to
    its own implicit scope.
    """

    def __init__(self, pipe):
        self._pipe = weakref.ref(pipe)
        # keyed by the tensor's identity (a tensor's == is elementwise)
        self._by_schedule = WeakIdKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self) -> Optional[Generation]:
        pipe = self._pipe()
        schedule = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
        if schedule is None:
            return None
        try:
            weakref.ref(schedule)
        except TypeError:   # a list or numpy array: cannot name a call by it
            return None
        owner = _owner()
        with self._lock:
            found = self._by_schedule.get(schedule)
            if found is None:
                found = Generation("pipeline", owner=weakref.ref(owner))
                self._by_schedule[schedule] = found
        return found if found.owner() is owner else None
