"""Issue 4, acceptance 2: batch sizes 1, 2, 5 and two resolutions through one set of ONNX files.

A batch of 1 (and a size Dynamo had specialised) makes Dynamo compile a new
graph; its segments reuse the shape-general ONNX files exported for the first
graph (runtime/engine_reuse.py) after checking them against eager on the
call's inputs.  Exports are counted as the ONNX files in a fresh cache.
"""

import glob
from pathlib import Path

import torch

import speca_compile
from speca_compile.runtime.engine_reuse import agrees_with_eager
from tests import helpers


def _flux_call(z, batch, side):
    """Tiny Flux on a side x side latent grid (5x5 first: 16 tokens would tie with the 16 channels)."""
    extra = z.make_inputs(batch, 1)
    extra["img_ids"] = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(side)),
                                                   torch.arange(float(side)), indexing="ij"), -1).reshape(-1, 3)
    return extra, torch.randn(batch, side * side, 16, generator=torch.Generator().manual_seed(batch + side))


def _dit_call(z, batch, side):
    return z.make_inputs(batch, 1), torch.randn(batch, 4, side, side, generator=torch.Generator().manual_seed(batch))


def _run(z, compiled, make, batch, side):
    extra, noise = make(z, batch, side)
    t = 500.0 if z.kind == "ddim" else 0.5
    with torch.no_grad():
        out, ref = z.call(compiled, noise, t, extra), z.call(z.model, noise, t, extra)
    assert helpers.rel_err(out, ref) < 1e-4
    runners = speca_compile.registry.runners_for(compiled)
    return len(runners), _events(runners[-1])


def _events(runner):
    """Segment name -> cache event, for the engines built (a full step runs prologue, block_stack,
    epilogue; the per-block engines are built when the speculative path first runs one)."""
    return {e["segment"]: e["cache"] for e in runner.stats()["engines"] if e.get("builds")}


def _built(runner):
    return [e for e in runner.stats()["engines"] if e.get("builds")]


def _exports(cache_dir):
    return len(glob.glob(f"{cache_dir}/*.onnx"))


def test_flux_batches_and_resolutions_share_one_set_of_onnx_files(tmp_path):
    z = helpers.build("flux")
    compiled = torch.compile(z.model, backend="speca", dynamic=True,
                             options={"lowering": "onnxruntime", "cache_dir": str(tmp_path), "speculate": False})
    graphs, events = _run(z, compiled, _flux_call, 2, 5)
    segments = len(events)
    assert list(events) == ["prologue", "epilogue", "block_stack"]
    assert graphs == 1 and set(events.values()) == {"miss"} and _exports(tmp_path) == segments
    assert _run(z, compiled, _flux_call, 5, 5)[0] == 1
    graphs, events = _run(z, compiled, _flux_call, 1, 5)          # a new graph (size 1 is specialised) ...
    assert graphs == 2 and set(events.values()) == {"reused"}     # ... on the same files
    # the reuse check is the engines' first-call check: recorded once, not compared again
    assert {e["checked_by"] for e in _built(speca_compile.registry.runners_for(compiled)[-1])} == {"reuse"}
    for batch in (2, 1):                                          # a second resolution
        _run(z, compiled, _flux_call, batch, 6)
    assert len(speca_compile.registry.runners_for(compiled)) == 2
    assert _exports(tmp_path) == segments                         # 5 calls, 2 graphs, one export each

    # a file that disagrees with eager is never reused: point every family at the epilogue's file,
    # and compile afresh with a batch of 1 first (its graph has no file of its own in the cache)
    epilogue = speca_compile.registry.runners_for(compiled)[0].engines["epilogue"].info["file"]
    for pointer in tmp_path.glob("*.family"):
        pointer.write_text(Path(epilogue).stem + "\n")
    torch._dynamo.reset()
    fresh = torch.compile(z.model, backend="speca", dynamic=True,
                          options={"lowering": "onnxruntime", "cache_dir": str(tmp_path), "speculate": False})
    _, events = _run(z, fresh, _flux_call, 1, 5)                  # outputs still match eager (asserted)
    rejected = [e["segment"] for e in speca_compile.registry.runners_for(fresh)[0].stats()["engines"]
                if e.get("reuse_rejected")]
    assert events == {"prologue": "miss", "epilogue": "reused", "block_stack": "miss"}
    assert rejected == ["prologue", "block_stack"]


def test_dit_batch_one_reuses_all_and_a_new_resolution_reuses_the_blocks(tmp_path):
    """DiT's patch embedding computes its position table for the resolution in Python, so Dynamo
    specialises the resolution: the prologue and epilogue are exported again, the block stack is not."""
    z = helpers.build("dit")
    compiled = torch.compile(z.model, backend="speca", dynamic=True,
                             options={"lowering": "onnxruntime", "cache_dir": str(tmp_path), "speculate": False})
    _, events = _run(z, compiled, _dit_call, 2, 8)
    segments = len(events)
    _run(z, compiled, _dit_call, 5, 8)
    assert set(_run(z, compiled, _dit_call, 1, 8)[1].values()) == {"reused"}
    assert _exports(tmp_path) == segments
    _, events = _run(z, compiled, _dit_call, 2, 12)
    assert events == {"prologue": "miss", "epilogue": "miss", "block_stack": "reused"}
    assert _exports(tmp_path) == segments + 2


def test_agreement_check_compares_every_tensor_output():
    class Two(torch.nn.Module):
        def forward(self, x):
            return (x * 2, x + 1)

    from speca_compile.runtime.segment_io import SegmentIO

    io = SegmentIO("s", (), (0, 1), (), None)
    x = torch.randn(3, 4)
    assert agrees_with_eager(Two(), [x], io, [x * 2, x + 1])
    assert not agrees_with_eager(Two(), [x], io, [x * 2, x + 1.01])
    assert not agrees_with_eager(Two(), [x], io, [x * 2, (x + 1)[:2]])
    verdict = agrees_with_eager(Two(), [x], io, [x * 2, x + 1.001], bound=1e-2)   # the engine's bound
    assert verdict.passed and 0 < verdict.error < 1e-2 and verdict.source == "reuse"
