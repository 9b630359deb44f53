"""Issue 18: a denoising step as one program per path (runtime/fused_step.py).

The fused full and speculative steps must decide and compute as the
segment-by-segment runner does, compile once each for every sub-batch size,
and, padded to static buckets (what a CUDA graph needs), leave the real rows
untouched by whatever the padding rows hold.
"""

from __future__ import annotations

import pytest
import torch

import speca_compile
from speca_compile import registry
from speca_compile.errors import OptionsError
from tests import helpers

TAU0 = 0.1   # the samples of one batch decide differently here (tests/test_inductor_compiles.py)


def _decisions(compiled):
    return speca_compile.stats(compiled)["trajectories"][-1]["decisions"]


def _runner(compiled):
    (runner,) = registry.runners_for(compiled)
    return runner


def _compile(z, **options):
    return torch.compile(z.model, backend="speca", dynamic=True, options={"tau0": TAU0, **options})


def test_fused_steps_decide_and_compute_as_the_segment_by_segment_runner():
    z = helpers.build("dit")
    segments = _compile(z, lowering="eager", fuse_steps=False)
    fused = _compile(z, lowering="eager", fuse_steps=True)
    for batch in (2, 3, 5):
        expected = helpers.trajectory(z, segments, batch, 30)
        out = helpers.trajectory(z, fused, batch, 30)
        assert _decisions(fused) == _decisions(segments)
        assert len({d for step in _decisions(fused) for d in step}) >= 3   # full, forecast, checked
        assert helpers.rel_err(out, expected) < 1e-5
    stats = speca_compile.stats(fused)
    # three programs (full, speculative, speculative and checked) served every batch and sub-batch
    assert stats["fused_steps"] == [{"programs": 3, "buckets": None, "unfused_steps": 0, "captured": 0,
                                     "capture_errors": []}]
    assert stats["mixed_steps"]["shared_ends"] == 0 and stats["mixed_steps"]["per_path"] > 0
    assert speca_compile.stats(segments)["fused_steps"] == [{"off": "fuse_steps=False"}]


def test_inductor_compiles_each_step_program_once_for_batches_2_3_and_5():
    z = helpers.build("dit")
    eager = _compile(z, lowering="eager")
    compiled = _compile(z, lowering="inductor", fuse_steps=True)   # by default only on CUDA
    for batch in (2, 3, 5):
        out = helpers.trajectory(z, compiled, batch, 50)
        reference = helpers.trajectory(z, eager, batch, 50)
        assert _decisions(compiled) == _decisions(eager)
        assert any(len(set(step)) > 1 for step in _decisions(compiled))   # sub-batches ran
        assert helpers.rel_err(out, reference) < 1e-4
    runner = _runner(compiled)
    programs = {segment.name: engine.info for segment, engine in runner.fused._programs.values()}
    assert set(programs) == {"full_step", "speculative_step", "speculative_step_checked"}
    for name, info in programs.items():
        assert info["builds"] == 1 and info["checked"] is True, (name, info)
        assert info["shapes"].startswith("symbolic batch (unbacked)"), (name, info)
    # the segment engines were never needed: a step is one program
    assert all(not e.built() or int(e.info.get("builds", 0)) == 0 for e in runner.engines.values())


@pytest.mark.parametrize("name", ["dit", "flux"])
def test_padding_rows_are_inert(name):
    """Sub-batches padded to buckets 4 and 8: padding rows of NaN leave every real row
    bit-identical to padding rows that copy a real one, and the decisions and cache of the
    trajectory are those of the unpadded run."""
    z = helpers.build(name)
    plain = _compile(z, lowering="eager", fuse_steps=True)
    copied = _compile(z, lowering="eager", fuse_steps=True, step_buckets=(4, 8))
    # options unequal to copied's (the default verify_block named), or Dynamo reuses copied's graph
    poisoned = _compile(z, lowering="eager", fuse_steps=True, step_buckets=(4, 8), verify_block=-1)
    expected = helpers.trajectory(z, plain, 5, 20)
    out_copied = helpers.trajectory(z, copied, 5, 20)
    helpers.trajectory(z, poisoned, 5, 1)   # compiles it: its runner exists from here on
    _runner(poisoned).fused.fill = float("nan")
    out_poisoned = helpers.trajectory(z, poisoned, 5, 20)
    assert torch.isfinite(out_poisoned).all()
    assert torch.equal(out_poisoned, out_copied)
    assert _decisions(poisoned) == _decisions(copied) == _decisions(plain)
    assert any(len(set(step)) > 1 for step in _decisions(poisoned))   # sub-batches of 1-4 were padded
    assert helpers.rel_err(out_copied, expected) < 1e-5
    summary = speca_compile.stats(poisoned)["trajectories"][-1]   # no padding row reached a cache
    assert summary["batch_size"] == 5 and all(len(step) == 5 for step in summary["decisions"])
    assert summary["cache_bytes"] == speca_compile.stats(plain)["trajectories"][-1]["cache_bytes"]


