"""The Runner: executes a SpeculativeProgram call by call across timesteps.

Dynamo calls it with the graph's flat inputs.  Per call it finds the
trajectory, asks the policy for each sample's decision, and runs

* the full path (prologue, every block, epilogue) on the samples that need it,
  caching their block features;
* the speculative path on the others: prologue, forecast of the state before
  the verify block, the verify block itself when a sample is due a check,
  forecast of the rest, epilogue;
* the full path again on samples whose check failed (``on_reject="recompute"``).

Each group of samples runs as a sub-batch of the inputs (so a sample's result
does not depend on its batch companions), or, where the batched inputs could
not be identified, as the whole batch with the rows selected afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from speca_compile.options import Options
from speca_compile.passes.partition import SpeculativeProgram, ValueRef
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.feature_cache import cache_cuts, feature_groups
from speca_compile.runtime.policy import Decision, Outcome
from speca_compile.runtime.threshold import threshold
from speca_compile.runtime.trajectory import StepRecord, Trajectory, TrajectoryTracker
from speca_compile.runtime.verify import relative_error

Env = Dict[str, object]


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
        self.tracker = TrajectoryTracker()
        self.calls = 0
        self.num_units = program.num_units
        self.verify_unit = (options.verify_block % self.num_units) if self.num_units else None
        self.groups = feature_groups(self.verify_unit, self.num_units) if reason is None else ()
        self.cache_cuts = cache_cuts(self.groups)   # the cuts a full step hands the cache
        self._leaves = _leaves(program.output)
        self._verify_unbuilt = self.speculating and program.stack is not None
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
        self.calls += 1
        times = self._timesteps(args) if self.timestep_index is not None else None
        if times is None:
            return self._structure(self._run_full(args, None))
        batch = len(times)
        traj = self.tracker.route(times[0], self._signature(args),
                                  lambda n: Trajectory(n, self._signature(args), batch, times[0],
                                                       self.options, self.groups))
        if not self.speculating:
            env = self._run_full(args, None)
            self._log(traj, StepRecord(times[0], None, [Outcome.FULL] * batch, [None] * batch))
            return self._structure(env)
        return self._step(args, traj, torch.tensor(times, dtype=torch.float64))

    def _log(self, traj: Trajectory, record: StepRecord) -> None:
        traj.log(record)
        if self.options.progress is not None:
            self.options.progress(traj.progress())

    def _step(self, args, traj: Trajectory, times: torch.Tensor):
        batch = len(times)
        scaled = times / traj.t_scale
        tau = threshold(self.options.tau0, self.options.beta, float(times[0]), traj.t_first)
        decisions = traj.policy.decide()
        outcomes: List[Optional[Outcome]] = [None] * batch
        errors: List[Optional[float]] = [None] * batch
        pieces: List[Tuple[torch.Tensor, Env]] = []

        full = [s for s, d in enumerate(decisions) if d is Decision.FULL]
        spec = [s for s, d in enumerate(decisions) if d is not Decision.FULL]
        if spec:
            checked = [decisions[s] is Decision.CHECK for s in spec]
            index, env, err, used = self._speculate(args, traj, spec, checked, batch, scaled)
            pieces.append((index, env))
            for j, s in enumerate(spec):
                outcomes[s] = Outcome.SPEC
                if checked[j]:
                    errors[s] = float(err[j])
                    outcomes[s] = self._judge(errors[s], tau)
            if traj.cache.recursive:
                kept = torch.tensor([j for j, s in enumerate(spec) if outcomes[s] is not Outcome.REJECTED],
                                    dtype=torch.long)
                if len(kept):
                    traj.cache.observe(index[kept], scaled[index[kept]],
                                       {c: tuple(_take_rows(v, kept) for v in values)
                                        for c, values in used.items()})
        # samples due a full step and rejected ones share one full run
        recompute = sorted(full + [s for s in spec if outcomes[s] is Outcome.REJECTED])
        if recompute:
            pieces.append(self._full_and_cache(args, traj, recompute, batch, scaled))
        for s in full:
            outcomes[s] = Outcome.FULL
        self._log(traj, StepRecord(float(times[0]), tau, outcomes, errors))
        return self._merge(pieces, batch)

    def _judge(self, error: float, tau: float) -> Outcome:
        if error <= tau:
            return Outcome.ACCEPTED
        return Outcome.REJECTED if self.options.on_reject == "recompute" else Outcome.DEFERRED

    # ------------------------------------------------------------- full path
    def _full_and_cache(self, args, traj, samples, batch, scaled):
        index = torch.tensor(samples, dtype=torch.long)
        env = self._run_full(args, index if len(samples) < batch else None)
        if env.get("__rows__") is not None:
            env = _select_rows(env, self._row_names(), index)
        cuts = {c: tuple(env[n] for n in self.program.cuts[c]) for c in self.cache_cuts}
        traj.cache.update(index, scaled[index], cuts)
        return index, env

    def _run_full(self, args, index: Optional[torch.Tensor]) -> Env:
        env = self._bind(args, index)
        for segment in self.program.full_path:
            self._run_segment(env, segment)
        if self._verify_unbuilt:
            # full steps run the fused stack, so build the verify block's engine now, from this
            # step's state: every engine's build cost falls on the first call, not on a later step
            self._verify_unbuilt = False
            verify = self.program.units[self.verify_unit]
            if not self.engines[verify.name].built():
                self._run_segment(dict(env), verify)
        return env

    # ------------------------------------------------------ speculative path
    def _speculate(self, args, traj, samples, checked, batch, scaled):
        """Forecast (and check) ``samples``; returns (index, env, errors per sample, and the
        state used at each cut, one row per sample: what a recursive forecaster records)."""
        index = torch.tensor(samples, dtype=torch.long)
        whole = len(samples) == batch
        env = self._bind(args, None if whole else index)
        if env.get("__rows__") is not None:  # inputs not sliceable: run every row
            work, rows = torch.arange(batch), index
            check = torch.zeros(batch, dtype=torch.bool)
            check[index] = torch.tensor(checked)
        else:
            work, rows = index, None
            check = torch.tensor(checked, dtype=torch.bool)
        cache, cuts, v = traj.cache, self.program.cuts, self.verify_unit
        t = scaled[work]

        self._run_segment(env, self.program.prologue)
        state = self._values(env, 0)
        if v > 0:
            state = cache.predict("prefix", work, t, state)
            env.update(zip(cuts[v], state))
        forecast = cache.predict("verify", work, t, state)
        errors = torch.zeros(len(work), dtype=torch.float64)
        if bool(check.any()):
            with self._section("verify"):
                self._run_segment(env, self.program.units[v])
            real = self._values(env, v + 1)
            errors = relative_error(forecast, real, self.options.error_metric)
            forecast = tuple(torch.where(_rows_mask(check, r), r, f) for r, f in zip(real, forecast))
        env.update(zip(cuts[v + 1], forecast))
        if v + 1 < self.num_units:
            env.update(zip(cuts[self.num_units], cache.predict("rest", work, t, forecast)))
        self._run_segment(env, self.program.epilogue)
        used = {c: self._values(env, c) for c in self.cache_cuts}
        if rows is not None:
            env = _select_rows(env, self._row_names(), rows)
            errors = errors[rows]
            used = {c: tuple(_take_rows(x, rows) for x in values) for c, values in used.items()}
        return index, env, errors, used

    # --------------------------------------------------------------- helpers
    def _section(self, name: str):
        return self.meter.section(name) if self.meter is not None else contextlib.nullcontext()

    def _run_segment(self, env: Env, segment) -> None:
        outputs = self.engines[segment.name].run([env[n] for n in segment.inputs])
        env.update(zip(segment.outputs, outputs))

    def _values(self, env: Env, cut: int) -> Tuple[torch.Tensor, ...]:
        return tuple(env[n] for n in self.program.cuts[cut])

    def _bind(self, args, index: Optional[torch.Tensor]) -> Env:
        env: Env = dict(zip(self.program.placeholders, args))
        env["__rows__"] = None
        if index is None:
            return env
        if self.batch_inputs is None:
            env["__rows__"] = index  # cannot slice: caller selects rows afterwards
            return env
        for i in self.batch_inputs:
            name, value = self.program.placeholders[i], args[i]
            if isinstance(value, torch.Tensor):
                env[name] = value.index_select(0, index.to(value.device))
            else:
                env[name] = len(index)
        return env

    def _row_names(self) -> List[str]:
        names = {n for g in self.groups for c in (g.base, g.target) for n in self.program.cuts[c]}
        return sorted(names | set(self._leaves))

    def _merge(self, pieces: List[Tuple[torch.Tensor, Env]], batch: int):
        if len(pieces) == 1 and len(pieces[0][0]) == batch:
            return self._structure(pieces[0][1])
        merged: Env = {}
        for name in self._leaves:
            for index, env in pieces:
                value = env[name]
                if name not in merged:
                    merged[name] = value.new_empty((batch,) + tuple(value.shape[1:]))
                merged[name].index_copy_(0, index.to(value.device), value)
        return self._structure(merged)

    def _structure(self, env: Env):
        return _map_refs(self.program.output, lambda ref: env[ref.name])

    def _timesteps(self, args) -> Optional[List[float]]:
        value = args[self.timestep_index]
        flat = ([float(v) for v in value.detach().reshape(-1).double().cpu().tolist()]
                if isinstance(value, torch.Tensor) else [float(value)])
        batch = self._batch_size(args)
        if len(flat) == 1 and batch is not None:
            return flat * batch
        if batch is None or len(flat) == batch:
            return flat
        return None

    def _batch_size(self, args) -> Optional[int]:
        for i in self.batch_inputs or ():
            if isinstance(args[i], torch.Tensor):
                return int(args[i].shape[0])
        size = self.program.batch_size
        return int(size) if isinstance(size, int) else None

    def _signature(self, args) -> Tuple:
        return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a
                     for name, a in zip(self.program.placeholders, args)
                     if name in self.program.user_inputs and not isinstance(a, float))

    # ----------------------------------------------------------------- stats
    def stats(self) -> Dict:
        trajectories = [tr.summary() for tr in self.tracker.all()]
        return {
            "speculation": self.speculating,
            "reason": self.reason,
            "blocks": list(self.program.plan.units),
            "verify_block": self.verify_unit,
            "lowering": self.options.lowering,
            "calls": self.calls,
            "notes": list(self.notes),
            # engines built so far (the per-block ones are built only for the blocks run alone)
            "engines": [dict(e.info) for e in self.engines.values() if e.info and e.built()],
            "trajectories": trajectories,
        }

    def reset(self) -> None:
        self.tracker.reset()


def _rows_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.device).reshape((-1,) + (1,) * (like.dim() - 1))


def _select_rows(env: Env, names: Sequence[str], rows: torch.Tensor) -> Env:
    """``env`` with the batched values cut to ``rows``.  A value with one row in a larger
    batch is shared by every sample (a prompt embedding broadcast over the images) and
    stays as it is."""
    out = dict(env)
    for name in names:
        out[name] = _take_rows(env[name], rows)
    out["__rows__"] = None
    return out


def _take_rows(value, rows: torch.Tensor):
    """``value``'s rows ``rows``; a one-row tensor (shared by the batch) or a non-tensor as it is."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] != 1:
        return value.index_select(0, rows.to(value.device))
    return value


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
