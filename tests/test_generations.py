"""The state model (issue 15): generations named by the caller, the pipeline call or the
thread; every sampler's timestep pattern stays one trajectory; no state leaks between runs.

Each test runs the reference DiT (tests/reference_dit.py) on the eager lowering: the subject
is the runtime's state, not an engine.  "Alone" results come from a fresh compile, so a
leaked cache, a mixed-up branch or a split trajectory shows up as a numeric difference.
"""

import asyncio
import contextlib
import threading

import pytest
import torch

import speca_compile
from speca_compile import sampling
from speca_compile.options import Options
from tests import helpers

EAGER = {"lowering": "eager"}
STEPS = 15   # warmup 3, then forecasts: enough to share (or not) a cache


def _compiled(z, **options):
    return torch.compile(z.model, backend="speca", options={**EAGER, **options})


def _eps(z, model, x, t, extra):
    return z.call(model, x, float(t), extra)


def _ddim(z, model, x, ts, extra, after_each=None, steps=None):
    """DDIM over the timesteps ``ts`` (the last one steps to clean), or over its first
    ``steps`` only (an interrupted run); ``after_each(i)`` may block."""
    with torch.no_grad():
        for i, t in enumerate(ts[:steps]):
            if after_each is not None:
                after_each(i)
            x = sampling.ddim_step(x, _eps(z, model, x, t, extra), t, ts[i + 1] if i + 1 < len(ts) else None)
    return x


def _alone(z, x, ts, extra, named=True):
    """The run on a fresh compile, as one named generation or in the thread's implicit scope
    (there a random-weight model's first steps can restart samples: compare like with like)."""
    torch._dynamo.reset()
    with speca_compile.generation() if named else contextlib.nullcontext():
        return _ddim(z, _compiled(z), x, ts, extra)


@pytest.fixture(scope="module")
def z():
    return helpers.build("reference_dit")


