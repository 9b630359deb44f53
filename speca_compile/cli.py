"""The ``speca`` command: ``inspect`` what the passes find, ``bench`` speed and quality."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import torch

from speca_compile import schedulers, zoo
from speca_compile.options import Options
from speca_compile.bench.suite import REFERENCE

QUICK = {"steps": 20, "images": 10, "batch": 10, "repeats": 1, "taus": (Options.tau0,), "acceptances": ("budget",),
         "inductor": False, "peers": False}
from speca_compile.bench.methods import (BENCH_PRECISIONS, CPU_EXTRA_LOWERINGS, CPU_LOWERINGS, CUDA_EXTRA_LOWERINGS,
                                         CUDA_LOWERINGS)

LOWERINGS = CPU_LOWERINGS                      # the default rows on the CPU
EXTRA_LOWERINGS = CPU_EXTRA_LOWERINGS          # on request: compiles each segment once (cold compiles dominate short runs)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="speca", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="print the blocks, segments and cut tensors found in a model, "
                                              "or an engine bundle's manifest")
    inspect.add_argument("model", help=f"a built-in model ({', '.join(sorted(zoo.BUILDERS))}) or a bundle directory")

    export = sub.add_parser("export", help="write an engine bundle of a reference or built-in model")
    export.add_argument("model", help=f"{', '.join(REFERENCE)} or {', '.join(sorted(zoo.BUILDERS))}")
    export.add_argument("out", help="the bundle directory to write")
    export.add_argument("--batch", type=int, default=3,
                        help="example batch size (images); avoid sizes equal to other axes (Dynamo ties them)")
    export.add_argument("--tau0", type=_tau0_value, default=Options.tau0, help="a number, or 'auto'")
    export.add_argument("--verify-stride", type=int, default=Options.verify_stride,
                        help="check every k-th token of the verify block (verify_stride; 1: every token)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle")

    run = sub.add_parser("run", help="sample with a bundle (its example conditioning, fresh noise)")
    run.add_argument("bundle")
    run.add_argument("--steps", type=int, default=50)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default=None, help="save the final latents (torch .pt)")

    bench = sub.add_parser("bench", help="eager vs compiled vs speculative vs peers: speed, compute, quality")
    bench.add_argument("--models", default=",".join(REFERENCE),
                       help=f"comma-separated: trained {', '.join(REFERENCE)} or tiny random "
                            f"{', '.join(sorted(zoo.BUILDERS))}")
    bench.add_argument("--steps", type=int, default=50)
    bench.add_argument("--images", type=int, default=50, help="images per method (same seeds for all)")
    bench.add_argument("--batch", type=int, default=25, help="images per sampler call")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is kept")
    bench.add_argument("--tau0", default="",
                       help="comma-separated thresholds (numbers or 'auto'), one row each; default: each "
                            "policy's own list (budget: 0.1,0.2,0.3,0.4,auto; step: 0.05,0.1,0.2)")
    bench.add_argument("--acceptance", default="budget,step",
                       help="comma-separated speculation policies, rows for each: budget (the default: a run's "
                            "errors share the threshold), step (SpeCa's per-step rule with its former settings)")
    bench.add_argument("--lowerings", default=None,
                       help="comma-separated speca lowerings, rows for each.  CPU: from "
                            f"{', '.join(LOWERINGS + EXTRA_LOWERINGS)}, default {','.join(LOWERINGS)}.  "
                            f"--device cuda: from {', '.join(CUDA_LOWERINGS + CUDA_EXTRA_LOWERINGS)}, default "
                            f"{','.join(CUDA_LOWERINGS)} plus tensorrt where it is importable (onnxruntime "
                            "needs onnxruntime-gpu there)")
    bench.add_argument("--forecasters", default=Options.forecaster,
                       help="comma-separated, speca rows for each: taylor, hermite, foca")
    bench.add_argument("--orders", default=str(Options.order), help="comma-separated forecast orders, speca rows for each")
    bench.add_argument("--verify-strides", default="",
                       help="comma-separated token strides of the check (verify_stride), speca rows for each; "
                            "default: the default stride only")
    bench.add_argument("--max-speculative", default="",
                       help="comma-separated, speca rows for each: most forecast steps in a row "
                            "(default: each policy's own)")
    bench.add_argument("--schedulers", default="",
                       help="comma-separated diffusers schedulers, or 'all': every speca row's settings again, "
                            "sampled with each scheduler that fits the model (epsilon: "
                            f"{', '.join(schedulers.names_for('ddim'))}; flow: {', '.join(schedulers.names_for('flow'))}), "
                            "against eager with the same scheduler")
    bench.add_argument("--scheduler-steps", type=int, default=None,
                       help="inference steps of the scheduler rows (default: each scheduler's usual count)")
    bench.add_argument("--compile-modes", default=None,
                       help="comma-separated torch.compile modes, a row each ('torch.compile default', "
                            "'torch.compile mode=M'), the model compiled whole with Inductor; default: default on "
                            "the CPU, default,max-autotune-no-cudagraphs,reduce-overhead with --device cuda "
                            "(CUDA graphs apply to CUDA tensors only: on the CPU reduce-overhead compiles as default)")
    bench.add_argument("--no-inductor", action="store_true", help="leave out every torch.compile row")
    bench.add_argument("--precision", default="fp32", choices=BENCH_PRECISIONS,
                       help="fp32 (default), or bf16: eager, the torch.compile rows and the peers run the model "
                            "converted to bfloat16 (float inputs cast at each call), the speca rows pass "
                            "precision='bf16' to the backend (lowerings without bf16, onnxruntime and tensorrt, "
                            "are left out with the reason in the report); quality is against bf16 eager, and "
                            "each row's rel L2 against float32 eager is a column of its own")
    bench.add_argument("--no-peers", action="store_true",
                       help="leave out diffusers' caching hooks and cache-dit")
    bench.add_argument("--device", default="cpu",
                       help="where the models run: cpu, cuda or cuda:N (checked before anything runs)")
    bench.add_argument("--quick", action="store_true",
                       help="20 steps, 10 images, one round, tau0=0.1, no inductor or peers: a smoke run")
    bench.add_argument("--out", default="bench_results",
                       help="directory for bench.json, bench.md and pareto.png")

    tune = sub.add_parser("tune", help="sweep forecaster, order and tau0 briefly; print the Pareto front")
    tune.add_argument("model", help=f"{', '.join(REFERENCE)} or {', '.join(sorted(zoo.BUILDERS))}")
    tune.add_argument("--steps", type=int, default=50)
    tune.add_argument("--images", type=int, default=10)
    tune.add_argument("--out", default="tune_results", help="directory for the sweep's bench.json/md/png")

    from speca_compile.serve.loadtest import register as register_loadtest
    register_loadtest(sub)
    serve = sub.add_parser("serve", help="serve a bundle over HTTP on Ray Serve (extra: speca-compile[serve])")
    serve.add_argument("bundle")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--replicas", type=int, default=1, help="replicas, each with its own step loop")
    serve.add_argument("--max-batch", type=int, default=8, help="requests advanced per tick and replica")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting per replica; more get 503")
    serve.add_argument("--address", default=None,
                       help="join the Ray cluster at ADDR (e.g. auto, or ray://head:10001); default: a local instance")
    serve.add_argument("--no-speculate", action="store_true", help="full compute on every step")

    args = parser.parse_args(argv)
    if args.command == "loadtest":
        return args.func(args)
    if args.command == "serve":
        from speca_compile.serve.ray_app import serve_command
        return serve_command(args)
    if args.command == "tune":
        return _tune(args, argv if argv is not None else sys.argv[1:])
    if args.command == "inspect":
        return _inspect(args.model)
    if args.command == "export":
        from speca_compile.bundle.commands import export_command
        return export_command(args)
    if args.command == "run":
        from speca_compile.bundle.commands import run_command
        return run_command(args)
    return _bench(args, argv if argv is not None else sys.argv[1:])


def _inspect(name: str) -> int:
    import speca_compile

    if Path(name).is_dir():
        from speca_compile.bundle.commands import inspect_bundle
        print(inspect_bundle(name))
        return 0
    if name not in zoo.BUILDERS:
        raise SystemExit(f"speca inspect: {name!r} is neither a built-in model "
                         f"({', '.join(sorted(zoo.BUILDERS))}) nor a bundle directory")
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
    valid = list(REFERENCE) + sorted(zoo.BUILDERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise SystemExit(f"speca bench: unknown model(s) {unknown or text!r}; valid: {', '.join(valid)}")
    return names


def _parse_list(flag: str, text: str, cast, low, kind: str) -> tuple:
    """A comma-separated list of ``cast`` values, each >= ``low`` (``kind`` names them in errors)."""
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"speca bench: {flag} takes comma-separated {kind}, got {text!r}") from None
    if not values or any(v < low for v in values):
        raise SystemExit(f"speca bench: {flag} needs {kind} >= {low}, got {text!r}")
    return values


def _parse_schedulers(text: str, models: List[str]) -> tuple:
    """Scheduler names (``speca_compile.schedulers``); each must fit one of ``models``' kinds."""
    from speca_compile.bench.suite import model_kind

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if names == ("all",):
        names = schedulers.NAMES
    unknown = [n for n in names if n not in schedulers.NAMES]
    if unknown:
        raise SystemExit(f"speca bench: --schedulers got {text!r}; valid: all, {', '.join(schedulers.NAMES)}")
    if not names:     # no scheduler rows: the models' kinds are not needed (building dit_xl2 takes seconds)
        return names
    kinds = {model_kind(m) for m in models}
    unfit = [n for n in names if schedulers.SCHEDULERS[n][1] not in kinds]
    if unfit:
        raise SystemExit(f"speca bench: --schedulers {', '.join(unfit)}: none of --models "
                         f"({', '.join(models)}) is a model they drive; for those models: "
                         + ", ".join(n for k in sorted(kinds) for n in schedulers.names_for(k)))
    return names


