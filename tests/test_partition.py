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


# ---- issue 16: layouts diffusers' video and image DiTs use

from torch import nn  # noqa: E402

from speca_compile.passes.find_blocks import group_interleaved  # noqa: E402
from tests.reference_dit import TimestepEmbedder  # noqa: E402


class _Block(nn.Module):
    """A residual block over the last axis, conditioned on a per-sample embedding [rows, width]."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.mod = nn.Linear(width, width)

    def forward(self, h, c):
        return h + torch.tanh(self.mix(self.norm(h))) * self.mod(c)


class Alternating(nn.Module):
    """Latte's layout: spatial and temporal blocks alternate; the spatial ones run on
    ``[batch * frames, tokens, width]``, the temporal ones on ``[batch * tokens, frames, width]``."""

    def __init__(self, width=8, depth=2):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.inp = nn.Linear(width, width)
        self.spatial = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.temporal = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, hidden_states, timestep):
        b, f, n, w = hidden_states.shape
        c = self.t_embed(timestep)
        cs, ct = c.repeat_interleave(f, 0)[:, None], c.repeat_interleave(n, 0)[:, None]
        h = self.inp(hidden_states).reshape(b * f, n, w)
        for spatial, temporal in zip(self.spatial, self.temporal):
            h = spatial(h, cs)
            h = h.reshape(b, f, n, w).permute(0, 2, 1, 3).reshape(b * n, f, w)
            h = temporal(h, ct)
            h = h.reshape(b, n, f, w).permute(0, 2, 1, 3).reshape(b * f, n, w)
        return self.out(h.reshape(b, f, n, w))


class SequenceFirst(nn.Module):
    """ErnieImage's layout: the blocks run on ``[tokens, batch, width]``."""

    def __init__(self, width=8, depth=3):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, hidden_states, timestep):
        c = self.t_embed(timestep)[None]
        h = self.inp(hidden_states).transpose(0, 1).contiguous()
        for block in self.blocks:
            h = block(h, c)
        return self.out(h.transpose(0, 1))


class BreakBeforeBlocks(nn.Module):
    """Lumina2 / OmniGen: a graph break between the timestep embedding and the blocks, so the
    graph holding the blocks has no timestep input."""

    def __init__(self, width=8, depth=3):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.blocks = nn.ModuleList([_Block(width) for _ in range(depth)])

    def forward(self, hidden_states, timestep):
        temb = self.t_embed(timestep)[:, None]
        torch._dynamo.graph_break()
        h = hidden_states
        for block in self.blocks:
            h = block(h, temb)
        return h


def _speculative_run(model, x, times, options=None):
    compiled = torch.compile(model, backend="speca", options={**EAGER, **(options or {})})
    outs = []
    with torch.no_grad(), speca_compile.generation():
        for t in times:
            out = compiled(x, torch.full((x.shape[0],), t))
            outs.append(out)
            x = x - 0.05 * out
    return compiled, x


def _eager_run(model, x, times):
    with torch.no_grad():
        for t in times:
            x = x - 0.05 * model(x, torch.full((x.shape[0],), t))
    return x


def test_interleaved_stacks_group_into_units():
    a, b, c = "spatial", "temporal", "other"
    assert group_interleaved([(a, 0), (a, 1), (b, 0), (b, 1)]) == ([((a, 0),), ((a, 1),), ((b, 0),), ((b, 1),)], ())
    assert group_interleaved([(a, 0), (b, 0), (a, 1), (b, 1)]) == ([((a, 0), (b, 0)), ((a, 1), (b, 1))], (a, b))
    # ConsisID: a face cross-attention after every second block, then a separate stack
    groups, interleaved = group_interleaved([(a, 0), (b, 0), (a, 1), (a, 2), (b, 1), (a, 3), (c, 0), (c, 1)])
    assert groups == [((a, 0), (b, 0)), ((a, 1),), ((a, 2), (b, 1)), ((a, 3),), ((c, 0),), ((c, 1),)]
    assert interleaved == (a, b)