def test_an_interrupted_run_is_not_continued_by_a_later_one_at_a_lower_timestep(z):
    """Issue 15: a run stopped after 20 of 50 steps (last t = 601), then an img2img pass from
    t = 581 with the same shapes: the timestep rule alone continued the stopped run's cache
    (1.6 % off).  Its latent is not the continuation of the stopped run's, so it starts afresh."""
    extra = z.make_inputs(2, 1)
    full = sampling.ddim_timesteps(50)
    img2img = [t for t in full if t <= 581]
    abar = sampling.alphas_cumprod()[img2img[0]].float()
    image = torch.randn(helpers.noise_for(z, 2, 0).shape, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    start = abar.sqrt() * image + (1 - abar).sqrt() * helpers.noise_for(z, 2, 9)

    compiled = _compiled(z)
    _ddim(z, compiled, helpers.noise_for(z, 2, 0), full, extra, steps=20)      # interrupted
    resumed = _ddim(z, compiled, start, img2img, extra)
    trajs = speca_compile.stats(compiled)["trajectories"]
    assert [t["steps"] for t in trajs] == [20, len(img2img)]
    assert trajs[1]["decisions"][0] == "FF"           # warmup: nothing inherited
    fresh = _alone(z, start, img2img, extra)
    assert helpers.rel_err(resumed, fresh) < 1e-6


def test_an_explicit_generation_scopes_its_calls(z):
    """With ``speca_compile.generation()`` a run is one generation whatever its timesteps do; a
    generation kept with ``new_generation`` resumes in a later block, and ending it frees it."""
    extra = z.make_inputs(2, 1)
    ts = sampling.ddim_timesteps(STEPS)
    x0, x1 = helpers.noise_for(z, 2, 0), helpers.noise_for(z, 2, 3)
    compiled = _compiled(z)
    with speca_compile.generation(label="first") as first:
        _ddim(z, compiled, x0, ts, extra, steps=10)
    g = speca_compile.new_generation(label="kept")
    with speca_compile.generation(g):
        b = _ddim(z, compiled, x1, ts, extra, steps=10)
    with speca_compile.generation(g):        # resumed: continues the same trajectory
        b = _ddim(z, compiled, b, ts[10:], extra)
    trajs = speca_compile.stats(compiled)["trajectories"]
    assert [(t["steps"], t["scope"]) for t in trajs] == [(10, "explicit"), (STEPS, "explicit")]
    assert trajs[0]["generation"] == first.number and trajs[1]["generation"] == g.number
    assert first.ended and not g.ended
    runner = speca_compile.registry.runners_for(compiled)[0]
    speca_compile.end_generation(g)
    with speca_compile.generation():         # any next call sweeps ended generations
        _ddim(z, compiled, x0, ts, extra, steps=1)
    assert all(t.cache is None for t in runner.router.finished)
    assert len(runner.router.active()) == 1
    with pytest.raises(speca_compile.SpecaError, match="ended"):
        with speca_compile.generation(g):
            pass
    with pytest.raises(TypeError, match="Generation"):
        with speca_compile.generation("not a generation"):
            pass
    assert helpers.rel_err(b, _alone(z, x1, ts, extra)) < 1e-6


def test_heun_pattern_repeated_timesteps_stay_one_trajectory():
    """Heun, KDPM2 and DPM-Solver singlestep call the model twice at one timestep (corrector,
    then the next step).  Those calls used to split into two trajectories with two warmups.
    (The trained DiT: a random-weight model's latents explode under Heun's large early steps,
    which the router rightly takes for jumps.)"""
    from diffusers import HeunDiscreteScheduler

    from speca_compile.reference import store

    z = store.load("dit_digits")
    sched = HeunDiscreteScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sched.set_timesteps(15)
    timesteps = [float(t) for t in sched.timesteps]
    assert len(set(timesteps)) < len(timesteps)        # the pattern under test
    compiled = _compiled(z)
    x = torch.randn(z.latent_shape(2), generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    extra = z.make_inputs(2, 1)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = z.call(compiled, sched.scale_model_input(x, t), float(t), extra)
            x = sched.step(eps, t, x).prev_sample
    trajs = speca_compile.stats(compiled)["trajectories"]
    assert len(trajs) == 1 and trajs[0]["steps"] == len(timesteps)
    assert trajs[0]["restarted"] == []
    assert trajs[0]["speculative"] > 0
    assert trajs[0]["full"] < 0.5 * trajs[0]["steps"] * trajs[0]["batch_size"]


def test_two_threads_on_one_compiled_model_each_equal_their_run_alone(z):
    """Issue 15: two threads calling one compiled model crashed ('NoneType' has no attribute
    'update'): one thread's new generation finished the other's trajectory.  A barrier makes
    the threads alternate call by call, the worst interleaving."""
    ts = sampling.ddim_timesteps(STEPS)
    inputs = [(helpers.noise_for(z, 2, s), z.make_inputs(2, s + 1)) for s in (0, 1)]
    alone = [_alone(z, x, ts, extra, named=False) for x, extra in inputs]
    torch._dynamo.reset()
    compiled = _compiled(z)
    with torch.no_grad():
        _eps(z, compiled, inputs[0][0], ts[0], inputs[0][1])      # compile before the threads start
    speca_compile.reset(compiled)
    barrier = threading.Barrier(2)
    results, errors = [None, None], []

    def worker(k):
        try:
            x, extra = inputs[k]
            results[k] = _ddim(z, compiled, x, ts, extra, after_each=lambda i: barrier.wait(timeout=60))
        except Exception as exc:   # reported below, with the thread's error
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in (0, 1):
        assert helpers.rel_err(results[k], alone[k]) < 1e-4
    trajs = speca_compile.stats(compiled)["trajectories"][1:]     # after the compiling call
    assert sorted(t["steps"] for t in trajs) == [STEPS, STEPS] and {t["scope"] for t in trajs} == {"thread"}


def test_asyncio_tasks_have_their_own_scope(z):
    """Two tasks of one event loop, interleaving at every step, never share state."""
    ts = sampling.ddim_timesteps(STEPS)
    inputs = [(helpers.noise_for(z, 2, s), z.make_inputs(2, s + 1)) for s in (0, 1)]
    alone = [_alone(z, x, ts, extra, named=False) for x, extra in inputs]
    torch._dynamo.reset()
    compiled = _compiled(z)

    async def run(x, extra):
        with torch.no_grad():
            for i, t in enumerate(ts):
                x = sampling.ddim_step(x, _eps(z, compiled, x, t, extra), t, ts[i + 1] if i + 1 < len(ts) else None)
                await asyncio.sleep(0)
        return x

    async def both():
        return await asyncio.gather(*(run(x, extra) for x, extra in inputs))

    results = asyncio.run(both())
    for k in (0, 1):
        assert helpers.rel_err(results[k], alone[k]) < 1e-4
    assert {t["scope"] for t in speca_compile.stats(compiled)["trajectories"]} == {"task"}


def test_more_than_eight_interleaved_branches_never_mix(z):
    """Ten same-shape runs interleaved call by call in one generation (separately called
    branches): beyond 8 the old tracker evicted and re-routed branches onto each other's
    caches.  Each branch equals its run alone."""
    ts = sampling.ddim_timesteps(STEPS)
    extra = z.make_inputs(2, 1)
    xs = [helpers.noise_for(z, 2, 100 + k) for k in range(10)]
    starts = list(xs)
    compiled = _compiled(z)
    with torch.no_grad(), speca_compile.generation():
        for i, t in enumerate(ts):
            for k in range(10):
                xs[k] = sampling.ddim_step(xs[k], _eps(z, compiled, xs[k], t, extra), t,
                                           ts[i + 1] if i + 1 < len(ts) else None)
    stats = speca_compile.stats(compiled)
    assert sorted(t["steps"] for t in stats["trajectories"]) == [STEPS] * 10
    assert stats["per_graph"][0]["evicted_trajectories"] == 0
    torch._dynamo.reset()
    alone_model = _compiled(z)
    for k in (0, 9):
        with speca_compile.generation():
            assert helpers.rel_err(xs[k], _ddim(z, alone_model, starts[k], ts, extra)) < 1e-5


class _FirstTimesteps(torch.nn.Module):
    """A model that reads the first ``batch`` entries of its timestep input: a call with more
    timesteps than samples runs, but which sample is at which timestep cannot be told."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, timestep, y):
        return self.model(x, timestep[: x.shape[0]], y=y)


def test_a_call_whose_timesteps_do_not_match_the_batch_is_reported(z):
    compiled = torch.compile(_FirstTimesteps(z.model), backend="speca", options=EAGER)
    x, y = helpers.noise_for(z, 2, 0), z.make_inputs(2, 1)["y"]
    with torch.no_grad():
        out = compiled(x, torch.tensor([900.0, 900.0, 900.0]), y)
        ref = z.model(x, torch.tensor([900.0, 900.0]), y=y)
    assert helpers.rel_err(out, ref) < 1e-6
    unplaced = speca_compile.stats(compiled)["unplaced_calls"]
    assert unplaced["count"] == 1
    assert "3 values for a batch of 2" in unplaced["latest"][0]["reason"]
    assert "full path" in unplaced["latest"][0]["reason"]


class _ScalarTimestep(torch.nn.Module):
    """forward(x, t, y) with t a Python number, as a hand-written sampling loop may pass it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, y):
        return self.model(x, torch.full((x.shape[0],), t, dtype=torch.float32), y=y)


@pytest.mark.parametrize("kind", ["int", "float", "bf16", "fp16"])
def test_timesteps_as_int_float_bf16_fp16_form_one_trajectory(z, kind):
    """Integer and Python-float timesteps (scalars), and tensors cast to bf16/fp16 (whose
    rounding repeats values: bf16 keeps multiples of 4 near 1000, so 999, 997 ... come in
    pairs) are one trajectory each, speculating, with every call logged."""
    ts = list(range(999, 919, -2))      # 40 calls, 2 apart
    x, y = helpers.noise_for(z, 2, 0), z.make_inputs(2, 1)["y"]
    scalar = kind in ("int", "float")
    compiled = torch.compile(_ScalarTimestep(z.model) if scalar else z.model, backend="speca", options=EAGER)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind)
    with torch.no_grad():
        for t in ts:
            value = int(t) if kind == "int" else float(t) if kind == "float" else torch.full((2,), t, dtype=dtype)
            out = compiled(x, value, y) if scalar else compiled(x, value, y=y)
            assert torch.isfinite(out).all()
    stats = speca_compile.stats(compiled)
    assert stats["reason"] is None
    calls = [t for t in stats["trajectories"] if t["steps"]]
    logged = len(ts)
    if scalar:   # Dynamo bakes the first scalar into its first graph, which has no timestep input
        first = stats["per_graph"][0]
        assert stats["graphs"] == 2 and first["calls"] == 1 and "no timestep input" in first["reason"]
        logged -= 1
    assert sum(t["steps"] for t in calls) == logged and len(calls) == 1, [t["steps"] for t in calls]
    assert calls[0]["speculative"] > 0
    if kind == "bf16":
        assert len(set(calls[0]["timesteps"])) < len(ts)     # repeated values were seen


