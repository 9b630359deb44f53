"""Compile a diffusers DiT with the speca backend and see what speculation did.

    python examples/compile_a_dit.py

Uses a tiny randomly initialised ``DiTTransformer2DModel`` (no download), a
50-step DDIM trajectory, and compares against full compute of the same seed.
"""

import torch

import speca_compile
from speca_compile import sampling, zoo


def main() -> None:
    z = zoo.build("dit")
    extra, noise = z.make_inputs(2, 1), torch.randn(z.latent_shape(2), generator=torch.Generator().manual_seed(0))

    def sample(model):
        with torch.no_grad():
            return sampling.denoise(lambda x, t: z.call(model, x, t, extra), noise, 50, "ddim")

    full = sample(z.model)
    # No import is needed for the backend name; speca_compile is imported here for stats().
    compiled = torch.compile(z.model, backend="speca", options={"tau0": 0.1})
    fast = sample(compiled)

    summary = speca_compile.stats(compiled)["trajectories"][-1]
    print("blocks:", speca_compile.stats(compiled)["blocks"])
    print(f"full sample-steps: {summary['full']} of {summary['steps'] * summary['batch_size']}")
    print("decisions of sample 0:", "".join(step[0] for step in summary["decisions"]))
    print(f"relative L2 vs full compute: {float((fast - full).norm() / full.norm()):.2e}")


if __name__ == "__main__":
    main()
