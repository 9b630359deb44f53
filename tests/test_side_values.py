"""A mixed step runs one prologue and one epilogue over all rows: the side values the blocks
read are cut to each path's rows where the shape probe proved them per row, and the results
equal running each path's whole graph on its rows."""

import copy

import pytest
import torch
from torch import nn

import speca_compile
from speca_compile import backend
from speca_compile.registry import runners_for
from tests.reference_dit import TimestepEmbedder
from tests.test_partition import Alternating, _Block

EAGER = {"lowering": "eager"}
BATCH = 4


class SideValues(nn.Module):
    """Blocks that read a per-sample embedding [batch, width], a table every sample shares whose
    leading size equals the batch by construction ([4, width] at batch 4: only the probe can tell
    it is shared) and the batch size as a number."""

    def __init__(self, width=8, depth=4):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.table = nn.Parameter(torch.randn(BATCH, width))
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, hidden_states, timestep):
        b = hidden_states.shape[0]
        c = self.t_embed(timestep)[:, None]
        shared = torch.tanh(self.table * 2.0)          # [4, width]: rows of positions, not samples
        h = self.inp(hidden_states)
        for block in self.blocks:
            h = block(h, c) + shared.mean(0) * 0.01
            h = h.reshape(b, -1, h.shape[-1])
        return self.out(h + c)


def _run(compiled, x, times):
    outs = []
    with torch.no_grad(), speca_compile.generation():
        for t in times:
            # rows at different noise levels decide differently: mixed steps
            out = compiled(x, torch.tensor([t, t, t, t]))
            outs.append(out)
            x = x - 0.05 * out * torch.tensor([1.0, 3.0, 0.3, 2.0])[:, None, None]
    return torch.stack(outs), x


def _compiled(model, **options):
    return torch.compile(model, backend="speca", dynamic=True,
                         options={**EAGER, "tau0": 0.3, "warmup": 2, **options})


def test_side_values_are_classified_by_the_probe_not_by_their_leading_size():
    torch.manual_seed(0)
    model = SideValues().eval()
    x = torch.randn(BATCH, 6, 8)
    compiled = _compiled(model)
    _run(compiled, x, [900.0 - 70 * k for k in range(12)])
    (runner,) = runners_for(compiled)
    kinds = dict(runner.program.side_values)
    shapes = runner.program.shapes
    rows = [n for n, k in kinds.items() if k == "row"]
    shared = [n for n, k in kinds.items() if k == "shared" and n in shapes and len(shapes[n]) == 2]
    assert rows and all(shapes[n][0] == BATCH for n in rows)
    assert shared and all(shapes[n] == (BATCH, 8) for n in shared), (kinds, shapes)
    assert speca_compile.stats(compiled)["per_graph"][0]["mixed_steps"]["side_values"]["row"] == len(rows)


def test_a_mixed_step_with_shared_ends_equals_one_graph_per_path(monkeypatch):
    torch.manual_seed(0)
    model = SideValues().eval()
    x = torch.randn(BATCH, 6, 8)
    times = [900.0 - 70 * k for k in range(12)]
    shared = _compiled(model)
    outs, final = _run(shared, x, times)
    stats = speca_compile.stats(shared)     # before the reset below frees its graph
    # the same model compiled with its side values unknown
    monkeypatch.setattr(backend, "find_side_values", lambda *a: (None, "side values: not probed (test)"))
    torch._dynamo.reset()   # else Dynamo serves the copy from the first graph (it guards on no module)
    per_path = _compiled(copy.deepcopy(model))
    ref_outs, ref_final = _run(per_path, x, times)
    mixed = stats["mixed_steps"]
    assert mixed["shared_ends"] > 0 and mixed["per_path"] == 0, mixed
    assert speca_compile.stats(per_path)["mixed_steps"]["shared_ends"] == 0
    decisions = [t["decisions"] for t in stats["trajectories"]]
    assert decisions == [t["decisions"] for t in speca_compile.stats(per_path)["trajectories"]]
    assert any("C" in step or "A" in step for d in decisions for step in d), decisions
    assert torch.allclose(outs, ref_outs, rtol=1e-5, atol=1e-6), (outs - ref_outs).abs().max()
    assert torch.allclose(final, ref_final, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forecaster", ["hermite", "foca"])
def test_shared_ends_match_eager_on_the_full_path_and_stay_close_speculating(forecaster):
    torch.manual_seed(0)
    model = SideValues().eval()
    x = torch.randn(BATCH, 6, 8)
    times = [900.0 - 70 * k for k in range(12)]
    full_outs, _ = _run(_compiled(model, speculate=False), x, times)
    with torch.no_grad():
        eager = []
        y = x
        for t in times:
            out = model(y, torch.tensor([t] * 4))
            eager.append(out)
            y = y - 0.05 * out * torch.tensor([1.0, 3.0, 0.3, 2.0])[:, None, None]
    assert torch.allclose(full_outs, torch.stack(eager), rtol=1e-5, atol=1e-6)
    compiled = _compiled(model, forecaster=forecaster)
    outs, final = _run(compiled, x, times)
    assert speca_compile.stats(compiled)["mixed_steps"]["shared_ends"] > 0
    assert torch.isfinite(final).all()


class _FoldedBlock(_Block):
    def forward(self, h, c_per_token):
        return super().forward(h, c_per_token.reshape(h.shape))


class FoldedSide(nn.Module):
    """Blocks that read the embedding repeated per token, ``[batch * tokens, width]``: it grows
    with the batch, but not as one row per sample."""

    def __init__(self, width=8, depth=3):
        super().__init__()
        self.t_embed = TimestepEmbedder(width)
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList([_FoldedBlock(width) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, hidden_states, timestep):
        n = hidden_states.shape[1]
        c = self.t_embed(timestep).repeat_interleave(n, 0)
        h = self.inp(hidden_states)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


def test_a_side_value_folded_with_another_axis_leaves_mixed_steps_one_graph_per_path():
    """The probe cannot cut such a value to rows, so mixed steps run each path's whole graph,
    and ``stats`` says why."""
    torch.manual_seed(0)
    model = FoldedSide().eval()
    compiled = _compiled(model)
    _, final = _run(compiled, torch.randn(BATCH, 6, 8), [900.0 - 70 * k for k in range(12)])
    stats = speca_compile.stats(compiled)
    (runner,) = runners_for(compiled)
    assert stats["reason"] is None and runner.program.side_values is None
    assert stats["mixed_steps"]["shared_ends"] == 0 and stats["mixed_steps"]["per_path"] > 0
    assert any("side values:" in n and "neither" in n for n in stats["notes"]), stats["notes"]
    assert torch.isfinite(final).all()
