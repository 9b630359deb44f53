"""The serving step loop on both trained reference bundles: a request in a mixed, changing
batch gives what it gives alone; replays are bit-identical; the queue is bounded; nothing is
lost when a call fails or the loop stops."""

import concurrent.futures

import pytest
import torch

import speca_compile
from speca_compile.bench.quality import psnr
from speca_compile.serve.protocol import parse_generate
from speca_compile.serve.step_loop import LoopStopped, QueueFull, StepLoop

STEPS = 50
GUIDANCE = 1.5     # the reference models' own guidance scale
JOINS = [0, 0, 3, 7, 12, 20]   # the tick each request arrives at


def _body(spec, model, i):
    example = model.by_key(*model.example_inputs())
    inputs = {c.key: example[c.key][i % 3].tolist() for c in spec.conditions}   # rows 0-2: conditional
    return {"inputs": inputs, "seed": 100 + i, "steps": STEPS, "guidance_scale": GUIDANCE}


def _drive(loop, bodies, joins):
    """Submit body k at tick ``joins[k]``, tick until all are answered; the results in order."""
    futures = {}
    for tick in range(10 * STEPS):
        for k, at in enumerate(joins):
            if at == tick:
                futures[k] = loop.submit(parse_generate(bodies[k], loop.spec))
        loop.tick()
        if len(futures) == len(bodies) and all(f.done() for f in futures.values()):
            return [futures[k].result() for k in range(len(bodies))]
    raise AssertionError("requests not answered")


@pytest.fixture(scope="module", params=["dit_digits", "flux_digits"])
def served(request, reference_bundles):
    _, path, _, _ = reference_bundles.get(request.param)
    model = speca_compile.load(path)
    loop = StepLoop(model, max_batch=8)
    bodies = [_body(loop.spec, model, i) for i in range(len(JOINS))]
    return request.param, model, loop, bodies


@pytest.fixture(scope="module")
def dit(reference_bundles):
    """The DiT bundle's loop alone, for what does not depend on the model (faults, modes)."""
    model = speca_compile.load(reference_bundles.get("dit_digits")[1])
    loop = StepLoop(model, max_batch=8)
    return "dit_digits", model, loop, [_body(loop.spec, model, i) for i in range(len(JOINS))]


@pytest.fixture(scope="module")
def runs(served):
    """Each request alone, all of them mixed (twice), and mixed with full compute."""
    name, model, loop, bodies = served
    alone = [_drive(loop, [b], [0])[0] for b in bodies]
    before = dict(model.runner.mixed_steps)
    mixed = _drive(loop, bodies, JOINS)
    mean_batch = loop.counters()["mean_batch_requests"]
    shared_ends = model.runner.mixed_steps["shared_ends"] - before["shared_ends"]
    per_path = model.runner.mixed_steps["per_path"] - before["per_path"]
    again = _drive(loop, bodies, JOINS)
    full = _drive(StepLoop(model, loop.spec, max_batch=8, speculate=False), bodies, JOINS)
    return {"alone": alone, "mixed": mixed, "again": again, "full": full, "mean_batch": mean_batch,
            "shared_ends": shared_ends, "per_path": per_path}


def test_a_request_in_a_mixed_batch_matches_it_alone(served, runs):
    name = served[0]
    assert runs["mean_batch"] > 1.5    # batches really were mixed
    # the bundle records its side values: steps of mixed paths share one prologue and epilogue
    assert served[1].manifest.side_values is not None
    assert runs["shared_ends"] > 0 and runs["per_path"] == 0, (runs["shared_ends"], runs["per_path"])
    differing = 0
    for a, m in zip(runs["alone"], runs["mixed"]):
        assert a.stats["full"] + a.stats["speculative"] == STEPS * 2   # two CFG rows per step
        assert a.stats["speculative"] > 0
        quality = psnr(m.latent, a.latent)
        assert quality >= 40, (name, quality)
        differing += (m.stats["full"], m.stats["rejected"]) != (a.stats["full"], a.stats["rejected"])
    print(f"{name}: {differing} of {len(runs['alone'])} requests decided differently in the mixed batch")