def _parse_taus(text: str) -> tuple:
    """Thresholds: numbers >= 0 or "auto"; empty: each policy's own list."""
    if not text.strip():
        return ()
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    numbers = ",".join(v for v in values if v != "auto")
    parsed = iter(_parse_list("--tau0", numbers, float, 0, "numbers or 'auto'") if numbers else ())
    return tuple("auto" if v == "auto" else next(parsed) for v in values)


def _tau0_value(text: str):
    """``--tau0`` of ``speca export``: a number or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number or 'auto', got {text!r}") from None


def _parse_acceptances(text: str) -> tuple:
    from speca_compile.options import ACCEPTANCES

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or any(v not in ACCEPTANCES for v in values):
        raise SystemExit(f"speca bench: --acceptance got {text!r}; valid: {', '.join(ACCEPTANCES)}")
    return values


def _parse_ints(flag: str, text: str) -> tuple:
    return _parse_list(flag, text, int, 1, "integers")


def _parse_device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise SystemExit(f"speca bench: --device got {text!r}; valid: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"speca bench: --device {text}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise SystemExit(f"speca bench: --device {text}: no CUDA device is visible to PyTorch "
                             f"{torch.__version__} ({build}; CUDA_VISIBLE_DEVICES="
                             f"{__import__('os').environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SystemExit(f"speca bench: --device {text}: no such CUDA device; {count} visible "
                             f"(cuda:0{'' if count == 1 else f' to cuda:{count - 1}'})")
    return str(device)


def _parse_lowerings(text: Optional[str], device: str) -> tuple:
    from speca_compile.bench.methods import default_lowerings, is_cuda, valid_lowerings

    if text is None:
        return default_lowerings(device)
    lowerings = tuple(v.strip() for v in text.split(",") if v.strip())
    valid = valid_lowerings(device)
    if not lowerings or any(v not in valid for v in lowerings):
        cuda_only = [v for v in lowerings if v in CUDA_EXTRA_LOWERINGS and v not in valid]
        hint = f" ({', '.join(cuda_only)} needs --device cuda)" if cuda_only and not is_cuda(device) else ""
        raise SystemExit(f"speca bench: --lowerings got {text!r}; valid on {device}: {', '.join(valid)}{hint}")
    return lowerings


def _parse_compile_modes(text: Optional[str], device: str) -> tuple:
    from speca_compile.bench.methods import compile_modes, default_compile_modes

    if text is None:
        return default_compile_modes(device)
    modes = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    valid = compile_modes()
    if not modes or any(m not in valid for m in modes):
        raise SystemExit(f"speca bench: --compile-modes got {text!r}; valid: {', '.join(valid)}")
    return modes


def _progress_bar(label: str):
    """A tqdm bar plus the two callbacks the suite reports to (a tick per run, methods as found)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=label, unit="run")

    def tick(text):
        bar.set_postfix_str(text[:48])
        bar.update(1)

    def grow(methods, per_method):
        bar.total += methods * per_method
        bar.refresh()
    return bar, tick, grow