def test_fuse_steps_by_default_only_for_inductor_on_cuda_at_fp32():
    from speca_compile.options import Options
    from speca_compile.runtime.fused_step import resolve_fuse_steps

    cpu = [torch.zeros(2, 3)]
    inductor = Options.parse({"lowering": "inductor"})
    options, note = resolve_fuse_steps(inductor, cpu)
    assert options.fuse_steps is False and "inputs on the cpu" in note
    options, note = resolve_fuse_steps(Options.parse({"lowering": "onnxruntime"}), cpu)
    assert options.fuse_steps is False and note is None
    options, _ = resolve_fuse_steps(Options.parse({"lowering": "eager", "fuse_steps": True}), cpu)
    assert options.fuse_steps is True   # named: kept

    class OnCuda(torch.Tensor):
        is_cuda = True

    gpu = [torch.zeros(2, 3).as_subclass(OnCuda)]
    options, note = resolve_fuse_steps(inductor, gpu)
    assert options.fuse_steps is True and "on (inductor on cuda" in note
    options, note = resolve_fuse_steps(Options.parse({"lowering": "inductor", "precision": "bf16"}), gpu)
    assert options.fuse_steps is False and "bf16" in note


def test_fused_steps_need_a_lowering_that_runs_them():
    with pytest.raises(OptionsError, match="fuse_steps.*'onnxruntime'"):
        speca_compile.Options.parse({"fuse_steps": True, "lowering": "onnxruntime"})
    with pytest.raises(OptionsError, match="bf16"):
        speca_compile.Options.parse({"fuse_steps": True, "lowering": "inductor", "precision": "bf16"})
    z = helpers.build("dit")
    compiled = _compile(z, lowering="eager", forecaster="foca", fuse_steps=True)
    helpers.trajectory(z, compiled, 2, 8)
    (state,) = speca_compile.stats(compiled)["fused_steps"]
    assert "foca" in state["off"]


def test_a_step_whose_cache_paired_streams_otherwise_runs_segment_by_segment(monkeypatch):
    """Should the program's pairing of residual streams (by symbolic shape) disagree with the
    one the cache applied (by real shape), the step runs segment by segment, counted."""
    from speca_compile.runtime import fused_step

    monkeypatch.setattr(fused_step, "pair_by_shape", lambda target, base: None)   # "not residuals"
    z = helpers.build("dit")
    segments = _compile(z, lowering="eager", fuse_steps=False)
    fused = _compile(z, lowering="eager", fuse_steps=True)
    expected = helpers.trajectory(z, segments, 3, 20)
    out = helpers.trajectory(z, fused, 3, 20)
    (state,) = speca_compile.stats(fused)["fused_steps"]
    assert state["unfused_steps"] > 0
    assert _decisions(fused) == _decisions(segments) and helpers.rel_err(out, expected) < 1e-5


def test_a_batch_dynamo_tied_to_another_axis_runs_segment_by_segment():
    """8 rows of the tiny DiT's 8x8 latent: Dynamo gives batch and height one symbol, so a
    sub-batch cannot run a whole step; the runner says so and decides as before."""
    z = helpers.build("dit")
    segments = _compile(z, lowering="eager", fuse_steps=False)
    fused = _compile(z, lowering="eager", fuse_steps=True)
    expected = helpers.trajectory(z, segments, 8, 20)
    out = helpers.trajectory(z, fused, 8, 20)
    (state,) = speca_compile.stats(fused)["fused_steps"]
    assert "also sizes axis" in state["off"], state
    assert _decisions(fused) == _decisions(segments) and torch.equal(out, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_decide_as_eager_on_cuda():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        z = helpers.build("dit")
        z.model.to("cuda")
        eager = _compile(z, lowering="eager")
        compiled = _compile(z, lowering="inductor")   # buckets and CUDA graphs by default on CUDA
        for batch in (2, 3, 5):
            out = helpers.trajectory(z, compiled, batch, 30, device="cuda")
            reference = helpers.trajectory(z, eager, batch, 30, device="cuda")
            assert _decisions(compiled) == _decisions(eager)
            assert helpers.rel_err(out, reference) < 1e-4
        state = speca_compile.stats(compiled)["fused_steps"][0]
        assert state["captured"] > 0 and state["capture_errors"] == []
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