def test_replaying_an_arrival_sequence_is_bit_identical(runs):
    for a, b in zip(runs["mixed"], runs["again"]):
        assert torch.equal(a.latent, b.latent)
        assert {k: a.stats[k] for k in ("full", "speculative", "rejected")} == \
               {k: b.stats[k] for k in ("full", "speculative", "rejected")}


def test_the_pooled_feature_store_gives_what_caches_of_their_own_give(served, runs, reference_bundles):
    """Served requests keep their features in one pool per layout (runtime/feature_pool.py);
    the same arrivals with a cache per request give bit-identical latents and decisions, and
    the pool reused the slots of finished requests (6 requests alone, then 6 mixed twice: 36
    rows in all, at most 12 at once)."""
    name, model, loop, bodies = served
    pools = model.runner.pools
    assert len(pools._pools) == 1
    assert next(iter(pools._pools.values())).capacity <= 16
    own = speca_compile.load(reference_bundles.get(name)[1])
    own.runner.pools = None
    separate = _drive(StepLoop(own, loop.spec, max_batch=8), bodies, JOINS)
    for a, b in zip(runs["mixed"], separate):
        assert torch.equal(a.latent, b.latent)
        assert {k: a.stats[k] for k in ("full", "speculative", "rejected")} == \
               {k: b.stats[k] for k in ("full", "speculative", "rejected")}


def test_speculation_against_full_compute_of_the_same_seed(served, runs):
    name = served[0]
    full, spec = runs["full"], runs["mixed"]
    for f in full:
        assert f.stats["full"] == STEPS * 2 and f.stats["speculative"] == 0
    # over the batch of requests, as ``speca bench`` measures (single images vary by several dB)
    quality = psnr(torch.stack([s.latent for s in spec]), torch.stack([f.latent for f in full]))
    print(f"{name}: speculative vs full compute {quality:.1f} dB; per request "
          + ", ".join(f"{psnr(s.latent, f.latent):.1f}" for s, f in zip(spec, full)))
    assert quality >= 30, name
    assert sum(s.stats["full"] for s in spec) < 0.6 * sum(f.stats["full"] for f in full)


class FailingOnce:
    """A bundle model whose ``fail_at``-th call raises (a model error during one tick)."""

    def __init__(self, model, fail_at):
        self.model, self.calls, self.fail_at = model, 0, fail_at
        self.runner, self.manifest = model.runner, model.manifest

    def __call__(self, **inputs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected engine failure")
        return self.model(**inputs)


def test_a_failed_call_fails_that_tick_only_and_the_loop_goes_on(dit):
    name, model, loop, bodies = dit
    flaky = StepLoop(FailingOnce(model, fail_at=3), loop.spec, max_batch=8)
    first = [flaky.submit(parse_generate(b, loop.spec)) for b in bodies[:2]]
    for _ in range(5):
        flaky.tick()
    for f in first:
        with pytest.raises(RuntimeError, match="injected"):
            f.result(timeout=0)
    later = _drive(flaky, bodies[2:4], [0, 1])
    assert all(r.stats["steps"] == STEPS for r in later)
    counters = flaky.counters()
    assert counters["failed"] == 2 and counters["served"] == 2 and counters["in_flight"] == 0


def test_the_queue_is_bounded_and_stopping_answers_everyone(dit):
    name, model, loop, bodies = dit
    small = StepLoop(model, loop.spec, max_batch=1, max_queue=2)
    futures = [small.submit(parse_generate(b, loop.spec)) for b in bodies[:2]]
    with pytest.raises(QueueFull) as full:
        small.submit(parse_generate(bodies[2], loop.spec))
    assert full.value.retry_after > 0
    small.start()
    small.stop()
    for f in futures:   # answered: a result if it finished, else LoopStopped; never pending
        assert f.done()
        try:
            f.result(timeout=0)
        except LoopStopped:
            pass
    assert small.counters()["rejected"] == 1
    with pytest.raises(LoopStopped):
        small.submit(parse_generate(bodies[0], loop.spec))


def test_request_level_batching_admits_a_new_batch_only_when_the_last_finished(dit):
    name, model, loop, bodies = dit
    batched = StepLoop(model, loop.spec, max_batch=2, mode="request")
    futures = [batched.submit(parse_generate(b, loop.spec)) for b in bodies[:3]]
    for _ in range(STEPS):
        batched.tick()
    assert futures[0].done() and futures[1].done() and not futures[2].done()
    for _ in range(STEPS):
        batched.tick()
    assert futures[2].done()
    assert futures[2].result().stats["queue_s"] > futures[0].result().stats["queue_s"]
    assert batched.counters()["mean_batch_requests"] == pytest.approx(1.5)


def test_threaded_loop_serves_concurrent_submissions(dit):
    name, model, loop, bodies = dit
    threaded = StepLoop(model, loop.spec, max_batch=4).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(lambda b: threaded.submit(parse_generate(b, loop.spec)), bodies))
        results = [f.result(timeout=120) for f in futures]
    finally:
        threaded.stop()
    assert all(r.stats["steps"] == STEPS for r in results)
    assert threaded.counters()["served"] == len(bodies)


