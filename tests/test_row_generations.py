"""Rows that name their request: one call whose rows belong to several generations, each at
its own timestep, decides and forecasts per generation exactly as if each ran alone."""

import pytest
import torch

import speca_compile
from speca_compile import sampling, zoo
from speca_compile.errors import SpecaError

STEPS = 14
GUIDANCE = 1.5


class Request:
    """One guided DDIM request (its two CFG rows) driven step by step."""

    def __init__(self, seed: int, label: int, **overrides):
        self.x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
        self.labels = torch.tensor([label, 0])
        self.ts = sampling.ddim_timesteps(STEPS)
        self.i = 0
        self.generation = speca_compile.new_generation(label=f"seed {seed}", **overrides)

    def rows(self):
        return torch.cat([self.x, self.x]), torch.full((2,), float(self.ts[self.i])), self.labels

    def advance(self, out):
        cond, uncond = out[:1, :4], out[1:2, :4]
        eps = uncond + GUIDANCE * (cond - uncond)
        nxt = self.ts[self.i + 1] if self.i + 1 < len(self.ts) else None
        self.x = sampling.ddim_step(self.x, eps, self.ts[self.i], nxt)
        self.i += 1


def serve(model, requests, joins):
    """Tick by tick: request k joins at tick ``joins[k]``; every active one advances one step
    in one batched call whose rows name their generations."""
    active, tick, pending = [], 0, list(zip(joins, requests))
    while pending or active:
        active += [r for at, r in pending if at == tick]
        pending = [(at, r) for at, r in pending if at != tick]
        if active:
            xs, ts, ys = zip(*(r.rows() for r in active))
            with speca_compile.rows([r.generation for r in active for _ in range(2)]), torch.no_grad():
                out = model(torch.cat(xs), timestep=torch.cat(ts), class_labels=torch.cat(ys),
                            return_dict=False)[0]
            for k, r in enumerate(active):
                r.advance(out[2 * k:2 * k + 2])
            active = [r for r in active if r.i < STEPS]
        tick += 1


def decisions_of(model, generation):
    trajectories = [t for t in speca_compile.stats(model)["trajectories"] if t["generation"] == generation.number]
    assert len(trajectories) == 1, trajectories
    return trajectories[0]["decisions"]


@pytest.fixture(scope="module")
def tiny():
    return zoo.build("dit")


def _compiled(z, **options):
    return torch.compile(z.model, backend="speca", dynamic=True,
                         options={"lowering": "eager", "tau0": 0.3, **options})


@pytest.mark.parametrize("forecaster", ["hermite", "taylor", "foca"])
def test_a_request_in_a_changing_batch_decides_and_computes_as_alone(tiny, forecaster):
    """Hermite (the default) and Taylor forecast a batch of many requests in one pass of their
    gathered terms; FoCa, whose predictor is no weighted sum, one request at a time."""
    model = _compiled(tiny, forecaster=forecaster)
    specs = [(1, 3), (2, 5), (3, 7)]
    alone = []
    for seed, label in specs:
        r = Request(seed, label)
        serve(model, [r], [0])
        alone.append((r.x, decisions_of(model, r.generation)))
    mixed = [Request(seed, label) for seed, label in specs]
    serve(model, mixed, [0, 2, 5])      # batches of 2, 4 and 6 rows at different steps
    for r, (x, decisions) in zip(mixed, alone):
        assert decisions_of(model, r.generation) == decisions
        assert torch.allclose(r.x, x, rtol=1e-4, atol=1e-5), (r.x - x).abs().max()
    assert any(set(d) - {"F"} for _, d in alone), "nothing speculated: the test would prove nothing"
    assert speca_compile.stats(model)["graphs"] == 1


def test_per_generation_overrides(tiny):
    model = _compiled(tiny)
    full, strict, loose = Request(1, 3, speculate=False), Request(1, 3, tau0=1e-6), Request(1, 3, tau0=10.0)
    serve(model, [full, strict, loose], [0, 0, 0])
    assert all(step == "FF" for step in decisions_of(model, full.generation))
    # a generation that never speculates keeps no cache (nothing would read it)
    cache = {t["generation"]: t["cache_bytes"] for t in speca_compile.stats(model)["trajectories"]}
    assert cache[full.generation.number] == 0 and cache[loose.generation.number] > 0
    n_full = {r: sum(d.count("F") + d.count("R") for d in decisions_of(model, r.generation))
              for r in (strict, loose)}
    assert n_full[strict] > n_full[loose]


def test_a_wrong_number_of_row_generations_is_refused(tiny):
    model = _compiled(tiny)
    r = Request(1, 3)
    xs, ts, ys = r.rows()
    with speca_compile.rows([r.generation]), pytest.raises(SpecaError, match="1 generation.*batch 2"):
        model(xs, timestep=ts, class_labels=ys, return_dict=False)
    with pytest.raises(ValueError, match="tau0"):
        speca_compile.new_generation(tau0=-1)
    with pytest.raises(ValueError, match="unknown"):
        speca_compile.new_generation(warmup=2)
