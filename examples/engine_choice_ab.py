"""What the per-segment engine choice buys: lowerings of one model side by side, one process.

    python examples/engine_choice_ab.py flux_digits --images 25 --rounds 5 --tau0 0.3
    python examples/engine_choice_ab.py dit_digits --images 25 --rounds 5 --tau0 0.4
    python examples/engine_choice_ab.py dit_digits --rounds 3 --tau0 0 --lowerings onnxruntime,auto

Malloc pinned; the plain model (eager) and one speca compile per lowering (``eager``,
``onnxruntime``: ONNX Runtime on every segment, ``auto``: the default, each segment on the faster
of ONNX Runtime and eager, runtime/engine_choice.py), 50-step trajectories interleaved round by
round, median.  The compiles share one engine cache (``--cache``, default a temporary folder), so
ONNX export runs once and ``auto`` measures its choices there.  Prints seconds per trajectory,
the speedup over eager, each row's relative L2 to eager's images (the lowerings must agree), and
what ``auto`` chose per segment with its trial times.  ``--tau0 0``: the full path.
"""

from __future__ import annotations

import argparse
import functools
import tempfile

import torch

import speca_compile
from speca_compile.bench.allocator import pin_malloc_thresholds
from speca_compile.bench.timing import interleaved_medians
from speca_compile.reference import store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=store.NAMES)
    parser.add_argument("--images", type=int, default=25)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tau0", type=float, default=0.3, help="0: the full path (speculate=False)")
    parser.add_argument("--lowerings", default="eager,onnxruntime,auto")
    parser.add_argument("--cache", default=None, help="engine cache folder (default: a temporary one)")
    args = parser.parse_args()
    pin_malloc_thresholds()
    torch._dynamo.config.recompile_limit = 64   # one module compiled once per lowering
    z = store.load(args.model)
    cache = args.cache or tempfile.mkdtemp(prefix="speca_engine_choice_")
    options = {"tau0": args.tau0} if args.tau0 > 0 else {"speculate": False}
    models = {"model (eager)": z.model}
    for lowering in args.lowerings.split(","):
        models[lowering] = torch.compile(z.model, backend="speca", dynamic=True,
                                         options={**options, "lowering": lowering, "cache_dir": cache})
    outputs = {label: z.trajectory(m, args.images, args.steps) for label, m in models.items()}   # builds, untimed
    median = interleaved_medians(
        {label: functools.partial(z.trajectory, m, args.images, args.steps) for label, m in models.items()},
        args.rounds)
    eager = outputs["model (eager)"]
    print(f"{args.model}, {args.images} images x {args.steps} steps, tau0 {args.tau0}, "
          f"median of {args.rounds} interleaved rounds")
    print("| lowering | s | speedup vs eager | rel L2 vs eager |")
    print("|---|---|---|---|")
    for label in models:
        error = float((outputs[label] - eager).norm() / eager.norm())
        print(f"| {label} | {median[label]:.3f} | {median['model (eager)'] / median[label]:.2f}x | {error:.1e} |")
    if "auto" in models:
        for e in speca_compile.stats(models["auto"])["per_graph"][-1]["engines"]:
            print(f"auto {e['segment']}: {e.get('chosen', 'onnxruntime')} ({e.get('chosen_by', 'no choice')}) "
                  f"trials ms {e.get('trial_ms')}")


if __name__ == "__main__":
    main()