def test_requests_join_on_the_policys_alignment_grid(dit):
    """Full steps by estimate fall on every 2nd step of a request's own run; a request joining
    on an odd tick would keep the other parity, so it waits for the next grid tick.  An idle
    loop admits at once (the grid starts there); full compute has no grid."""
    name, model, loop, bodies = dit
    assert model.runner.options.align_full_steps == 2
    grid = StepLoop(model, loop.spec, max_batch=4)
    assert grid.align == 2
    grid.submit(parse_generate(bodies[0], loop.spec))
    grid.tick()                                    # idle: admitted on tick 0
    assert len(grid.active) == 1
    grid.submit(parse_generate(bodies[1], loop.spec))
    grid.tick()                                    # tick 1: off the grid, waits
    assert (len(grid.active), len(grid.queue)) == (1, 1)
    grid.tick()                                    # tick 2: joins
    assert (len(grid.active), len(grid.queue)) == (2, 0)
    full = StepLoop(model, loop.spec, max_batch=4, speculate=False)
    assert full.align == 1
    full.submit(parse_generate(bodies[0], loop.spec))
    full.tick()
    full.submit(parse_generate(bodies[1], loop.spec))
    full.tick()
    assert len(full.active) == 2
    grid.stop()
    full.stop()


@pytest.mark.parametrize("kind", ["ddim", "flow"])
def test_one_sampler_update_for_all_requests_equals_each_alone(kind):
    """A tick updates every request's latent in one batched computation (``advance_jobs``):
    bit-identical to updating each request alone, whatever its rows (with or without a negative
    branch), guidance scale and position in its schedule."""
    import types

    from speca_compile import sampling
    from speca_compile.serve.step_loop import advance_jobs

    g = torch.Generator().manual_seed(0)
    shape = (1, 4, 8, 8) if kind == "ddim" else (1, 16, 4)
    jobs = [types.SimpleNamespace(
        kind=kind, rows=2 if k % 3 else 1, x=torch.randn(shape, generator=g),
        request=types.SimpleNamespace(guidance_scale=1.5 + 0.25 * k), index=[0, 10, 49, 3, 25, 48][k],
        schedule=sampling.ddim_timesteps(50) if kind == "ddim" else sampling.flow_sigmas(50))
        for k in range(6)]
    rows = sum(j.rows for j in jobs)
    # DDIM models may emit more channels (learned sigma); the update reads the latent's
    output = torch.randn(((rows, 8) + shape[2:]) if kind == "ddim" else ((rows,) + shape[1:]), generator=g)
    expected, offset = [], 0
    for job in jobs:   # each alone, by the textbook formulas
        out = output[offset:offset + job.rows, :shape[1]]
        offset += job.rows
        if job.rows == 2:
            out = out[1:] + job.request.guidance_scale * (out[:1] - out[1:])
        ts, i = job.schedule, job.index
        expected.append(sampling.ddim_step(job.x, out, ts[i], ts[i + 1] if i + 1 < len(ts) else None)
                        if kind == "ddim" else job.x + (ts[i + 1] - ts[i]) * out)
    before = [j.index for j in jobs]
    advance_jobs(jobs, output)
    for job, want, index in zip(jobs, expected, before):
        assert job.index == index + 1
        assert torch.equal(job.x, want)
