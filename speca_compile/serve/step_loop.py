"""The step loop: every tick, all active requests advance one denoising step in ONE batched call.

Why step-level batching with speculation: requests arrive at different times,
so a batch holds rows at different denoising steps.  Serving systems that
batch so (vllm-omni's step scheduler, SGLang diffusion's continuous batching)
switch feature caching off, because their cache decides per batch.  Here each
row names its request (``speca_compile.rows``), each request is its own
generation with its own cache window and policy, and decides full / forecast /
verify for itself; the runner runs the rows of all requests that took the
same path as one sub-batch.

One tick:

1. admit waiting requests (``mode``: ``"step"`` fills free places on every
   tick of the policy's alignment grid (below), ``"request"`` admits a new batch only when the last one finished, waiting
   up to ``batch_wait_s`` for it to fill, ``"single"`` one request at a time),
2. stack the rows of every active request (its latent, twice under
   classifier-free guidance with its conditional and unconditional inputs),
   each row at its own request's timestep, and call the bundle once,
3. apply each request's sampler update (DDIM or flow Euler, ``spec.sampler``)
   to its rows' output, and
4. answer the requests that took their last step.

Admission on the alignment grid.  The policy puts full steps by estimate on
every ``align_full_steps``-th step of a request's own trajectory, so that a
batch's samples compute fully together (``runtime/budget_policy.py``).  A
request admitted on an odd tick would keep the other parity for its whole
run: half the requests full on even ticks, half on odd, and every tick runs
two small full sub-batches instead of one large one every other tick.  So
requests join only on ticks that are multiples of the grid (a wait of at
most ``align - 1`` ticks); each request's decisions are its own, unchanged,
whatever tick it joins on.

The queue is bounded (``submit`` raises ``QueueFull``, never waits); a failed
model call fails the requests of that tick with the error and the loop goes
on; stopping the loop answers every waiting and active request with an
error.  Nothing is lost or left hanging.  The loop is driven by its own
thread (``start``) or tick by tick (``tick``: replaying the same arrival
sequence gives bit-identical results).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import threading
import time
from typing import Deque, Dict, List, Optional

import torch

import speca_compile
from speca_compile import sampling
from speca_compile.runtime.generation import OVERRIDES
from speca_compile.serve.protocol import GenerateRequest
from speca_compile.serve.spec import ServingSpec, spec_of

MODES = ("step", "request", "single")


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests: come back after ``retry_after`` seconds."""

    def __init__(self, length: int, retry_after: float):
        super().__init__(f"the queue is full ({length} requests waiting); retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class LoopStopped(Exception):
    """The loop stopped before the request finished."""


@dataclasses.dataclass
class Result:
    """One answered request: its final latent (one sample) and its counts."""

    latent: torch.Tensor
    stats: Dict


class Job:
    """One request inside the loop: its sampler state and its generation."""

    def __init__(self, number: int, request: GenerateRequest, spec: ServingSpec, speculate: bool):
        self.number = number
        self.request = request
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        overrides = {k: v for k, v in request.options.items() if k in OVERRIDES}
        if not speculate:
            overrides["speculate"] = False
        self.generation = speca_compile.new_generation(label=f"request {number}", **overrides)
        noise = torch.Generator().manual_seed(request.seed)
        self.x = torch.randn((1,) + spec.latent_shape, generator=noise, dtype=torch.float32).to(spec.latent_dtype)
        self.kind = spec.sampler
        self.schedule = (sampling.ddim_timesteps(request.steps) if spec.sampler == "ddim"
                         else sampling.flow_sigmas(request.steps))
        self.index = 0
        self.rows = request.rows
        guided = [request.inputs] + ([request.negative_inputs] if self.rows == 2 else [])
        self.conditions = {key: torch.stack([g[key] for g in guided]) for key in spec.condition_keys}
        self.submitted = time.perf_counter()
        self.started: Optional[float] = None
        self.compute_s = 0.0

    @property
    def t(self) -> float:
        return float(self.schedule[self.index])

    @property
    def done(self) -> bool:
        return self.index >= self.request.steps


def advance_jobs(jobs: List[Job], output: torch.Tensor) -> None:
    """One sampler step of every job, ``output`` holding their rows in order.

    Computed for all jobs at once, with each job's numbers (guidance scale, the DDIM alphas or
    the flow step of its own timestep) as per-row factors: the same elementwise float32
    arithmetic as one job at a time, in a few ops per tick instead of a few per request (a
    served tick's sampler update was 0.4 ms of Python for 8 requests)."""
    first, second, scale, kinds = [], [], [], {job.kind for job in jobs}
    offset = 0
    for job in jobs:
        first.append(offset)
        second.append(offset + 1 if job.rows == 2 else offset)   # one row: uncond = cond, scale 1
        scale.append(job.request.guidance_scale if job.rows == 2 else 1.0)
        offset += job.rows
    if len(kinds) != 1:
        raise ValueError(f"advance_jobs: jobs of several samplers {sorted(kinds)}")
    x = torch.cat([job.x for job in jobs])
    out = output[:, :x.shape[1]] if jobs[0].kind == "ddim" else output
    out = out.to(x.dtype)
    cond, uncond = out[first], out[second]
    g = _per_row(torch.tensor(scale, dtype=torch.float64).to(x.dtype), x)
    eps = uncond + g * (cond - uncond)
    steps = [(job.schedule[job.index], job.schedule[job.index + 1] if job.index + 1 < len(job.schedule) else None)
             for job in jobs]
    if jobs[0].kind == "ddim":
        abar = sampling.alphas_cumprod()
        a_t = _per_row(abar[[t for t, _ in steps]].to(x.dtype), x)
        # the last step's "previous" alpha is 1 (x0 itself): one gather, then those rows set
        a_prev = abar[[n if n is not None else 0 for _, n in steps]]
        last = [k for k, (_, n) in enumerate(steps) if n is None]
        if last:
            a_prev[last] = 1.0
        a_prev = _per_row(a_prev.to(x.dtype), x)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    else:
        x = x + _per_row(torch.tensor([n - t for t, n in steps], dtype=torch.float64).to(x.dtype), x) * eps
    for k, job in enumerate(jobs):
        job.x = x[k:k + 1]
        job.index += 1


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


class StepLoop:
    """Serves one loaded bundle (``speca_compile.load``)."""

    def __init__(self, model, spec: Optional[ServingSpec] = None, max_batch: int = 8, max_queue: int = 64,
                 mode: str = "step", speculate: bool = True, batch_wait_s: float = 0.05):
        if mode not in MODES:
            raise ValueError(f"StepLoop: mode {mode!r} is not one of {MODES}")
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"StepLoop: max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1")
        self.model = model
        self.spec = spec if spec is not None else spec_of(model)
        self.mode = mode
        self.max_batch = 1 if mode == "single" else max_batch
        self.max_queue = max_queue
        self.speculate = speculate
        self.batch_wait_s = batch_wait_s
        self.queue: Deque[Job] = collections.deque()
        self.active: List[Job] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.failure: Optional[str] = None     # why the loop thread died, if it did
        self.counts = collections.Counter()    # served, failed, rejected, ticks, rows, requests_ticked, ...
        self._tick_seconds: Deque[float] = collections.deque(maxlen=32)
        self.align = _alignment(model) if speculate else 1
        self._grid = 0    # the tick the current grid started on (the last admission into an idle loop)

    # ------------------------------------------------------------- requests
    def submit(self, request: GenerateRequest) -> concurrent.futures.Future:
        """Queue ``request``; its future gives a ``Result`` (or raises the reason it failed)."""
        with self._lock:
            if self._stopping:
                raise LoopStopped("the step loop is stopping; not accepting requests")
            if len(self.queue) >= self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(len(self.queue), self._retry_after())
            job = Job(next(self._numbers), request, self.spec, self.speculate)
            self.queue.append(job)
            self._wake.notify()
        return job.future

    def _retry_after(self) -> float:
        """About how long until a place frees: the queue ahead, in ticks, at the recent tick time."""
        tick = sorted(self._tick_seconds)[len(self._tick_seconds) // 2] if self._tick_seconds else 0.05
        steps = self.queue[0].request.steps if self.queue else 50
        return max(0.5, tick * steps * len(self.queue) / max(1, self.max_batch))

    # ----------------------------------------------------------------- tick
    def tick(self) -> int:
        """Admit waiting requests, advance every active one by one step; the number advanced."""
        with self._lock:
            self._admit()
            jobs = list(self.active)
        if not jobs:
            return 0
        start = time.perf_counter()
        for job in jobs:
            if job.started is None:
                job.started = start
        try:
            output = self._call(jobs)
        except Exception as exc:   # a failed call fails this tick's requests, not the loop
            self._fail(jobs, exc)
            return 0
        advance_jobs(jobs, output)
        offset = sum(job.rows for job in jobs)
        seconds = time.perf_counter() - start
        finished = []
        with self._lock:
            self._tick_seconds.append(seconds)
            self.counts["ticks"] += 1
            self.counts["requests_ticked"] += len(jobs)
            self.counts["rows"] += offset
            for job in jobs:
                job.compute_s += seconds
                if job.done:
                    self.active.remove(job)
                    finished.append(job)
        for job in finished:
            self._finish(job)
        return len(jobs)

    def _admit(self) -> None:
        if self.mode != "step" and self.active:
            return   # request-level batching: the batch runs to its end first
        if not self.active:
            self._grid = self.counts["ticks"]   # an idle loop admits at once: the grid starts here
        elif self.mode == "step" and (self.counts["ticks"] - self._grid) % self.align:
            return   # off the alignment grid (module doc)
        while self.queue and len(self.active) < self.max_batch:
            self.active.append(self.queue.popleft())

    def _call(self, jobs: List[Job]) -> torch.Tensor:
        spec = self.spec
        owners = [job.generation for job in jobs for _ in range(job.rows)]
        inputs = {spec.latent: torch.cat([job.x.expand((job.rows,) + tuple(job.x.shape[1:])) for job in jobs]),
                  spec.timestep: torch.tensor([job.t for job in jobs for _ in range(job.rows)],
                                              dtype=spec.timestep_dtype)}
        for key in spec.condition_keys:
            inputs[key] = torch.cat([job.conditions[key] for job in jobs])
        inputs.update(spec.fixed)
        with speca_compile.rows(owners):
            out = self.model(**inputs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _finish(self, job: Job) -> None:
        summaries = self.model.runner.summaries_of(job.generation)
        speca_compile.end_generation(job.generation)
        counts = {k: sum(s[k] for s in summaries) for k in ("full", "speculative", "rejected")}
        stats = {**counts, "steps": job.request.steps, "queue_s": job.started - job.submitted,
                 "compute_s": job.compute_s}
        with self._lock:
            self.counts["served"] += 1
            self.counts["full_row_steps"] += counts["full"]
            self.counts["row_steps"] += job.request.steps * job.rows
        job.future.set_result(Result(job.x[0], stats))

    def _fail(self, jobs: List[Job], exc: BaseException) -> None:
        with self._lock:
            for job in jobs:
                if job in self.active:
                    self.active.remove(job)
            self.counts["failed"] += len(jobs)
        for job in jobs:
            speca_compile.end_generation(job.generation)
            if not job.future.done():
                job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))

    # ----------------------------------------------------------- the thread
    def start(self) -> "StepLoop":
        """Run ticks on a thread of its own until ``stop``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="speca-step-loop", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stopping and not self.active and not self._ready():
                        self._wake.wait(timeout=self._wait_time())
                    if self._stopping:
                        return
                self.tick()
        except BaseException as exc:   # a bug in the loop itself: say so, answer everyone
            self.failure = f"the step loop stopped: {type(exc).__name__}: {exc}"
            with self._lock:
                stranded = list(self.queue) + list(self.active)
                self.queue.clear()
            self._fail(stranded, RuntimeError(self.failure))

    def _ready(self) -> bool:
        """Whether the waiting requests should start now (request-level batching waits for a
        full batch, or for ``batch_wait_s`` after its first request arrived)."""
        if not self.queue:
            return False
        if self.mode != "request" or len(self.queue) >= self.max_batch:
            return True
        return time.perf_counter() - self.queue[0].submitted >= self.batch_wait_s

    def _wait_time(self) -> Optional[float]:
        if self.queue and self.mode == "request":
            return max(0.001, self.batch_wait_s - (time.perf_counter() - self.queue[0].submitted))
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; every request not yet answered gets ``LoopStopped``."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            stranded = list(self.queue) + list(self.active)
            self.queue.clear()
        self._fail(stranded, LoopStopped("the step loop stopped before this request finished"))

    # ---------------------------------------------------------------- state
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def counters(self) -> Dict:
        """What ``GET /stats`` answers."""
        with self._lock:
            c = self.counts
            return {"mode": self.mode, "speculate": self.speculate, "max_batch": self.max_batch,
                    "served": c["served"], "failed": c["failed"], "rejected": c["rejected"],
                    "in_flight": len(self.active), "queue_length": len(self.queue), "ticks": c["ticks"],
                    "mean_batch_requests": c["requests_ticked"] / c["ticks"] if c["ticks"] else None,
                    "mean_batch_rows": c["rows"] / c["ticks"] if c["ticks"] else None,
                    "full_fraction": c["full_row_steps"] / c["row_steps"] if c["row_steps"] else None}


def _alignment(model) -> int:
    """The policy's full-step grid (``align_full_steps``) of a loaded bundle; 1 when it has none."""
    options = getattr(getattr(model, "runner", None), "options", None)
    return max(1, int(getattr(options, "align_full_steps", 1) or 1))