def _tune(args, argv: List[str]) -> int:
    from speca_compile.bench import report
    from speca_compile.bench.tune import describe, pareto_front, run_tune, tune_config

    name = _parse_models(args.model)[0]
    if args.steps < 1 or args.images < 1:
        raise SystemExit("speca tune: --steps and --images must be >= 1")
    config = tune_config(name, steps=args.steps, images=args.images, batch=args.images)
    bar, tick, grow = _progress_bar("speca tune")
    with bar:
        rows = run_tune(config, tick, lambda m: grow(m, 2 + config.repeats))
    paths = report.write(rows, config, "speca " + " ".join(shlex.quote(a) for a in argv), Path(args.out))
    print(f"Pareto front on {name} ({config.images} images, {config.steps} steps, one timed round; "
          "rough speedups, confirm with speca bench):")
    print("| speedup | PSNR dB | full steps | settings |\n|---|---|---|---|")
    for row in pareto_front(rows):
        print(f"| {row.speedup:.2f}x | {row.psnr_db:.1f} | {row.full_fraction:.0%} | {describe(row)} |")
    print(f"\nall rows: {paths['markdown']}")
    return 0


def _bench(args, argv: List[str]) -> int:
    from speca_compile.bench import report
    from speca_compile.bench.suite import BenchConfig, run_suite

    device = _parse_device(args.device)     # first: a missing GPU stops the command before any work
    lowerings = _parse_lowerings(args.lowerings, device)
    settings = dict(steps=args.steps, images=args.images, batch=args.batch, repeats=args.repeats,
                    taus=_parse_taus(args.tau0), inductor=not args.no_inductor, peers=not args.no_peers,
                    compile_modes=_parse_compile_modes(args.compile_modes, device), precision=args.precision)
    if args.quick:
        settings.update(QUICK)
    for field in ("steps", "images", "batch", "repeats"):
        if settings[field] < 1:
            raise SystemExit(f"speca bench: --{field} must be >= 1")
    from speca_compile.options import FORECASTERS

    forecasters = tuple(v.strip() for v in args.forecasters.split(",") if v.strip())
    if not forecasters or any(v not in FORECASTERS for v in forecasters):
        raise SystemExit(f"speca bench: --forecasters got {args.forecasters!r}; valid: {', '.join(FORECASTERS)}")
    longest = _parse_ints("--max-speculative", args.max_speculative) if args.max_speculative.strip() else ()
    strides = _parse_ints("--verify-strides", args.verify_strides) if args.verify_strides.strip() else ()
    orders = _parse_ints("--orders", args.orders)
    models = _parse_models(args.models)
    if args.scheduler_steps is not None and args.scheduler_steps < 1:
        raise SystemExit("speca bench: --scheduler-steps must be >= 1")
    if not args.quick:
        settings["acceptances"] = _parse_acceptances(args.acceptance)
    config = BenchConfig(models=models, lowerings=lowerings, forecasters=forecasters,
                         orders=orders, max_speculatives=longest, verify_strides=strides, device=device,
                         schedulers=_parse_schedulers(args.schedulers, models),
                         scheduler_steps=args.scheduler_steps, **settings)
    for skipped in report.skipped_rows(config):
        print(f"speca bench: leaving out {skipped['rows']}: {skipped['reason']}", file=sys.stderr)
    per_method = 2 + config.repeats     # warm, metered, timed rounds
    bar, tick, grow = _progress_bar("speca bench")
    with bar:
        command = "speca " + " ".join(shlex.quote(a) for a in argv)
        # written after each model, so a long run that is stopped keeps what it measured
        rows = run_suite(config, tick, lambda m: grow(m, per_method),
                         lambda done: report.write(done, config, command, Path(args.out)))
    paths = report.write(rows, config, command, Path(args.out))
    print(report.header(config) + "\n\n" + report.markdown(rows))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
