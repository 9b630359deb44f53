"""The verify block on a token subset (``verify_stride``, passes/token_subset.py): the subset
segment computes exactly the whole block's output at those tokens on every family we ship, on
fewer FLOPs; the runtime checks and decides with it (and says so in stats); a graph the rules
cannot cut still checks every token, with the reason."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import speca_compile
from speca_compile.errors import OptionsError
from speca_compile.options import Options
from speca_compile.passes.token_subset import token_subset_segment
from speca_compile.registry import runners_for
from speca_compile.runtime.token_check import checked_tokens, with_real_tokens
from tests.helpers import ALL_MODELS, build, noise_for, rel_err, trajectory
from tests.reference_dit import TimestepEmbedder
from tests.test_partition import _Block

EAGER = {"lowering": "eager"}


class _Recording:
    """An engine wrapper that keeps the inputs of its latest call (to replay a unit on them)."""

    def __init__(self, engine):
        self.engine, self.inputs = engine, None

    def run(self, inputs):
        self.inputs = list(inputs)
        return self.engine.run(inputs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def _units_and_state(name: str, batch: int = 3):
    """The compiled model's units and the state a real full step gave them (the stack's inputs)."""
    z = build(name)
    compiled = torch.compile(z.model, backend="speca", dynamic=True, options={**EAGER, "speculate": False})
    extra = z.make_inputs(batch, 1)
    with torch.no_grad():
        z.call(compiled, noise_for(z, batch, 0), 900.0, extra)
        runner = runners_for(compiled)[0]
        stack = runner.program.stack
        recording = runner.engines[stack.name] = _Recording(runner.engines[stack.name])
        z.call(compiled, noise_for(z, batch, 1), 700.0, extra)
    return runner.program, dict(zip(stack.inputs, recording.inputs))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_the_subset_segment_is_the_block_at_those_tokens(name):
    """Every unit of every family: the subset outputs equal the whole unit's outputs at tokens
    0::3 (short streams whole), bit for bit, and the subset costs fewer FLOPs."""
    program, env = _units_and_state(name)
    cut = 0
    with torch.no_grad():
        for unit in program.units:
            inputs = [env[n] for n in unit.inputs]
            with FlopCounterMode(display=False) as whole_flops:
                whole = unit.module(*inputs)
            whole = whole if isinstance(whole, (tuple, list)) else (whole,)
            segment, why = token_subset_segment(unit, 3)
            if segment is not None:
                cut += 1
                with FlopCounterMode(display=False) as subset_flops:
                    subset = segment.module(*inputs)
                subset = subset if isinstance(subset, (tuple, list)) else (subset,)
                strides = segment.module.meta["token_strides"]
                assert 3 in strides
                for got, want in zip(subset, checked_tokens(whole, strides)):
                    assert got.shape == want.shape
                    assert torch.equal(got, want), unit.name
                assert subset_flops.get_total_flops() < 0.7 * whole_flops.get_total_flops(), unit.name
            else:
                assert why
            env.update(zip(unit.outputs, whole))
    assert cut >= 1
    # the default verify block (the last) is cut on every family
    assert token_subset_segment(program.units[-1], 3)[0] is not None


def test_a_stride_of_one_builds_nothing():
    program, _ = _units_and_state("dit")
    assert token_subset_segment(program.units[-1], 1) == (None, "verify_stride is 1: every token is checked")


class _CumsumBlock(_Block):
    """test_partition's block, mixing tokens outside attention (a token-axis cumsum)."""

    def forward(self, h, c):
        return h + torch.tanh(self.mix(self.norm(h))).cumsum(1) * self.mod(c) * 0.1


class _Tokens(nn.Module):
    """Blocks the rules pass no demand through: the whole block runs and nothing is saved."""

    def __init__(self, width=8, depth=3):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList([_CumsumBlock(width) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, hidden_states, timestep):
        c = self.t_embed(timestep)[:, None]
        h = self.inp(hidden_states)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


def test_a_block_the_rules_cannot_cut_checks_every_token_and_says_why():
    model = _Tokens().eval()
    compiled = torch.compile(model, backend="speca", dynamic=True, options={**EAGER, "verify_stride": 3})
    with torch.no_grad():
        for t in (900.0, 800.0):
            compiled(torch.randn(2, 12, 8), torch.full((2,), t))
    stats = speca_compile.stats(compiled)
    graph = stats["per_graph"][0]
    assert graph["verify_tokens"] is None
    assert any(n.startswith("verify_stride=3: every token checked (") for n in graph["notes"]), graph["notes"]


@pytest.mark.parametrize("name", ["dit", "flux"])
def test_speculating_with_a_token_subset(name):
    """End to end: the check uses the subset (stats say so), the run is close to the
    every-token check of the same seed and to full compute, and it checks as often."""
    z = build(name)
    runs = {}
    for stride in (1, 3):
        compiled = torch.compile(z.model, backend="speca", dynamic=True,
                                 options={**EAGER, "verify_stride": stride, "tau0": 0.2})
        runs[stride] = (trajectory(z, compiled, 4, 20), speca_compile.stats(compiled))
    full = trajectory(z, z.model, 4, 20)
    (every, every_stats), (subset, subset_stats) = runs[1], runs[3]
    graph = subset_stats["per_graph"][0]
    assert graph["verify_tokens"] and 3 in graph["verify_tokens"]
    assert any("checks every 3-th token" in n for n in graph["notes"])
    assert every_stats["per_graph"][0]["verify_tokens"] is None
    checked = [sum(t["checked"] for t in s["trajectories"]) for s in (every_stats, subset_stats)]
    assert checked[0] > 0 and checked[1] > 0
    assert rel_err(subset, full) < 0.1 and rel_err(every, full) < 0.1


def test_the_real_tokens_replace_the_forecast_on_checked_rows_only():
    forecast = (torch.zeros(2, 6, 3), torch.zeros(2, 2, 3))
    real = (torch.ones(2, 2, 3), torch.ones(2, 2, 3))
    merged = with_real_tokens(forecast, real, (3, 1), rows=torch.tensor([True, False]))
    assert torch.equal(merged[0][0, ::3], torch.ones(2, 3)) and float(merged[0][0, 1::3].abs().sum()) == 0
    assert float(merged[0][1].abs().sum()) == 0
    assert torch.equal(merged[1][0], torch.ones(2, 3)) and float(merged[1][1].abs().sum()) == 0
    assert float(forecast[0].abs().sum()) == 0   # the forecast itself is left alone


@pytest.mark.parametrize("bad", [0, -2, 1.5, "3"])
def test_verify_stride_is_checked_by_name(bad):
    with pytest.raises(OptionsError, match="verify_stride"):
        Options.parse({"verify_stride": bad})


def test_onnx_files_of_sibling_strides_are_not_mixed_up(tmp_path):
    """Strides 3 and 4 make segments of the same calls with other slice steps: each gets its own
    ONNX file (the family key keeps slice steps) and its own verdict (verdicts name the segment's
    code), so the second runs right in a cache the first filled."""
    z = build("dit")
    full = trajectory(z, z.model, 2, 8)
    for stride in (3, 4):
        compiled = torch.compile(z.model, backend="speca", dynamic=True,
                                 options={"lowering": "onnxruntime", "cache_dir": str(tmp_path),
                                          "verify_stride": stride, "tau0": 0.2})
        out = trajectory(z, compiled, 2, 8)
        assert speca_compile.stats(compiled)["per_graph"][0]["verify_tokens"] == [stride]
        assert rel_err(out, full) < 0.1
