"""The ``speca`` command: ``inspect`` what the passes find, ``bench`` speed and quality."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import torch

from speca_compile import zoo

QUICK = {"steps": 20, "batch": 1, "repeats": 1, "taus": (0.1,)}
LOWERINGS = ("eager", "onnxruntime")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="speca", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="print the blocks, segments and cut tensors found in a model")
    inspect.add_argument("model", choices=sorted(zoo.BUILDERS), help="a built-in tiny model")

    bench = sub.add_parser("bench", help="eager vs compiled vs speculative: speed and quality")
    bench.add_argument("--models", default="dit,flux",
                       help=f"comma-separated, from: {', '.join(sorted(zoo.BUILDERS))}")
    bench.add_argument("--steps", type=int, default=50)
    bench.add_argument("--batch", type=int, default=2)
    bench.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is kept")
    bench.add_argument("--tau0", default="0.05,0.1,0.2", help="comma-separated thresholds, one row each")
    bench.add_argument("--lowerings", default=",".join(LOWERINGS),
                       help=f"comma-separated, rows for each, from: {', '.join(LOWERINGS)}")
    bench.add_argument("--quick", action="store_true",
                       help="20 steps, batch 1, one round, tau0=0.1: a smoke run in well under 2 minutes")
    bench.add_argument("--out", default="bench_results", help="directory for bench.json and bench.md")

    args = parser.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.model)
    return _bench(args, argv if argv is not None else sys.argv[1:])


def _inspect(name: str) -> int:
    import speca_compile

    z = zoo.build(name)
    compiled = torch.compile(z.model, backend="speca")
    with torch.no_grad():
        z.call(compiled, torch.zeros(z.latent_shape(2)), 500.0 if z.kind == "ddim" else 0.5, z.make_inputs(2, 0))
    for runner in speca_compile.registry.runners_for(compiled):
        print(runner.program.describe())
        for note in runner.notes:
            print(f"  note: {note}")
        if runner.reason:
            print(f"  runtime: not speculating ({runner.reason})")
    return 0


def _parse_models(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in zoo.BUILDERS]
    if unknown or not names:
        raise SystemExit(f"speca bench: unknown model(s) {unknown or text!r}; valid: {', '.join(sorted(zoo.BUILDERS))}")
    return names


def _parse_taus(text: str) -> tuple:
    try:
        taus = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"speca bench: --tau0 takes comma-separated numbers, got {text!r}") from None
    if not taus or any(t < 0 for t in taus):
        raise SystemExit(f"speca bench: --tau0 needs numbers >= 0, got {text!r}")
    return taus


def _bench(args, argv: List[str]) -> int:
    from tqdm import tqdm

    from speca_compile.bench import report
    from speca_compile.bench.suite import BenchConfig, run_suite

    lowerings = tuple(v.strip() for v in args.lowerings.split(",") if v.strip())
    if not lowerings or any(v not in LOWERINGS for v in lowerings):
        raise SystemExit(f"speca bench: --lowerings got {args.lowerings!r}; valid: {', '.join(LOWERINGS)}")
    config = BenchConfig(models=_parse_models(args.models), steps=args.steps, batch=args.batch,
                         repeats=args.repeats, taus=_parse_taus(args.tau0), lowerings=lowerings)
    if args.quick:
        config = BenchConfig(models=config.models, lowerings=lowerings, **QUICK)
    for field in ("steps", "batch", "repeats"):
        if getattr(config, field) < 1:
            raise SystemExit(f"speca bench: --{field} must be >= 1")
    methods = 1 + len(config.lowerings) * (1 + len(config.taus))
    total = len(config.models) * methods * (1 + config.repeats)
    with tqdm(total=total, desc="speca bench", unit="run") as bar:
        def tick(label):
            bar.set_postfix_str(label[:40])
            bar.update(1)
        rows = run_suite(config, tick)
    command = "speca " + " ".join(shlex.quote(a) for a in argv)
    paths = report.write(rows, config, command, Path(args.out))
    print(report.markdown(rows))
    print(f"\nwrote {paths['json']} and {paths['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
