"""Issue 18: lowering="inductor" compiles each segment once, for every sub-batch size.

Per-sample decisions run the full and speculative paths on sub-batches of every
size from 1 to the batch.  Each segment is compiled once with a symbolic batch
(and symbolic token counts where the Dynamo graph has them), and that variant
serves them all; inputs it does not fit (another static size, another dtype)
compile a variant of their own, counted, and never run on the first.
"""

from __future__ import annotations

import collections

import pytest
import torch

import speca_compile
from speca_compile import registry
from speca_compile.passes.partition import Segment
from speca_compile.runtime.inductor_engine import InductorEngine
from tests import helpers

TAU0 = 0.1   # a threshold at which the samples of one batch decide differently (see _mixed)


def _decisions(compiled):
    return speca_compile.stats(compiled)["trajectories"][-1]["decisions"]


def _mixed(decisions):
    """Steps whose samples decided differently: the paths ran on sub-batches."""
    return [d for d in decisions if len(set(d)) > 1]


def _engines(compiled):
    (runner,) = registry.runners_for(compiled)   # one Dynamo graph serves every batch size
    return {name: engine for name, engine in runner.engines.items()}


def _builds(compiled):
    return {name: int(e.info.get("builds", 0)) for name, e in _engines(compiled).items()}


def _compiled_once(compiled):
    """Every segment that ran is compiled exactly once, but a prologue returning Python numbers
    (eager by design); returns the compiled segments' names."""
    names = []
    for name, engine in _engines(compiled).items():
        info = engine.info
        if info.get("runs") == "eager (returns non-tensor values)":
            assert info["builds"] == 0, (name, info)
        elif info["builds"]:
            assert info["builds"] == 1, (name, info)
            assert info["checked"] is True and info["checked_variants"] == 1, (name, info)
            assert info["shapes"].startswith("symbolic batch (unbacked): batch (any size)"), (name, info)
            names.append(name)
    return names


@pytest.fixture
def sub_batches(monkeypatch):
    """The leading sizes each Inductor segment ran on, by segment."""
    seen = collections.defaultdict(set)
    run = InductorEngine.run

    def recording(self, inputs):
        if isinstance(inputs[0], torch.Tensor) and inputs[0].dim() >= 1:
            seen[self.segment.name].add(int(inputs[0].shape[0]))
        return run(self, inputs)

    monkeypatch.setattr(InductorEngine, "run", recording)
    return seen


def test_each_segment_compiles_once_for_every_sub_batch_of_batches_2_3_and_5(sub_batches):
    """Segment by segment (``fuse_steps=False``; whole steps: tests/test_fused_step.py)."""
    z = helpers.build("dit")
    eager = torch.compile(z.model, backend="speca", dynamic=True, options={"lowering": "eager", "tau0": TAU0})
    compiled = torch.compile(z.model, backend="speca", dynamic=True,
                             options={"lowering": "inductor", "tau0": TAU0, "fuse_steps": False})
    builds = None
    for batch in (2, 3, 5):
        out = helpers.trajectory(z, compiled, batch, 50)
        decisions = _decisions(compiled)
        assert len(decisions) == 50 and all(len(d) == batch for d in decisions)
        assert _mixed(decisions), decisions
        # the inductor lowering decides as the eager one and computes the same numbers
        reference = helpers.trajectory(z, eager, batch, 50)
        assert decisions == _decisions(eager)
        assert helpers.rel_err(out, reference) < 1e-4
        if builds is None:
            builds = _builds(compiled)
        assert _builds(compiled) == builds, f"batch {batch} compiled again"
    names = _compiled_once(compiled)
    assert {"block_stack", "epilogue"} <= set(names) and any(n.startswith("block_") for n in names)
    # the sub-batches really were of many sizes, 1 included, each served by the one variant
    assert set(range(1, 6)) <= sub_batches["block_stack"], sub_batches
    # mixed steps run one epilogue over all rows (runner._mixed_step): it sees each whole batch
    assert {2, 3, 5} <= sub_batches["epilogue"], sub_batches
    assert speca_compile.stats(compiled)["mixed_steps"]["shared_ends"] > 0
    for name in names:
        assert _engines(compiled)[name].info["signatures"] >= len(sub_batches[name])


@pytest.mark.parametrize("name", ["dit_digits", "flux_digits"])
def test_the_trained_models_decide_and_compute_as_the_eager_lowering(name):
    """The Inductor lowering with whole steps as programs (tests/test_fused_step.py; the default
    on CUDA) on both trained reference models: the eager lowering's decisions, each program
    compiled once."""
    from speca_compile.reference import store

    z = store.load(name)   # its call applies classifier-free guidance: 2 rows per image
    eager = torch.compile(z.model, backend="speca", dynamic=True, options={"lowering": "eager", "tau0": TAU0})
    compiled = torch.compile(z.model, backend="speca", dynamic=True,
                             options={"lowering": "inductor", "tau0": TAU0, "fuse_steps": True})
    for batch in (2, 3):
        out = helpers.trajectory(z, compiled, batch, 20)
        decisions = _decisions(compiled)
        assert _mixed(decisions), decisions
        reference = helpers.trajectory(z, eager, batch, 20)
        assert decisions == _decisions(eager)
        assert helpers.rel_err(out, reference) < 1e-4
    speculating = [r for r in registry.runners_for(compiled) if r.fused is not None]
    assert speculating   # (Flux: more Dynamo graphs than the one of its blocks)
    for runner in speculating:
        programs = {segment.name: engine.info for segment, engine in runner.fused._programs.values()}
        assert set(programs) == {"full_step", "speculative_step", "speculative_step_checked"}
        assert all(info["builds"] == 1 and info["checked"] is True for info in programs.values()), programs


