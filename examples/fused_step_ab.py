"""Wall clock of whole steps as one program vs segment by segment, on a trained reference model.

Issue 18: ``fuse_steps=True`` runs each step as one compiled program (the
default for Inductor on CUDA, where it is meant to pay); this measures it against the same lowering segment by
segment, ONNX Runtime and eager, in one process, interleaved rounds, median,
malloc pinned.  Every speca row uses the same options but the lowering (tau0
0.2, dynamic shapes) and reports its full sample-steps and its rel L2 to eager.

    python examples/fused_step_ab.py dit_digits --images 10 --steps 50 --rounds 5

(``--images`` unlike the latent's side: 8 images = 16 rows of a 16x16 latent are
traced as one size by Dynamo, and steps then run segment by segment.)
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

import speca_compile
from speca_compile.bench.allocator import pin_malloc_thresholds
from speca_compile.bench.timing import interleaved_medians
from speca_compile.reference import store

ROWS = [("inductor fused", {"lowering": "inductor", "fuse_steps": True}),
        ("inductor segments", {"lowering": "inductor", "fuse_steps": False}),
        ("onnxruntime", {"lowering": "onnxruntime"})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=store.NAMES)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pin_malloc_thresholds()
    torch._dynamo.config.recompile_limit = 64   # one module compiled with several option sets
    z = store.load(args.model)
    models = {"eager": z.model}
    for label, options in ROWS:
        models[label] = torch.compile(z.model, backend="speca", dynamic=True, options={"tau0": 0.2, **options})
    outputs = {}
    for label, model in models.items():   # compile, build and check each, untimed
        start = time.perf_counter()
        outputs[label] = z.trajectory(model, args.images, args.steps)
        print(f"{label}: first run {time.perf_counter() - start:.1f} s", flush=True)
    median = interleaved_medians(
        {label: functools.partial(z.trajectory, model, args.images, args.steps) for label, model in models.items()},
        args.rounds)
    print(f"\n{args.model}, {args.images} images x {args.steps} steps, median of {args.rounds} interleaved rounds")
    print("| row | s | speedup vs eager | full sample-steps | rel L2 vs eager | fused steps |")
    print("|---|---|---|---|---|---|")
    for label, model in models.items():
        error = float((outputs[label] - outputs["eager"]).norm() / outputs["eager"].norm())
        if label == "eager":
            print(f"| eager | {median[label]:.3f} | 1.00x | 100% | 0 | |")
            continue
        stats = speca_compile.stats(model)
        last = stats["last_call"]
        full = last["full"] / (last["full"] + last["speculative"])
        print(f"| speca {label} | {median[label]:.3f} | {median['eager'] / median[label]:.2f}x | "
              f"{full:.0%} | {error:.1e} | {stats['fused_steps']} |")


if __name__ == "__main__":
    main()
