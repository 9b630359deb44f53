"""speca_compile.apply on diffusers pipelines built from tiny random components.

Per pipeline: compiled full compute equals the plain pipeline; repeated calls with
the same seeds give identical output; image i of a batch equals image i made
alone; changing steps, batch, guidance and resolution between calls needs no
reset and compiles at most one graph per input shape; remove restores it.
"""

import pytest
import torch

import speca_compile
from speca_compile.errors import OptionsError, SpecaError
from tests import tiny_pipelines
from tests.helpers import rel_err

# pipeline semantics on the reference engines; the ONNX Runtime lowering is checked against
# eager in its own tests (PixArt under dynamic=True does not export: README Known limits)
EAGER = {"lowering": "eager"}

PIPELINES = sorted(tiny_pipelines.BUILDERS)


@pytest.mark.parametrize("name", PIPELINES)
def test_full_compute_equals_the_plain_pipeline_and_remove_restores_it(name):
    pipe, call = tiny_pipelines.BUILDERS[name]()
    original = pipe.transformer
    plain = call(pipe, [0, 1])
    speca_compile.apply(pipe, speculate=False, **EAGER)
    assert pipe.transformer is not original
    assert rel_err(call(pipe, [0, 1]), plain) < 1e-4
    assert speca_compile.stats(pipe)["last_call"]["speculative"] == 0
    speca_compile.remove(pipe)
    assert pipe.transformer is original
    assert rel_err(call(pipe, [0, 1]), plain) < 1e-6


@pytest.mark.parametrize("name", PIPELINES)
def test_repeated_calls_are_identical_and_each_image_equals_itself_alone(name):
    pipe, call = tiny_pipelines.BUILDERS[name]()
    speca_compile.apply(pipe, **EAGER)
    first = call(pipe, [0, 1, 2])
    last = speca_compile.stats(pipe)["last_call"]
    assert last["speculative"] > 0 and last["full"] < last["sample_steps"]
    second = call(pipe, [0, 1, 2])
    assert torch.equal(first, second)
    assert speca_compile.stats(pipe)["last_call"]["full"] == last["full"]
    alone = call(pipe, [1])
    assert rel_err(alone[0], first[1]) < 1e-4


@pytest.mark.parametrize("name", PIPELINES)
def test_settings_change_between_calls_without_reset_or_recompile_storm(name):
    pipe, call = tiny_pipelines.BUILDERS[name]()
    shapes = set()

    def record(*args, **kwargs):
        return call(pipe, *args, **kwargs)

    speca_compile.apply(pipe, **EAGER)
    runs = [dict(seeds=[0, 1]), dict(seeds=[0, 1], steps=12), dict(seeds=[0, 1, 2]),
            dict(seeds=[0, 1], guidance_scale=7.0)]
    if name not in ("dit",):   # DiTPipeline has a fixed resolution
        other = {"pixart_alpha": 16, "pixart_sigma": 16, "sd3": 48, "flux": 48}[name]
        runs.append(dict(seeds=[0, 1], height=other, width=other))
    for kw in runs:
        out = record(**kw)
        assert torch.isfinite(out).all()
        last = speca_compile.stats(pipe)["last_call"]
        assert last["steps"] == kw.get("steps", 20)
        shapes.add((len(kw["seeds"]), kw.get("height")))
    # a new batch size or resolution may compile one graph; steps and guidance compile nothing
    assert speca_compile.stats(pipe)["graphs"] <= len(shapes)
    # and the first setting again gives what it gave before
    speca_compile.reset(pipe)
    assert torch.equal(record(seeds=[0, 1]), record(seeds=[0, 1]))


def test_progress_callback_sees_every_step():
    pipe, call = tiny_pipelines.BUILDERS["sd3"]()
    seen = []
    speca_compile.apply(pipe, progress=seen.append, **EAGER)
    call(pipe, [0], steps=10)
    assert [s["step"] for s in seen] == list(range(1, 11))
    assert seen[-1]["full"] == speca_compile.stats(pipe)["last_call"]["full"]
    assert all(set(s["decisions"]) <= set("FSARD") for s in seen)


def test_apply_checks_its_input():
    pipe, _ = tiny_pipelines.BUILDERS["sd3"]()
    with pytest.raises(OptionsError, match="unknown option"):
        speca_compile.apply(pipe, tau=0.1)
    with pytest.raises(SpecaError, match="not compiled by speca_compile.apply"):
        speca_compile.remove(pipe)
    speca_compile.apply(pipe, **EAGER)
    with pytest.raises(SpecaError, match="already compiled"):
        speca_compile.apply(pipe, **EAGER)
    with pytest.raises(SpecaError, match="diffusers pipeline"):
        speca_compile.apply(object())
    with pytest.raises(OptionsError, match="progress"):
        speca_compile.Options.parse({"progress": 3})
