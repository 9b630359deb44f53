"""Run a bundle over a trajectory in a process that cannot import any model code.

    python tests/bundle_runner.py BUNDLE INPUTS.pt OUT.pt

INPUTS.pt holds the noise, the fixed call inputs, the sampler kind, steps and
guidance; classifier-free guidance is done here as the reference models do
(both halves in one batch).  Importing diffusers, transformers or the
reference-model code fails in this process, so the bundle must stand alone.
"""

import sys


class _Blocked:
    BLOCKED = ("diffusers", "transformers", "speca_compile.reference", "speca_compile.zoo", "tests")

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
            raise ImportError(f"{name} is blocked: a bundle must run without the model's code")
        return None


sys.meta_path.insert(0, _Blocked())

import torch  # noqa: E402

import speca_compile  # noqa: E402
from speca_compile import sampling  # noqa: E402


def main(bundle, inputs_file, out_file):
    data = torch.load(inputs_file, weights_only=True)
    model = speca_compile.load(bundle)
    fixed, guidance = data["fixed"], data["guidance"]

    def model_fn(x, t):
        both = torch.cat([x, x])
        out = model(both, timestep=torch.full((both.shape[0],), t), **fixed)[0]
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    out = sampling.denoise(model_fn, data["noise"], data["steps"], data["kind"])
    torch.save({"out": out, "decisions": model.stats()["trajectories"][-1]["decisions"]}, out_file)
    assert "diffusers" not in sys.modules


if __name__ == "__main__":
    main(*sys.argv[1:4])
