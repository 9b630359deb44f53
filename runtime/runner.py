"""The Runner: executes a SpeculativeProgram call by call across timesteps.

Dynamo calls it with the graph's flat inputs.  Per call it

1. reads the call's timesteps, latent and shapes (``call_inputs``),
2. routes the call to its trajectory: the generation is named by the caller,
   the pipeline call or the thread / task (``generation``), the trajectory
   inside it by shapes, timesteps and latent continuity (``routing``),
3. asks the policy for each sample's decision and groups the samples
   (``step_plan``), and
4. runs each group on a view of its rows (``batch_view``):

* the full path (prologue, block stack, epilogue) on the samples that need
  it, caching their block features;
* the speculative path on the others: prologue, forecast of the state before
  the verify block, the verify block itself when a sample is due a check,
  forecast of the rest, epilogue;
* the full path again on samples whose check failed (``on_reject="recompute"``).

Calls from several threads are safe: routing happens under the runner's lock,
a trajectory runs one step at a time under its own, and engines build once.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from speca_compile.options import Options
from speca_compile.passes.partition import SpeculativeProgram, ValueRef
from speca_compile.runtime import generation as generations
from speca_compile.runtime.batch_view import BatchView, Env, merge, take_rows
from speca_compile.runtime.calibration import Calibration
from speca_compile.runtime.call_inputs import CallInputs
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.feature_cache import cache_cuts, feature_groups
from speca_compile.runtime.policy import Outcome
from speca_compile.runtime.routing import Router
from speca_compile.runtime.step_plan import StepPlan
from speca_compile.runtime.threshold import threshold
from speca_compile.runtime.trajectory import StepRecord, Trajectory
from speca_compile.runtime.verify import relative_error

MAX_UNPLACED = 16   # calls that ran full because their timesteps could not be placed, kept for stats


class Runner:
    """The callable the ``speca`` backend hands back to Dynamo."""

    def __init__(self, program: SpeculativeProgram, engines: Dict[str, Engine], options: Options,
                 batch_inputs: Optional[Tuple[int, ...]], timestep_index: Optional[int],
                 reason: Optional[str], notes: Sequence[str] = ()):
        self.program = program
        self.engines = engines
        self.options = options
        self.batch_inputs = batch_inputs
        self.timestep_index = timestep_index
        self.reason = reason
        self.notes = tuple(notes)
        self.inputs = CallInputs(program, batch_inputs, timestep_index)
        self.router = Router()
        self.calibration = Calibration(options.tau0)
        self.calls = 0
        self.unplaced: List[Dict] = []
        self.unplaced_count = 0
        self.num_units = program.num_units
        self.verify_unit = (options.verify_block % self.num_units) if self.num_units else None
        self.groups = feature_groups(self.verify_unit, self.num_units) if reason is None else ()
        self.cache_cuts = cache_cuts(self.groups)   # the cuts a full step hands the cache
        self._leaves = _leaves(program.output)
        # names a view cuts to its rows when the engines computed every row
        self._row_names = sorted({n for c in self.cache_cuts for n in program.cuts[c]} | set(self._leaves))
        self._verify_unbuilt = self.speculating and program.stack is not None
        self._build_lock = threading.Lock()
        # a dispatch mode entered around every call (speca_compile.metered); None in production
        self.meter = None
        self.graph_inputs = ()   # where each placeholder comes from (set by the backend; for export)

    @property
    def speculating(self) -> bool:
        return self.reason is None

    # ------------------------------------------------------------------ call
    def __call__(self, *args):
        if self.meter is None:
            return self._call(args)
        with self.meter:
            return self._call(args)

    def _call(self, args):
        with self.router.lock:
            self.calls += 1
            number = self.calls
        times, problem = self.inputs.timesteps(args)
        if times is None:
            if problem is not None:
                self._unplaced(number, problem)
            return self._structure(self._run_full(self._view(args, None)))
        batch = len(times)
        generation = generations.current(self.options.generation_key)
        signature = self.inputs.signature(args)
        with self.router.lock:
            traj = self.router.route(generation, times[0], signature, self.inputs.latent(args, batch),
                                     self.inputs.condition(args), lambda n: Trajectory(n, signature, batch, times[0], self.options,
                                                          self.groups))
        with traj.lock:
            if not self.speculating:
                env = self._run_full(self._view(args, None))
                self._log(traj, StepRecord(times[0], None, [Outcome.FULL] * batch, [None] * batch))
                return self._structure(env)
            return self._step(args, traj, torch.tensor(times, dtype=torch.float64))

    def _unplaced(self, number: int, problem: str) -> None:
        with self.router.lock:
            self.unplaced_count += 1
            self.unplaced.append({"call": number, "reason": problem + "; the call ran the full path"})
            del self.unplaced[:-MAX_UNPLACED]

    def _view(self, args, rows: Optional[Sequence[int]], batch: Optional[int] = None) -> BatchView:
        if rows is None:
            batch = self.inputs.batch_size(args) or 1
            rows = range(batch)
        return BatchView(self.program.placeholders, self.batch_inputs, args, rows, batch)

    def _log(self, traj: Trajectory, record: StepRecord) -> None:
        traj.log(record)
        if self.options.progress is not None:
            self.options.progress(traj.progress())

    def _step(self, args, traj: Trajectory, times: torch.Tensor):
        batch = len(times)
        scaled = times / traj.t_scale
        tau0 = self.calibration.tau0()   # None: tau0="auto" before the first checks measured it
        tau = math.inf if tau0 is None else threshold(tau0, self.options.beta, float(times[0]), traj.t_first)
        horizons = [n + 1 for n in traj.policy.since_full]
        plan = StepPlan(traj.policy.decide(tau), tau, self.options.on_reject)
        pieces: List[Tuple[BatchView, Env]] = []
        errors: Dict[int, float] = {}
        used_by_view = []
        for rows, checked in self._speculative_groups(plan):
            view = self._view(args, rows, batch)
            env, view_errors, used = self._speculate(view, traj, checked, scaled)
            pieces.append((view, env))
            errors.update(zip(rows, (float(e) for e in view_errors)))
            used_by_view.append((view, used))
        plan.judge([errors[s] for s in plan.speculative], traj.policy.accepts)
        if traj.cache.recursive:
            for view, used in used_by_view:
                kept = torch.tensor([j for j, s in enumerate(view.rows.tolist())
                                     if plan.outcomes[s] is not Outcome.REJECTED], dtype=torch.long)
                if len(kept):
                    index = view.rows[kept]
                    traj.cache.observe(index, scaled[index],
                                       {c: tuple(take_rows(v, kept) for v in values) for c, values in used.items()})
        # samples due a full step and rejected ones share one full run
        recompute = plan.recompute()
        if recompute:
            pieces.append(self._full_and_cache(self._view(args, recompute, batch), traj, scaled))
        self._log(traj, StepRecord(float(times[0]), plan.tau, plan.outcomes, plan.errors))
        if tau0 is None:
            self.calibration.observe(traj.number, plan.errors, horizons)
        return self._structure(merge(pieces, self._leaves, batch))

    def _speculative_groups(self, plan: StepPlan) -> List[Tuple[List[int], List[bool]]]:
        """The speculative samples as the views that run them, with each sample's check flag.
        Where a view can be a true sub-batch, the samples due a check and the unchecked ones
        run as two views, so the verify block computes only the checked rows (the prologue and
        epilogue, a small share of a step, run twice); else one view of them all."""
        if not plan.speculative:
            return []
        checked = [s for s, c in zip(plan.speculative, plan.checked) if c]
        unchecked = [s for s, c in zip(plan.speculative, plan.checked) if not c]
        if not checked or not unchecked or self.batch_inputs is None:
            return [(plan.speculative, plan.checked)]
        return [(checked, [True] * len(checked)), (unchecked, [False] * len(unchecked))]

    # ------------------------------------------------------------- full path
    def _full_and_cache(self, view: BatchView, traj, scaled) -> Tuple[BatchView, Env]:
        env = view.select_env(self._run_full(view), self._row_names)
        cuts = {c: tuple(env[n] for n in self.program.cuts[c]) for c in self.cache_cuts}
        traj.cache.update(view.rows, scaled[view.rows], cuts)
        return view, env

    def _run_full(self, view: BatchView) -> Env:
        env = view.bind()
        for segment in self.program.full_path:
            self._run_segment(env, segment)
        if self._verify_unbuilt:
            self._build_verify_block(env)
        return env

    def _build_verify_block(self, env: Env) -> None:
        """Full steps run the fused stack, so build the verify block's engine now, from this
        step's state: every engine's build cost falls on the first call, not on a later step."""
        with self._build_lock:
            if not self._verify_unbuilt:
                return
            verify = self.program.units[self.verify_unit]
            if not self.engines[verify.name].built():
                self._run_segment(dict(env), verify)
            self._verify_unbuilt = False

    # ------------------------------------------------------ speculative path
    def _speculate(self, view: BatchView, traj, checked: Sequence[bool], scaled):
        """Forecast (and check) the view's samples; returns (env, error per sample, and the
        state used at each cut, one row per sample: what a recursive forecaster records)."""
        env = view.bind()
        check = view.spread(checked)
        cuts, v = self.program.cuts, self.verify_unit
        work = view.work

        def predict(group: str, base):
            return _forecast(traj.cache, group, view, scaled, base)

        self._run_segment(env, self.program.prologue)
        state = self._values(env, 0)
        if v > 0:
            state = predict("prefix", state)
            env.update(zip(cuts[v], state))
        forecast = predict("verify", state)
        errors = torch.zeros(len(work), dtype=torch.float64)
        if bool(check.any()):
            with self._section("verify"):
                self._run_segment(env, self.program.units[v])
            real = self._values(env, v + 1)
            errors = relative_error(forecast, real, self.options.error_metric)
            forecast = tuple(torch.where(_rows_mask(check, r), r, f) for r, f in zip(real, forecast))
        env.update(zip(cuts[v + 1], forecast))
        if v + 1 < self.num_units:
            env.update(zip(cuts[self.num_units], predict("rest", forecast)))
        self._run_segment(env, self.program.epilogue)
        used = {c: tuple(view.select(x) for x in self._values(env, c)) for c in self.cache_cuts}
        return view.select_env(env, self._row_names), view.select(errors), used

    # --------------------------------------------------------------- helpers
    def _section(self, name: str):
        return self.meter.section(name) if self.meter is not None else contextlib.nullcontext()

    def _run_segment(self, env: Env, segment) -> None:
        outputs = self.engines[segment.name].run([env[n] for n in segment.inputs])
        env.update(zip(segment.outputs, outputs))

    def _values(self, env: Env, cut: int) -> Tuple[torch.Tensor, ...]:
        return tuple(env[n] for n in self.program.cuts[cut])

    def _structure(self, env: Env):
        return _map_refs(self.program.output, lambda ref: env[ref.name])

    # ----------------------------------------------------------------- stats
    def stats(self) -> Dict:
        with self.router.lock:
            trajectories = [tr.summary() for tr in self.router.all()]
            unplaced = {"count": self.unplaced_count, "latest": list(self.unplaced)}
            evicted = self.router.evicted
        return {
            "speculation": self.speculating,
            "reason": self.reason,
            "blocks": list(self.program.plan.units),
            "verify_block": self.verify_unit,
            # the threshold scale in use: the option, or what tau0="auto" calibrated (None: not yet)
            "threshold": self.calibration.summary(),
            "lowering": self.options.lowering,
            "calls": self.calls,
            "notes": list(self.notes) + ([] if self.inputs.latent_index is not None else [
                "no latent input found: trajectories are told apart by generation, shapes and "
                "timesteps only"]),
            # engines built so far (the per-block ones are built only for the blocks run alone)
            "engines": [dict(e.info) for e in self.engines.values() if e.info and e.built()],
            "trajectories": trajectories,
            # calls whose timesteps could not be matched to their batch (they ran full)
            "unplaced_calls": unplaced,
            "evicted_trajectories": evicted,
        }

    def reset(self) -> None:
        with self.router.lock:
            self.router.reset()


def _forecast(cache, group: str, view: BatchView, scaled: torch.Tensor, base):
    """The forecast of ``group`` for the rows the engines compute.  Only the view's samples are
    forecast: where the engines compute every row (inputs not sliceable), the other rows are
    zeros (a sample restarted this step has no cache to forecast from); they are computed
    through and discarded, and no op of a DiT mixes rows."""
    if view.sliced:
        return cache.predict(group, view.work, scaled[view.work], base)
    rows = view.rows
    part = cache.predict(group, rows, scaled[rows], tuple(take_rows(b, rows) for b in base))
    return tuple(p.new_zeros((view.batch,) + tuple(p.shape[1:])).index_copy_(0, rows.to(p.device), p)
                 for p in part)


def _rows_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.device).reshape((-1,) + (1,) * (like.dim() - 1))


def _map_refs(tree, fn):
    if isinstance(tree, ValueRef):
        return fn(tree)
    if isinstance(tree, tuple):
        return tuple(_map_refs(x, fn) for x in tree)
    if isinstance(tree, list):
        return [_map_refs(x, fn) for x in tree]
    if isinstance(tree, dict):
        return {k: _map_refs(v, fn) for k, v in tree.items()}
    return tree


def _leaves(tree) -> List[str]:
    found: List[str] = []
    _map_refs(tree, lambda ref: found.append(ref.name))
    return list(dict.fromkeys(found))
