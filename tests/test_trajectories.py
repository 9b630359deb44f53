"""Acceptance 4 (per-sample independence) and trajectory routing."""

import pytest
import torch

import speca_compile
from speca_compile import sampling
from tests import helpers

NOT_BATCHED = ("img_ids", "txt_ids", "added_cond_kwargs")
# routing is the subject of the tests below the first: their segments run eagerly (the
# independence test keeps the default lowering: ONNX Runtime sub-batches are part of it)
EAGER = {"lowering": "eager"}


def slice_sample(extra, k):
    """Sample k's inputs as fresh tensors: a view as the first input makes Dynamo
    guard on its base and recompile at step 2, which would restart the trajectory."""
    return {key: (v[k:k + 1].clone() if key not in NOT_BATCHED and isinstance(v, torch.Tensor) else v)
            for key, v in extra.items()}


TAYLOR2 = {"forecaster": "taylor", "order": 2}   # settings under which these models' samples decide differently


@pytest.mark.parametrize("name,dynamic,batch,options", [
    ("dit", None, 4, TAYLOR2),
    ("reference_dit", None, 4, {**TAYLOR2, "tau0": 0.02}),  # a threshold inside its error range
    ("flux", True, 5, TAYLOR2),
    ("dit", None, 4, {"forecaster": "foca", "tau0": 0.02}),   # FoCa records the steps it used: rows path ...
    ("flux", True, 5, {"forecaster": "foca"}),     # ... and sub-batch path
])
def test_sample_in_a_batch_equals_sample_alone(name, dynamic, batch, options):
    """Acceptance 4.  Static graphs bake the batch size into their views, so the
    runtime runs the whole batch and keeps the rows it needs; Flux with
    dynamic=True runs rejected samples as a true sub-batch.  (Its batch is 5, a
    size no other dimension has: Dynamo's duck sizing gives equal sizes one
    symbol, and a batch tied to the 4 text tokens or the 3 id axes is static.)"""
    z = helpers.build(name)
    steps = 50
    extra = z.make_inputs(batch, 11)
    noise = helpers.noise_for(z, batch, 7)
    compiled = torch.compile(z.model, backend="speca", dynamic=dynamic, options=options)
    together = helpers.trajectory(z, compiled, batch, steps, extra=extra, noise=noise)
    batch_traj = speca_compile.stats(compiled)["trajectories"][-1]
    mixed = [d for d in batch_traj["decisions"] if len(set(d)) > 1]
    assert mixed, "samples should decide differently at some step, or the test proves nothing"
    runner = speca_compile.registry.runners_for(compiled)[0]
    assert runner.reason is None  # dynamic shapes: symbolic sizes must not block speculation
    if dynamic:
        assert runner.batch_inputs
        sliced = {runner.program.placeholders[i] for i in runner.batch_inputs}
        assert not any("txt_ids" in n or "img_ids" in n for n in sliced)
    for k in range(batch):
        alone = helpers.trajectory(z, compiled, 1, steps, extra=slice_sample(extra, k), noise=noise[k:k + 1].clone())
        assert helpers.rel_err(alone[0], together[k]) < 1e-4
        solo = speca_compile.stats(compiled)["trajectories"][-1]
        assert [d[0] for d in solo["decisions"]] == [d[k] for d in batch_traj["decisions"]]


def test_cfg_branches_called_separately_keep_separate_state():
    """Two calls per step at the same timestep (separate CFG branches) = two trajectories,
    each identical to running that branch alone."""
    z = helpers.build("dit")
    cond, uncond = z.make_inputs(2, 1), {"class_labels": torch.tensor([9, 9])}
    noise_a, noise_b = helpers.noise_for(z, 2, 1), helpers.noise_for(z, 2, 2)
    compiled = torch.compile(z.model, backend="speca", options=EAGER)
    xs = {"a": noise_a, "b": noise_b}
    ts = sampling.ddim_timesteps(30)
    with torch.no_grad():
        for i, t in enumerate(ts):
            for key, extra in (("a", cond), ("b", uncond)):
                eps = z.call(compiled, xs[key], float(t), extra)
                xs[key] = sampling.ddim_step(xs[key], eps, t, ts[i + 1] if i + 1 < len(ts) else None)
    stats = speca_compile.stats(compiled)
    assert [t["steps"] for t in stats["trajectories"]] == [30, 30]
    speca_compile.reset(compiled)
    solo_a = helpers.trajectory(z, compiled, 2, 30, extra=cond, noise=noise_a)
    solo_b = helpers.trajectory(z, compiled, 2, 30, extra=uncond, noise=noise_b)
    assert torch.allclose(solo_a, xs["a"], atol=1e-5) and torch.allclose(solo_b, xs["b"], atol=1e-5)


def test_batch_shape_change_starts_a_new_trajectory():
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options=EAGER)
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):
            z.call(compiled, helpers.noise_for(z, 2, 0), t, z.make_inputs(2, 0))
        z.call(compiled, helpers.noise_for(z, 3, 0), 600.0, z.make_inputs(3, 0))
    trajs = speca_compile.stats(compiled)["trajectories"]
    assert [(t["batch_size"], t["steps"]) for t in trajs] == [(2, 3), (3, 1)]
    assert trajs[-1]["decisions"] == ["FFF"]  # warmup again: nothing inherited


def test_timestep_going_up_starts_a_new_trajectory_and_frees_the_cache():
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options=EAGER)
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0, 900.0):
            z.call(compiled, helpers.noise_for(z, 2, 0), t, z.make_inputs(2, 0))
    runner = speca_compile.registry.runners_for(compiled)[0]
    assert [t.number for t in runner.router.finished] == [1]
    assert runner.router.finished[0].cache is None
    assert [t["steps"] for t in speca_compile.stats(compiled)["trajectories"]] == [3, 1]
    assert speca_compile.stats(compiled)["trajectories"][0]["cache_bytes"] > 0


def test_stats_before_any_call_and_for_a_plain_module():
    model = helpers.build("reference_dit").model
    compiled = torch.compile(model, backend="speca", options=EAGER)
    assert speca_compile.stats(compiled)["graphs"] == 0
    with pytest.raises(TypeError, match="torch.nn.Module"):
        speca_compile.stats("not a model")
