"""Sample digits from a trained reference model, full compute vs speca, and save them side by side.

    python examples/sample_digits.py [dit_digits|flux_digits] [--tau0 0.1] [--out digits.png]

Prints the full-step count, the PSNR against full compute and the judge's
accuracy, and writes a PNG: top row full compute, bottom row speca, one
column per digit (0-9), each from its own seed.
"""

import argparse
import time

import torch

import speca_compile
from speca_compile import sampling
from speca_compile.bench.quality import image_psnr
from speca_compile.reference import judge, store
from speca_compile.reference.digits import to_unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="dit_digits", choices=store.NAMES)
    parser.add_argument("--tau0", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="digits.png")
    args = parser.parse_args()

    ref = store.load(args.model)
    extra = ref.make_inputs(10, 1)          # ten samples: every digit once, in a seeded order
    noise = torch.randn(ref.latent_shape(10), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(ref.model, backend="speca", dynamic=True, options={"tau0": args.tau0})

    images, seconds = {}, {}
    for name, model in (("full compute", ref.model), ("speca", compiled)):
        start = time.perf_counter()
        with torch.no_grad():
            out = sampling.denoise(lambda x, t: ref.call(model, x, t, extra), noise, args.steps, ref.kind)
        seconds[name] = time.perf_counter() - start
        images[name] = ref.decode(out)

    traj = speca_compile.stats(compiled)["trajectories"][-1]
    unit = {k: to_unit(v) for k, v in images.items()}
    j = store.load_judge()
    print(f"full sample-steps: {traj['full']} of {traj['steps'] * traj['batch_size']}")
    print(f"PSNR vs full compute: {image_psnr(unit['speca'], unit['full compute']):.1f} dB")
    for name in images:
        print(f"judge accuracy ({name}): {judge.accuracy(j, images[name], extra['labels']):.0%}")
    print(f"seconds (full compute, speca incl. compile): {seconds['full compute']:.1f}, {seconds['speca']:.1f}")
    order = extra["labels"].argsort()       # columns 0 to 9
    save_grid({k: v[order] for k, v in unit.items()}, args.out)
    print(f"wrote {args.out}")


def save_grid(unit, path) -> None:
    """Rows of ten digit images (values in [0, 1]), one row per entry of ``unit``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for row, (name, imgs) in enumerate(unit.items()):
        for col in range(10):
            ax = axes[row][col]
            ax.imshow(imgs[col, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