class _Recorder:
    def __init__(self):
        self.steps = []

    def record(self, figures):
        self.steps.append(figures)


def test_callables_in_options_are_kept_by_reference(z):
    """``Options.replace`` deep-copied every field (dataclasses.asdict), so a bound method's
    object was a copy and the user's never saw a call."""
    recorder = _Recorder()
    options = Options.parse({"progress": recorder.record})
    assert options.replace(tau0=0.2).progress.__self__ is recorder
    compiled = _compiled(z, progress=recorder.record)
    helpers.trajectory(z, compiled, 2, 10)
    assert [s["step"] for s in recorder.steps] == list(range(1, 11))


def test_apply_makes_each_pipeline_call_one_generation_and_a_lower_start_starts_clean():
    """A Flux pipeline call interrupted at step 8 of 20, then a call whose schedule starts
    lower (sigmas from 0.6, as an img2img pass does) through the same compiled transformer:
    the second call is its own generation and equals the same call on a fresh ``apply``."""
    import numpy as np

    from tests import tiny_pipelines

    def interrupt(p, i, t, kw):
        if i == 8:
            p._interrupt = True
        return kw

    lower = np.linspace(0.6, 0.05, 12)
    pipe, call = tiny_pipelines.flux_pipeline()
    speca_compile.apply(pipe, **EAGER)
    call(pipe, [0, 1], callback_on_step_end=interrupt)
    second = call(pipe, [2, 3], steps=12, sigmas=lower)
    trajs = speca_compile.stats(pipe)["trajectories"]
    assert {t["scope"] for t in trajs} == {"pipeline"}
    # true CFG: the pipeline calls the transformer once per branch, two trajectories per call
    assert [t["steps"] for t in trajs] == [9, 9, 12, 12]
    generations = [t["generation"] for t in trajs]
    assert generations[0] == generations[1] != generations[2] == generations[3]
    assert trajs[2]["decisions"][0] == trajs[3]["decisions"][0] == "FF"
    last = speca_compile.stats(pipe)["last_call"]
    assert (last["steps"], last["trajectories"]) == (12, 2)

    torch._dynamo.reset()
    fresh_pipe, _ = tiny_pipelines.flux_pipeline()
    speca_compile.apply(fresh_pipe, **EAGER)
    assert helpers.rel_err(second, call(fresh_pipe, [2, 3], steps=12, sigmas=lower)) < 1e-6