# ------------------------------------------------------------------ which inputs a variant serves
def _toy_segment():
    """A Dynamo graph under dynamic=True: x [batch, tokens, 8] (the 8 static), w [8, k], and the
    sizes batch, tokens and k as int inputs, as Dynamo lifts them."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(x, w):
        y = torch.nn.functional.gelu(x @ w).reshape(x.shape[0], -1)
        return (y * 0.5 + x.sum(-1).repeat_interleave(w.shape[1], dim=1),)

    x = torch.randn(2, 3, 8)
    torch._dynamo.mark_static(x, 2)
    torch.compile(f, backend=capture, dynamic=True)(x, torch.randn(8, 4))
    (gm,) = graphs
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tensors = {p.name: p.meta["example_value"] for p in placeholders
               if isinstance(p.meta["example_value"], torch.Tensor)}
    segment = Segment("toy", gm, tuple(p.name for p in placeholders), ("out",))

    def inputs(x, w):
        """The graph's inputs for x and w: each size placeholder bound from the tensor axis
        Dynamo knows it by."""
        real = dict(zip(tensors, (x, w)))
        sizes = {str(s): real[name].shape[axis] for name, fake in tensors.items()
                 for axis, s in enumerate(fake.shape) if isinstance(s, torch.SymInt)}
        return [real[p.name] if p.name in real else sizes[str(p.meta["example_value"])] for p in placeholders]

    return segment, inputs


def test_a_variant_serves_every_batch_and_token_count_but_not_another_static_size_or_dtype():
    segment, inputs = _toy_segment()
    engine = InductorEngine(segment)

    def run(x, w):
        args = inputs(x, w)
        out = engine.run(args)[0]
        expected = segment.module(*args)[0]
        assert out.dtype == expected.dtype and helpers.rel_err(out, expected) < 1e-5
        return engine.variant_key(args)

    first = run(torch.randn(2, 3, 8), torch.randn(8, 4))
    # batch 1 and 5, another token count, a transposed (non-contiguous) x: the same variant
    for x in (torch.randn(1, 3, 8), torch.randn(5, 3, 8), torch.randn(3, 7, 8),
              torch.randn(3, 8, 7).transpose(1, 2), torch.randn(1, 8, 7).transpose(1, 2)):
        assert run(x, torch.randn(8, 4)) == first
    assert engine.info["builds"] == 1 and engine.info["signatures"] == 6
    assert engine.info["shapes"] == "symbolic batch (unbacked): batch (any size), 2 other sizes"
    # a size the Dynamo graph fixed (8), or another dtype: the variant's guards refuse them, and
    # each compiles a variant of its own
    other_size = run(torch.randn(2, 3, 6), torch.randn(6, 4))
    other_dtype = run(torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64))
    assert len({first, other_size, other_dtype}) == 3 and engine.info["builds"] == 3
    assert run(torch.randn(4, 5, 8), torch.randn(8, 4)) == first     # and the first serves again
    assert engine.info["builds"] == 3


def test_a_symbolic_compile_that_fails_falls_back_and_says_why(monkeypatch):
    from speca_compile.runtime import inductor_engine

    fake = inductor_engine._Shapes.fake
    refused = {inductor_engine.UNBACKED}

    def failing(self, how):
        if how in refused:
            raise RuntimeError(f"no {how} today")
        return fake(self, how)

    monkeypatch.setattr(inductor_engine._Shapes, "fake", failing)
    segment, inputs = _toy_segment()

    def run(engine, batch):
        args = inputs(torch.randn(batch, 3, 8), torch.randn(8, 4))
        assert helpers.rel_err(engine.run(args)[0], segment.module(*args)[0]) < 1e-5

    # backed symbols: one variant for every batch of 2 or more, and batch 1 one of its own
    engine = InductorEngine(segment)
    for batch in (2, 3, 5):
        run(engine, batch)
    assert engine.info["builds"] == 1
    assert engine.info["shapes"] == ("symbolic (backed): batch (2 or more), 2 other sizes (symbolic batch "
                                     "(unbacked) failed: RuntimeError: no symbolic batch (unbacked) today)")
    run(engine, 1)
    assert engine.info["builds"] == 2
    # no symbolic compile at all: one variant per input signature, as before issue 18
    refused.add(inductor_engine.BACKED)
    engine = InductorEngine(segment)
    for batch in (2, 3, 2):
        run(engine, batch)
    assert engine.info["builds"] == 2 and engine.info["shapes"].startswith(
        "static (one variant per input signature) (symbolic batch (unbacked) failed: RuntimeError: no ")
