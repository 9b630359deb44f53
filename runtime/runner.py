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

Where the lowering compiles whole steps (``runtime/fused_step.py``: Inductor by
default, eager on request), each path runs as one program instead of that
sequence: the full step, and the speculative step checked or not.

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
from speca_compile.runtime.feature_pool import POOLED_FORECASTERS, FeaturePools, pooled_rows
from speca_compile.runtime.forecast_rows import by_part, forecast as forecast_view, take
from speca_compile.runtime.fused_step import FusedSteps, lower_step, why_not_fused
from speca_compile.runtime.token_check import checked_tokens, with_real_tokens
from speca_compile.errors import SpecaError
from speca_compile.runtime.policy import Decision, Outcome
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
        # steps whose rows took several paths: with one prologue and epilogue, or one graph per path
        self.mixed_steps = {"shared_ends": 0, "per_path": 0}
        self.num_units = program.num_units
        self.verify_unit = (options.verify_block % self.num_units) if self.num_units else None
        self.groups = feature_groups(self.verify_unit, self.num_units) if reason is None else ()
        self.cache_cuts = cache_cuts(self.groups)   # the cuts a full step hands the cache
        # the caches of trajectories whose calls name their rows (a served batch: one small
        # trajectory per request) share one store per feature layout (runtime/feature_pool.py)
        self.pools = (FeaturePools(self.groups, options.forecaster, options.order, options.hermite_sigma,
                                   options.cache_dtype)
                      if self.groups and options.forecaster in POOLED_FORECASTERS else None)
        self._leaves = _leaves(program.output)
        # names a view cuts to its rows when the engines computed every row
        self._row_names = sorted({n for c in self.cache_cuts for n in program.cuts[c]} | set(self._leaves))
        self._verify_unbuilt = self.speculating and program.stack is not None
        # a step as one program per path (runtime/fused_step.py), where the lowering and model allow
        self.fused_reason = why_not_fused(program, options, batch_inputs, self.speculating)
        self.fused = None if self.fused_reason is not None else FusedSteps(
            program, self.groups, self.verify_unit, self._leaves, self.cache_cuts, options, batch_inputs,
            lambda segment: lower_step(segment, options))
        if self.fused is not None:
            self._verify_unbuilt = False   # the checked step program holds the verify block
        # a mixed step sets the prologue's, the last cut's and the epilogue's values for every row
        self._side_kinds = dict(program.side_values or ())
        for name in program.cuts[0] if program.cuts else ():   # a graph input fed straight to block 0
            if name in program.placeholders and name not in self._side_kinds:
                batched = program.placeholders.index(name) in (batch_inputs or ())
                self._side_kinds[name] = "row" if batched else "shared"
        self._ends_give_outputs = bool(program.cuts) and set(self._leaves) <= (
            set(program.placeholders) | set(program.prologue.outputs) | set(program.epilogue.outputs)
            | set(program.cuts[-1]))
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
        owners = generations.row_generations()
        if owners is not None and len(owners) != batch:
            raise SpecaError(f"speca_compile.rows names {len(owners)} generation(s) for a call of batch "
                             f"{batch}: name one per row")
        pools = self.pools if owners is not None else None
        owners = owners or (generations.current(self.options.generation_key),) * batch
        parts = self._route(args, times, owners, pools)
        with contextlib.ExitStack() as held:   # every trajectory of the call, in one order (no deadlock)
            for part in sorted(parts, key=lambda p: p.traj.number):
                held.enter_context(part.traj.lock)
            if not self.speculating:
                env = self._run_full(self._view(args, None))
                for part in parts:
                    n = len(part.rows)
                    self._log(part.traj, StepRecord(float(part.times[0]), None, [Outcome.FULL] * n, [None] * n))
                return self._structure(env)
            return self._step(args, parts, batch)

    def _route(self, args, times: List[float], owners: Sequence, pools: Optional[FeaturePools]) -> List["Part"]:
        """The call's rows grouped by generation (in order of first row), each group routed to
        the trajectory it continues (``routing``); a new trajectory keeps its features in
        ``pools`` where given (the call named its rows), else in a cache of its own."""
        batch = len(times)
        by_generation: Dict[int, Tuple[object, List[int]]] = {}
        for row, owner in enumerate(owners):
            by_generation.setdefault(id(owner), (owner, []))[1].append(row)
        latent = self.inputs.latent(args, batch)
        condition = self.inputs.condition(args)
        parts = []
        signatures: Dict[Optional[int], Tuple] = {}   # by row count: a served batch has a few
        with self.router.lock:
            for owner, rows in by_generation.values():
                index = torch.tensor(rows, dtype=torch.long)
                whole = len(rows) == batch
                count = None if whole else len(rows)
                if count not in signatures:
                    signatures[count] = self.inputs.signature(args, count)
                signature = signatures[count]
                size, t0 = len(rows), times[rows[0]]
                traj = self.router.route(
                    owner, t0, signature, latent if whole or latent is None else take_rows(latent, index),
                    condition if whole else tuple(take_rows(c, index) if c.shape[:1] == (batch,) else c
                                                  for c in condition),
                    lambda n, size=size, t0=t0, owner=owner: Trajectory(
                        n, signature, size, t0, self.options, self.groups, owner.overrides,
                        pools.cache(size) if pools is not None else None))
                parts.append(Part(traj, rows, torch.tensor([times[r] for r in rows], dtype=torch.float64)))
        return parts

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

    def _step(self, args, parts: List["Part"], batch: int):
        """One denoising step of every part (a trajectory's rows of this call): each part's
        policy decides for its samples, and all parts' samples share one run per path."""
        owner: Dict[int, Tuple["Part", int]] = {}
        for part in parts:
            self._plan(part)
            owner.update((row, (part, s)) for s, row in enumerate(part.rows))
        speculative = sorted(p.rows[s] for p in parts for s in p.plan.speculative)
        checked = [owner[r][0].plan.decisions[owner[r][1]] is Decision.CHECK for r in speculative]
        shared = self.fused is None and self._shares_ends(len(speculative) < batch, checked)
        if shared:
            env = self._mixed_step(args, parts, owner, batch, speculative, checked)
        else:
            env = self._paths_step(args, parts, owner, batch, speculative, checked)
        paths = {"full" if o.computed_fully else "check" if d is Decision.CHECK else "forecast"
                 for p in parts for o, d in zip(p.plan.outcomes, p.plan.decisions)}
        if len(paths) > 1:   # the rows took several paths (counted for stats, as the doc says)
            with self.router.lock:
                self.mixed_steps["shared_ends" if shared else "per_path"] += 1
        for part in parts:
            self._log(part.traj, StepRecord(float(part.times[0]), part.plan.tau, part.plan.outcomes,
                                            part.plan.errors))
            if part.tau0 is None:
                self.calibration.observe(part.traj.number, part.plan.errors, part.horizons)
        return self._structure(env)

    def _paths_step(self, args, parts: List["Part"], owner: Dict, batch: int, speculative: List[int],
                    checked: List[bool]) -> Env:
        """A step as one run of the whole graph per path, each on its rows (``_mixed_step`` is
        the cheaper form, where the prologue's side values can be cut to rows)."""
        pieces: List[Tuple[BatchView, Env]] = []
        errors: Dict[int, float] = {}
        used_by_view = []
        for rows, flags in self._speculative_groups(speculative, checked):
            view = self._view(args, rows, batch)
            if self.fused is not None:   # the rows are all checked or none (_speculative_groups)
                env, view_errors, used = self._speculate_fused(view, owner, flags[0])
            else:
                env, view_errors, used = self._speculate(view, owner, flags)
            pieces.append((view, env))
            errors.update(zip(rows, (float(e) for e in view_errors)))
            used_by_view.append((view, used))
        for part in parts:
            part.plan.judge([errors[part.rows[s]] for s in part.plan.speculative], part.traj.policy.accepts)
        recursive = any(p.traj.cache.recursive for p in parts)   # FoCa: record what was used
        for view, used in used_by_view if recursive else ():
            kept = [j for j, r in enumerate(view.rows.tolist())
                    if owner[r][0].traj.cache.recursive
                    and owner[r][0].plan.outcomes[owner[r][1]] is not Outcome.REJECTED]
            for part, positions, samples in by_part(owner, [view.rows[j] for j in kept], kept):
                part.traj.cache.observe(samples, part.scaled[samples],
                                        {c: tuple(take(v, positions) for v in values)
                                         for c, values in used.items()})
        # samples due a full step and rejected ones share one full run
        recompute = sorted(p.rows[s] for p in parts for s in p.plan.recompute())
        if recompute:
            pieces.append(self._full_and_cache(self._view(args, recompute, batch), owner))
        return merge(pieces, self._leaves, batch)

    def _shares_ends(self, some_full: bool, checked: List[bool]) -> bool:
        """Whether this step runs as ``_mixed_step``: its rows take more than one path (or some
        are checked, and a rejection may add the full one), the inputs and the prologue's side
        values can be cut to rows, and full steps run the fused stack."""
        if (self.program.side_values is None or self.batch_inputs is None or self.program.stack is None
                or not self._ends_give_outputs):
            return False
        due = any(checked)
        return (some_full and bool(checked)) or due

    def _mixed_step(self, args, parts: List["Part"], owner: Dict, batch: int, speculative: List[int],
                    checked: List[bool]) -> Env:
        """A step whose rows take different paths, with one prologue and one epilogue over all
        rows: the verify block runs on the rows due a check, the fused stack on the rows due a
        full step and the rejected ones (one call), the forecasts on the speculative rows, each
        from its own trajectory's cache.  Every row computes what it computes in a batch of its
        own rows (no op of a DiT mixes rows; ``passes/side_values`` proved which side values are
        per row).  Saves the two or three extra prologue and epilogue calls and views a step of
        mixed paths costs in ``_paths_step`` (a served batch, or per-sample run lengths)."""
        program, cuts, v, L = self.program, self.program.cuts, self.verify_unit, self.num_units
        env = self._view(args, None).bind()
        self._run_segment(env, program.prologue)
        spec = BatchView(program.placeholders, self.batch_inputs, args, speculative, batch)
        at_spec = spec.rows
        state0 = tuple(self._side_rows(env, name, at_spec) for name in cuts[0])
        prefix = forecast_view(owner, "prefix", spec, state0) if v > 0 else state0
        state_v1 = forecast_view(owner, "verify", spec, prefix)
        due = [r for r, c in zip(speculative, checked) if c]
        errors: Dict[int, float] = {}
        if due:
            at_due = torch.tensor([j for j, c in enumerate(checked) if c], dtype=torch.long)
            sub = self._rows_env(args, env, due, batch)   # with the stream inputs at cut 0
            if v > 0:
                sub.update(zip(cuts[v], (take_rows(x, at_due) for x in prefix)))
            predicted = tuple(take_rows(f, at_due) for f in state_v1)
            with self._section("verify"):
                real = self._run_check(sub, v)
            if program.verify_tokens is not None:
                strides = program.verify_token_strides
                errors.update(zip(due, (float(e) for e in relative_error(
                    checked_tokens(predicted, strides), real, self.options.error_metric))))
                real = with_real_tokens(predicted, real, strides)
            else:
                errors.update(zip(due, (float(e) for e in relative_error(predicted, real, self.options.error_metric))))
            state_v1 = tuple(f.index_copy(0, at_due.to(f.device), r) for f, r in zip(state_v1, real))
        for part in parts:
            part.plan.judge([errors.get(part.rows[s], 0.0) for s in part.plan.speculative], part.traj.policy.accepts)
        state_l = forecast_view(owner, "rest", spec, state_v1) if v + 1 < L else state_v1
        if any(p.traj.cache.recursive for p in parts):   # FoCa: record what was used
            used = {0: state0, v: prefix, v + 1: state_v1, L: state_l}
            kept = [j for j, r in enumerate(speculative) if owner[r][0].traj.cache.recursive
                    and owner[r][0].plan.outcomes[owner[r][1]] is not Outcome.REJECTED]
            for part, positions, samples in by_part(owner, [speculative[j] for j in kept], kept):
                part.traj.cache.observe(samples, part.scaled[samples],
                                        {c: tuple(take(x, positions) for x in used[c]) for c in self.cache_cuts})
        final = [x.new_empty((batch,) + tuple(x.shape[1:])).index_copy_(0, at_spec.to(x.device), x)
                 for x in state_l]
        recompute = sorted(p.rows[s] for p in parts for s in p.plan.recompute())
        if recompute:
            sub = self._rows_env(args, env, recompute, batch)
            at = torch.tensor(recompute, dtype=torch.long)
            self._run_segment(sub, program.stack)
            self._cache_full(sub, recompute, owner)
            for x, r in zip(final, self._values(sub, L)):
                x.index_copy_(0, at.to(x.device), r)
        env.update(zip(cuts[L], final))
        self._run_segment(env, program.epilogue)
        return env

    def _rows_env(self, args, env: Env, rows: List[int], batch: int) -> Env:
        """The graph inputs and the prologue's values (side values, stream inputs) of ``rows``."""
        view = self._view(args, rows, batch)
        sub, at = view.bind(), view.rows
        for name, _ in self.program.side_values:
            sub[name] = self._side_rows(env, name, at)
        return sub

    def _side_rows(self, env: Env, name: str, at: torch.Tensor):
        """Prologue value ``name`` for the rows ``at``, as its kind says (``passes/side_values``)."""
        kind = self._side_kinds[name]
        value = env[name]
        return take_rows(value, at) if kind == "row" else len(at) if kind == "count" else value

    def _plan(self, part: "Part") -> None:
        """The part's step plan: its policy's decisions at its threshold (a generation's own
        ``tau0`` or ``speculate=False`` override the compiled model's)."""
        traj = part.traj
        part.scaled = part.times / traj.t_scale
        tau0 = traj.overrides.get("tau0", "auto")
        part.tau0 = self.calibration.tau0() if tau0 == "auto" else float(tau0)
        tau = math.inf if part.tau0 is None else threshold(part.tau0, self.options.beta, float(part.times[0]),
                                                            traj.t_first)
        part.horizons = [n + 1 for n in traj.policy.since_full]
        decisions = traj.policy.decide(tau)
        if traj.overrides.get("speculate") is False:
            decisions = [Decision.FULL] * len(decisions)
        part.plan = StepPlan(decisions, tau, self.options.on_reject)

    def _speculative_groups(self, speculative: List[int], checked: List[bool]) -> List[Tuple[List[int], List[bool]]]:
        """The speculative rows as the views that run them, with each row's check flag.
        Where a view can be a true sub-batch, the rows due a check and the unchecked ones
        run as two views, so the verify block computes only the checked rows (the prologue and
        epilogue, a small share of a step, run twice); else one view of them all."""
        if not speculative:
            return []
        due = [r for r, c in zip(speculative, checked) if c]
        unchecked = [r for r, c in zip(speculative, checked) if not c]
        if not due or not unchecked or self.batch_inputs is None:
            return [(speculative, checked)]
        return [(due, [True] * len(due)), (unchecked, [False] * len(unchecked))]

    # ------------------------------------------------------------- full path
    def _full_and_cache(self, view: BatchView, owner: Dict) -> Tuple[BatchView, Env]:
        env = view.select_env(self._run_full(view), self._row_names)
        self._cache_full(env, view.rows.tolist(), owner)
        return view, env

    def _cache_full(self, env: Env, rows: List[int], owner: Dict) -> None:
        """Hand each trajectory the full-step state of its ``rows`` (``env``: one row per row).
        A generation that never speculates (``speculate=False``: every step full) keeps no
        cache: its rows are skipped (a served full-compute request paid ~1.5 ms per tick of
        cache updates nothing read)."""
        cuts = {c: tuple(env[n] for n in self.program.cuts[c]) for c in self.cache_cuts}
        kept = [j for j, row in enumerate(rows) if owner[row][0].traj.overrides.get("speculate") is not False]
        pooled = pooled_rows(owner, [rows[j] for j in kept], cuts) if kept else None
        if pooled is not None:   # the rows' trajectories share one pool: one update of them all
            pool, slots, times = pooled
            at = torch.tensor(kept, dtype=torch.long)
            pool.update(slots, times, {c: tuple(take(v, at) for v in values) for c, values in cuts.items()})
            return
        for part, positions, samples in by_part(owner, [rows[j] for j in kept], kept):
            part.traj.cache.update(samples, part.scaled[samples],
                                   {c: tuple(take(v, positions) for v in values) for c, values in cuts.items()})

    def _run_full(self, view: BatchView) -> Env:
        env = view.bind()
        if self.fused is not None:
            env.update(self.fused.full(env, len(view.work)))
            return env
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
            verify = self.program.verify_tokens or self.program.units[self.verify_unit]
            if not self.engines[verify.name].built():
                self._run_segment(dict(env), verify)
            self._verify_unbuilt = False

    # ------------------------------------------------------ speculative path
    def _speculate(self, view: BatchView, owner: Dict, checked: Sequence[bool]):
        """Forecast (and check) the view's samples, each from its own trajectory's cache;
        returns (env, error per sample, and the state used at each cut, one row per sample:
        what a recursive forecaster records)."""
        env = view.bind()
        check = view.spread(checked)
        cuts, v = self.program.cuts, self.verify_unit
        work = view.work

        def predict(group: str, base):
            return forecast_view(owner, group, view, base)

        self._run_segment(env, self.program.prologue)
        state = self._values(env, 0)
        if v > 0:
            state = predict("prefix", state)
            env.update(zip(cuts[v], state))
        forecast = predict("verify", state)
        errors = torch.zeros(len(work), dtype=torch.float64)
        if bool(check.any()):
            with self._section("verify"):
                real = self._run_check(env, v)
            if self.program.verify_tokens is not None:
                strides = self.program.verify_token_strides
                errors = relative_error(checked_tokens(forecast, strides), real, self.options.error_metric)
                forecast = with_real_tokens(forecast, real, strides, check)
            else:
                errors = relative_error(forecast, real, self.options.error_metric)
                forecast = tuple(torch.where(_rows_mask(check, r), r, f) for r, f in zip(real, forecast))
        env.update(zip(cuts[v + 1], forecast))
        if v + 1 < self.num_units:
            env.update(zip(cuts[self.num_units], predict("rest", forecast)))
        self._run_segment(env, self.program.epilogue)
        used = {c: tuple(view.select(x) for x in self._values(env, c)) for c in self.cache_cuts}
        return view.select_env(env, self._row_names), view.select(errors), used

    def _speculate_fused(self, view: BatchView, owner: Dict, checked: bool):
        """``_speculate`` as one step program (``runtime/fused_step.py``); the view is a true
        sub-batch, so its rows are the computed rows."""
        env = view.bind()
        result = self.fused.speculative(env, view.rows.tolist(), owner, checked)
        if result is None:   # the caches pair streams otherwise than the program (fused_step)
            with self.router.lock:
                self.fused.unfused_steps += 1
            return self._speculate(view, owner, [checked] * len(view.rows))
        outputs, errors = result
        env.update(outputs)
        if errors is None:
            errors = torch.zeros(len(view.rows), dtype=torch.float64)
        return env, errors.double().cpu(), None

    # --------------------------------------------------------------- helpers
    def _section(self, name: str):
        return self.meter.section(name) if self.meter is not None else contextlib.nullcontext()

    def _run_segment(self, env: Env, segment) -> None:
        outputs = self.engines[segment.name].run([env[n] for n in segment.inputs])
        env.update(zip(segment.outputs, outputs))

    def _run_check(self, env: Env, v: int) -> Tuple[torch.Tensor, ...]:
        """The verify block's real output for the check: the whole unit (into ``env``), or its
        token subset (``program.verify_tokens``; its outputs, not the cut's values)."""
        subset = self.program.verify_tokens
        if subset is None:
            self._run_segment(env, self.program.units[v])
            return self._values(env, v + 1)
        return tuple(self.engines[subset.name].run([env[n] for n in subset.inputs]))

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
            mixed = dict(self.mixed_steps)
        side = (None if self.program.side_values is None
                else {kind: sum(1 for _, k in self.program.side_values if k == kind) for kind in ("row", "shared", "count")})
        return {
            "speculation": self.speculating,
            "reason": self.reason,
            "blocks": list(self.program.plan.units),
            "verify_block": self.verify_unit,
            # the check's token stride per verify-block output (None: every token; passes/token_subset)
            "verify_tokens": list(self.program.verify_token_strides) if self.program.verify_tokens is not None else None,
            # the threshold scale in use: the option, or what tau0="auto" calibrated (None: not yet)
            "threshold": self.calibration.summary(),
            "lowering": self.options.lowering,
            # one program per path and step (runtime/fused_step.py), or why the step runs segment by segment
            "fused_steps": ({"programs": self.fused.count(), "buckets": self.fused.buckets,
                             "unfused_steps": self.fused.unfused_steps,
                             "captured": sum(1 for c in self.fused._captured.values() if c),
                             "capture_errors": list(self.fused.capture_errors)}
                            if self.fused is not None else {"off": self.fused_reason}),
            "calls": self.calls,
            "notes": list(self.notes) + ([] if self.inputs.latent_index is not None else [
                "no latent input found: trajectories are told apart by generation, shapes and "
                "timesteps only"]),
            # engines built so far (the per-block ones are built only for the blocks run alone)
            "engines": [dict(e.info) for e in list(self.engines.values()) + self._step_engines()
                        if e.info and e.built()],
            "trajectories": trajectories,
            # calls whose timesteps could not be matched to their batch (they ran full)
            "unplaced_calls": unplaced,
            "evicted_trajectories": evicted,
            # steps whose rows took several paths; per_path where the side values are not known
            "mixed_steps": {**mixed, "side_values": side},
        }

    def _step_engines(self) -> List[Engine]:
        return self.fused.engines() if self.fused is not None else []

    def summaries_of(self, generation) -> List[Dict]:
        """The summaries of ``generation``'s active trajectories (a served request's counts)."""
        with self.router.lock:
            return [tr.summary() for tr in self.router.of(generation)]

    def reset(self) -> None:
        with self.router.lock:
            self.router.reset()


class Part:
    """The rows of one call that continue one trajectory, and their step plan."""

    __slots__ = ("traj", "rows", "times", "scaled", "tau0", "horizons", "plan")

    def __init__(self, traj: Trajectory, rows: List[int], times: torch.Tensor):
        self.traj = traj
        self.rows = rows      # call rows, one per sample of the trajectory, in sample order
        self.times = times    # float64, one per row
        self.scaled = self.tau0 = self.horizons = self.plan = None


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