def test_a_sample_whose_latent_jumps_restarts_alone_in_a_static_batch():
    """In the implicit scope a sample whose latent is not the continuation of its last call
    starts again (warmup) while its companions go on.  With a static graph the engines compute
    every row; the restarted sample has no cache to forecast from, which crashed ('forecast
    requested for a sample with no cached full step').  The kept sample equals its run without
    the jump.  (Trained DiT, CFG in one batch: image 1 is rows 1 and 3.)"""
    from speca_compile.reference import store

    z = store.load("dit_digits")
    ts = sampling.ddim_timesteps(20)
    extra = z.make_inputs(2, 1)
    noise = torch.randn(z.latent_shape(2), generator=torch.Generator().manual_seed(0))
    fresh = torch.randn(z.latent_shape(1), generator=torch.Generator().manual_seed(7))

    def run(model, jump_at=None):
        x = noise.clone()
        with torch.no_grad():
            for i, t in enumerate(ts):
                if i == jump_at:
                    x = torch.cat([x[:1], fresh])
                x = sampling.ddim_step(x, z.call(model, x, float(t), extra), t, ts[i + 1] if i + 1 < len(ts) else None)
        return x

    compiled = _compiled(z)
    jumped = run(compiled, jump_at=6)
    runner = speca_compile.registry.runners_for(compiled)[0]
    assert runner.batch_inputs is None or runner.program.batch_size == 4   # the rows path under test
    traj = speca_compile.stats(compiled)["trajectories"][-1]
    assert traj["steps"] == len(ts) and traj["restarted"] == [{"step": 6, "samples": [1, 3]}]
    assert traj["decisions"][6][1] == traj["decisions"][6][3] == "F"
    assert traj["decisions"][6][0] != "F"       # the kept sample forecasts on
    speca_compile.reset(compiled)
    assert helpers.rel_err(jumped[:1], run(compiled)[:1]) < 1e-5