def test_alternating_stacks_speculate_with_the_batch_folded():
    """Latte: the unit is one spatial + one temporal block; the state at a cut is
    ``[batch * tokens, frames, width]`` and crosses it as ``[batch, tokens, frames, width]``."""
    torch.manual_seed(0)
    model = Alternating().eval()
    x = torch.randn(2, 3, 5, 8)
    times = [900.0 - 75 * k for k in range(12)]
    eager = _eager_run(model, x, times)
    full = torch.compile(model, backend="speca", options={**EAGER, "speculate": False})
    assert helpers.rel_err(_eager_run(full, x, times), eager) < 1e-5
    compiled, out = _speculative_run(model, x, times)
    (runner,) = runners_for(compiled)
    program = runner.program
    assert program.plan.units == ("spatial.0+temporal.0", "spatial.1+temporal.1")
    assert program.plan.stacks == (("spatial+temporal", 2),)
    assert program.reason is None
    # cut 1: [batch, frames, tokens, width] (the reshape back after temporal.0 is in unit 0);
    # cut 2: [batch, tokens, frames, width] (after temporal.1: the reshape back is epilogue)
    assert [[program.shapes[n] for n in names] for names in program.cuts[1:]] == [[(2, 3, 5, 8)], [(2, 5, 3, 8)]]
    stats = speca_compile.stats(compiled)
    assert stats["trajectories"][-1]["speculative"] > 0
    assert torch.isfinite(out).all()


def test_sequence_first_state_crosses_cuts_batch_first():
    """ErnieImage: the blocks run on ``[tokens, batch, width]``; the batch is the latent's lead."""
    torch.manual_seed(0)
    model = SequenceFirst().eval()
    x = torch.randn(2, 6, 8)                 # 6 tokens: the state's lead is not the batch
    times = [900.0 - 75 * k for k in range(12)]
    full = torch.compile(model, backend="speca", options={**EAGER, "speculate": False})
    assert helpers.rel_err(_eager_run(full, x, times), _eager_run(model, x, times)) < 1e-5
    compiled, _ = _speculative_run(model, x, times)
    (runner,) = runners_for(compiled)
    program = runner.program
    assert program.batch_size == 2 and program.reason is None
    assert all(program.shapes[n] == (2, 6, 8) for names in program.cuts for n in names)
    assert speca_compile.stats(compiled)["trajectories"][-1]["speculative"] > 0


def test_graph_after_a_break_takes_the_timestep_of_the_graph_before():
    torch.manual_seed(0)
    model = BreakBeforeBlocks().eval()
    x = torch.randn(2, 4, 8)
    times = [900.0 - 75 * k for k in range(12)]
    eager = _eager_run(model, x, times)
    compiled, out = _speculative_run(model, x, times)
    stats = speca_compile.stats(compiled)
    assert stats["graphs"] == 2
    with_blocks = [g for g in stats["per_graph"] if g["blocks"]]
    assert len(with_blocks) == 1 and with_blocks[0]["speculation"] is True
    assert any("resumes the forward after a graph break" in n for n in with_blocks[0]["notes"])
    assert sum(t["speculative"] for t in stats["trajectories"]) > 0
    assert stats["unplaced_calls"]["count"] == 0
    assert helpers.rel_err(out, eager) < 0.25


def test_per_frame_timesteps_and_qualified_timestep_names():
    """AnyFlow passes one timestep per frame ``[batch, frames]``: a sample follows its noisiest
    frame; Cosmos3 names its input ``vision_timesteps``."""
    class PerFrame(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = BreakBeforeBlocks()

        def forward(self, hidden_states, vision_timesteps):
            return self.inner.blocks[0](hidden_states, self.inner.t_embed(vision_timesteps.amax(1))[:, None])

    from speca_compile.passes.timestep_input import find_timestep_input
    from speca_compile.options import Options
    from speca_compile.runtime.call_inputs import CallInputs

    model = PerFrame().eval()
    compiled = torch.compile(model, backend="speca", options=EAGER)
    x, t = torch.randn(2, 4, 8), torch.tensor([[500.0, 0.0, 0.0], [400.0, 300.0, 0.0]])
    with torch.no_grad():
        compiled(x, t)
    (runner,) = runners_for(compiled)
    index, problem = find_timestep_input(runner.program, Options.parse({}))
    assert problem is None and runner.program.placeholders[index].endswith("vision_timesteps_")
    inputs = CallInputs(runner.program, (0, index), index)
    args = [x if i != index else t for i in range(len(runner.program.placeholders))]
    assert inputs.timesteps(args) == ([500.0, 400.0], None)
