"""The CUDA paths: every lowering on GPU tensors checked against eager on the same GPU.

Skipped where PyTorch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda_paths.py``.  TF32 is switched off so that
fp32 results are comparable to 1e-4 (cuDNN convolutions use TF32 by default).
"""

import pytest
import torch

import speca_compile
from tests import helpers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def exact_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_cuda(name):
    z = helpers.build(name)
    z.model.to("cuda")
    return z


@pytest.mark.parametrize("lowering", ["eager", "inductor", "onnxruntime"])
@pytest.mark.parametrize("name", helpers.ALL_MODELS)
def test_full_path_matches_eager_on_cuda(name, lowering):
    z = on_cuda(name)
    eager = helpers.trajectory(z, z.model, 2, 6, device="cuda")
    compiled = torch.compile(z.model, backend="speca", options={"lowering": lowering, "speculate": False})
    out = helpers.trajectory(z, compiled, 2, 6, device="cuda")
    assert out.device.type == "cuda"
    assert helpers.rel_err(out, eager) < 1e-4
    assert speca_compile.stats(compiled)["trajectories"][-1]["full"] == 2 * 6


@pytest.mark.parametrize("name", ["dit", "flux"])
def test_speculative_decisions_on_cuda_equal_the_cpu_ones(name):
    """Same model, seeds and options: the GPU makes the CPU's accept/reject decisions, per lowering."""
    runs = {}
    for device, lowering in (("cpu", "eager"), ("cuda", "eager"), ("cuda", "inductor")):
        z = helpers.build(name)
        z.model.to(device)
        compiled = torch.compile(z.model, backend="speca", dynamic=True,
                                 options={"lowering": lowering, "tau0": 0.1})
        out = helpers.trajectory(z, compiled, 3, 20, device=device)
        runs[device, lowering] = (out.cpu(), speca_compile.stats(compiled)["trajectories"][-1]["decisions"])
    cpu_out, cpu_decisions = runs["cpu", "eager"]
    assert any("S" in d or "A" in d for d in cpu_decisions)
    for key in (("cuda", "eager"), ("cuda", "inductor")):
        assert runs[key][1] == cpu_decisions, key
        assert helpers.rel_err(runs[key][0], cpu_out) < 1e-4, key


def test_reference_model_on_cuda():
    from speca_compile.reference import store

    ref = store.load("dit_digits")
    ref.model.to("cuda")
    eager = helpers.trajectory(ref, ref.model, 4, 10, device="cuda")
    compiled = torch.compile(ref.model, backend="speca", options={"lowering": "inductor", "speculate": False})
    assert helpers.rel_err(helpers.trajectory(ref, compiled, 4, 10, device="cuda"), eager) < 1e-4
