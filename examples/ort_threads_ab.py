"""How ONNX Runtime's intra-op threads should wait: sleep, spin, or spin during a run only.

    python examples/ort_threads_ab.py flux_digits --images 25 --rounds 7 --tau0 0.3
    python examples/ort_threads_ab.py dit_digits --images 25 --rounds 7 --tau0 0.4
    python examples/ort_threads_ab.py flux_digits --images 25 --rounds 5 --tau0 0   # full path
    python examples/ort_threads_ab.py flux_digits --variants sleep,spin              # alone: see below

One process, malloc pinned: eager and one ``lowering="onnxruntime"`` model per threading
variant, their trajectories (50 steps) interleaved round by round, median.  Each variant is its
own compile (its own engine cache folder under ``--cache``, filled with a copy of the first
variant's exported files, so ONNX export runs once), and its sessions are made at its first call with ``onnxruntime_engine.SPIN_DURING_RUN`` set to the variant's session entries;
the product's choice is ``during run``.  Prints seconds per trajectory, the speedup over eager
and each variant's relative L2 to the first variant's output (threading must not change a number).

``spin`` (ONNX Runtime's default: workers keep spinning after a run) is not in the default set:
its workers go on spinning into whatever runs next, the other variants' rounds included, so it
is only comparable in a run of its own against ``sleep``.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile

import torch

from speca_compile.bench.allocator import pin_malloc_thresholds
from speca_compile.bench.timing import interleaved_medians
from speca_compile.reference import store
from speca_compile.runtime import onnxruntime_engine

VARIANTS = {
    "sleep": {"session.intra_op.allow_spinning": "0"},   # the lowering's former choice
    "spin": {"session.intra_op.allow_spinning": "1"},    # ONNX Runtime's default
    "during run": dict(onnxruntime_engine.SPIN_DURING_RUN),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=store.NAMES)
    parser.add_argument("--images", type=int, default=25)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tau0", type=float, default=0.3, help="0: the full path (speculate=False)")
    parser.add_argument("--variants", default="sleep,during run",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--cache", default=None, help="engine cache root (default: a temporary folder)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(VARIANTS)}")
    variants = {name: VARIANTS[name] for name in names}
    pin_malloc_thresholds()
    torch._dynamo.config.recompile_limit = 64   # one module compiled once per variant
    z = store.load(args.model)
    root = args.cache or tempfile.mkdtemp(prefix="speca_ort_threads_")
    options = {"lowering": "onnxruntime", "tau0": args.tau0 or 0.2, "speculate": args.tau0 > 0}
    models, folders = {"eager": z.model}, {}
    for label in variants:   # a cache folder per variant: each is its own compile and sessions
        folders[label] = f"{root}/{label.replace(' ', '_')}"
        models[label] = torch.compile(z.model, backend="speca", dynamic=True,
                                      options={**options, "cache_dir": folders[label]})
    outputs, first = {}, next(iter(variants))
    try:
        for label, model in models.items():   # builds each variant's sessions, untimed
            if label in variants:
                onnxruntime_engine.SPIN_DURING_RUN = variants[label]
                if label != first:   # the first variant's files: export once
                    shutil.copytree(folders[first], folders[label], dirs_exist_ok=True)
            outputs[label] = z.trajectory(model, args.images, args.steps)
    finally:
        onnxruntime_engine.SPIN_DURING_RUN = VARIANTS["during run"]
    median = interleaved_medians(
        {label: functools.partial(z.trajectory, model, args.images, args.steps) for label, model in models.items()},
        args.rounds)
    print(f"{args.model}, {args.images} images x {args.steps} steps, tau0 {args.tau0}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"| threads wait | s | speedup vs eager | rel L2 vs `{first}` |")
    print("|---|---|---|---|")
    reference = outputs[first]
    for label in models:
        error = float((outputs[label] - reference).norm() / reference.norm()) if label in variants else float("nan")
        shown = "n/a" if label == "eager" else f"{error:.1e}"
        print(f"| {label} | {median[label]:.3f} | {median['eager'] / median[label]:.2f}x | {shown} |")


if __name__ == "__main__":
    main()
