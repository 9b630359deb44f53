"""The passes: block stacks found, nodes classified by dataflow, cut state named."""

import pytest
import torch

import speca_compile
from speca_compile.passes.find_blocks import EPILOGUE, PROLOGUE
from speca_compile.passes.module_paths import block_of, normalize_path
from speca_compile.registry import runners_for
from tests import helpers
from tests.reference_dit import NoBlocks

# the passes' tests run the segments eagerly: no lowering is their subject (tests/test_*_lowering.py are
# about those); test_model_without_blocks_runs_unchanged_and_says_why keeps the default lowering
EAGER = {"lowering": "eager"}


def compiled_program(name, batch=2, options=None):
    z = helpers.build(name)
    compiled = torch.compile(z.model, backend="speca", options={**EAGER, **(options or {})})
    extra = z.make_inputs(batch, 0)
    with torch.no_grad():
        z.call(compiled, helpers.noise_for(z, batch, 0), 0.5 if z.kind == "flow" else 500.0, extra)
    (runner,) = runners_for(compiled)
    return runner, compiled


@pytest.mark.parametrize("raw,expected", [
    ("L['self'].__dict__['_modules']['transformer_blocks'].0.norm1", "transformer_blocks.0.norm1"),
    ("L['self'].blocks[3].attn", "blocks.3.attn"),
    ("L['self']._modules['single_transformer_blocks']._modules['1']", "single_transformer_blocks.1"),
])
def test_module_paths_are_normalised(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("name,stacks,streams_in,streams_out", [
    ("dit", [("transformer_blocks", 3)], 1, 1),
    ("pixart", [("transformer_blocks", 3)], 1, 1),
    ("sd3", [("transformer_blocks", 3)], 2, 1),  # last SD3 block drops the text stream
    ("flux", [("transformer_blocks", 2), ("single_transformer_blocks", 2)], 2, 1),
    ("reference_dit", [("blocks", 4)], 1, 1),
])
def test_stacks_and_streams(name, stacks, streams_in, streams_out):
    runner, _ = compiled_program(name)
    program = runner.program
    assert list(program.plan.stacks) == stacks
    assert program.num_units == sum(count for _, count in stacks)
    assert len(program.cuts[0]) == streams_in
    assert len(program.cuts[-1]) == streams_out
    assert program.reason is None and runner.speculating
    for names in program.cuts[1:]:
        for value in names:
            assert program.shapes[value][0] == 2  # every state is batch-first


def test_dit_final_conditioning_through_block0_goes_to_the_epilogue():
    """diffusers' DiT calls transformer_blocks[0].norm1.emb after the loop: by path it
    is block 0, by dataflow it is epilogue."""
    runner, compiled = compiled_program("dit")
    gm_nodes = {n.name: n for seg in runner.program.segments for n in seg.module.graph.nodes}
    plan = runner.program.plan
    block0_in_epilogue = [name for name, owner in plan.assignment.items()
                          if owner == EPILOGUE and (block_of(gm_nodes[name]) or ("", -1))[:2] == ("transformer_blocks", 0)]
    assert block0_in_epilogue, "the final conditioning should be classified as epilogue"
    block0_ops = sum(1 for owner in plan.assignment.values() if owner == 0)
    block1_ops = sum(1 for owner in plan.assignment.values() if owner == 1)
    assert block0_ops == block1_ops  # block 0 holds exactly what every block holds


def test_original_dit_timestep_mlp_is_not_a_stack():
    """``t_embedder.mlp`` is a Sequential(Linear, SiLU, Linear): indexed, but not blocks."""
    runner, _ = compiled_program("reference_dit")
    assert [s for s, _ in runner.program.plan.stacks] == ["blocks"]
    owners = runner.program.plan.assignment
    assert sum(1 for o in owners.values() if o == PROLOGUE) > 0


def test_model_without_blocks_runs_unchanged_and_says_why():
    model = NoBlocks().eval()
    compiled = torch.compile(model, backend="speca")
    x, t = torch.randn(3, 8), torch.tensor([0.5, 0.4, 0.3])
    with torch.no_grad():
        out, ref = compiled(x, t), model(x, t)
    assert float((out - ref).norm() / ref.norm()) < 1e-5       # one ONNX Runtime segment (lowering='auto')
    stats = speca_compile.stats(compiled)
    assert stats["graphs"] == 1 and stats["speculation"] is False
    assert "no ModuleList" in stats["reason"]


def test_timestep_input_option_names_an_unusual_argument():
    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from tests.reference_dit import PolyDiT
            self.inner = PolyDiT()

        def forward(self, x, noise_level_value):
            return self.inner(x, noise_level_value)

    model = Renamed().eval()
    x, t = torch.randn(2, 4, 8), torch.tensor([0.5, 0.5])
    plain = torch.compile(model, backend="speca", options=EAGER)
    with torch.no_grad():
        plain(x, t)
    assert "no timestep input found" in speca_compile.stats(plain)["reason"]
    torch._dynamo.reset()
    named = torch.compile(model, backend="speca", options={**EAGER, "timestep_input": "noise_level_value"})
    with torch.no_grad():
        named(x, t)
    assert speca_compile.stats(named)["per_graph"][-1]["speculation"] is True


def test_describe_lists_segments_and_cuts():
    runner, _ = compiled_program("flux")
    text = runner.program.describe()
    assert "transformer_blocks x2, single_transformer_blocks x2" in text
    assert "stream in" in text and "cut 4" in text and "speculation: possible" in text



@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_fused_stack_gives_the_cut_state_the_blocks_give(name):
    """passes.fuse_stack: one segment for the full path, giving the state at the cuts asked for;
    a speculative trajectory through it equals one through the blocks run one by one."""
    import dataclasses

    from speca_compile.passes import fuse_stack

    runner, compiled = compiled_program(name, options={"lowering": "eager"})
    program = runner.program
    last = program.num_units
    cache_cuts = [c for c in (runner.verify_unit, runner.verify_unit + 1, last) if c > 0]
    assert set(program.stack.outputs) == {n for c in cache_cuts for n in program.cuts[c]}
    assert [s.name for s in program.full_path] == ["prologue", "block_stack", "epilogue"]
    fused = fuse_stack(program, [0, 1, 2]).stack      # cut 0 is an input, never an output
    assert fused.outputs == tuple(dict.fromkeys(program.cuts[1] + program.cuts[2] + program.cuts[last]))
    assert fuse_stack(dataclasses.replace(program, cuts=()), [1]).stack is program.stack  # no blocks

    z = helpers.build(name)
    fused_out = helpers.trajectory(z, compiled, 2, 30, seed=3)
    fused_decisions = speca_compile.stats(compiled)["trajectories"][-1]["decisions"]
    runner.program = dataclasses.replace(program, stack=None)   # full steps block by block
    runner.reset()
    out = helpers.trajectory(z, compiled, 2, 30, seed=3)
    assert speca_compile.stats(compiled)["trajectories"][-1]["decisions"] == fused_decisions
    summary = speca_compile.stats(compiled)["trajectories"][-1]
    assert 0 < summary["full"] < summary["steps"] and summary["speculative"] > 0
    assert helpers.rel_err(out, fused_out) < 1e-6
