"""lowering="tensorrt": needs TensorRT and a CUDA GPU; without them it fails at compile time, naming the extra."""

import importlib.util

import pytest
import torch

import speca_compile
from speca_compile.errors import MissingExtraError
from tests import helpers

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT and CUDA are present: the real build is tested below")
def test_missing_tensorrt_or_gpu_names_the_extra():
    z = helpers.build("dit")
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "tensorrt"})
    # Dynamo wraps backend errors (BackendCompilerFailed); ours is the inner exception
    with pytest.raises(Exception, match=r"speca-compile\[tensorrt\]|needs a CUDA GPU") as err:
        helpers.trajectory(z, compiled, 2, 1)
    assert isinstance(getattr(err.value, "inner_exception", err.value), MissingExtraError)


@pytest.mark.skipif(not HAVE_TENSORRT, reason="needs the tensorrt package and a CUDA GPU (not in this CI)")
@pytest.mark.parametrize("name", ["dit", "flux"])
def test_full_path_and_decisions_match_eager_on_gpu(name, tmp_path):
    z = helpers.build(name)
    z.model.cuda()
    extra = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in z.make_inputs(2, 1).items()}
    noise = helpers.noise_for(z, 2, 0).cuda()
    eager = helpers.trajectory(z, z.model, 2, 10, extra=extra, noise=noise)
    runs = {}
    for lowering in ("eager", "tensorrt"):
        compiled = torch.compile(z.model, backend="speca", dynamic=True,
                                 options={"lowering": lowering, "cache_dir": str(tmp_path)})
        runs[lowering] = (helpers.trajectory(z, compiled, 2, 10, extra=extra, noise=noise),
                          speca_compile.stats(compiled)["trajectories"][-1]["decisions"])
    full = torch.compile(z.model, backend="speca",
                         options={"lowering": "tensorrt", "speculate": False, "cache_dir": str(tmp_path)})
    assert helpers.rel_err(helpers.trajectory(z, full, 2, 10, extra=extra, noise=noise), eager) < 1e-3
    assert runs["tensorrt"][1] == runs["eager"][1]
