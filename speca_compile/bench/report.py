"""Bench results as JSON (for machines), a Markdown table (for the README) and the Pareto PNG."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from speca_compile.bench.plot import forecaster_fronts_png, pareto_png
from speca_compile.bench.allocator import pin_malloc_thresholds
from speca_compile.bench.suite import BenchConfig, Row

COLUMNS = ("model", "method", "s/image", "speedup", "full steps", "FLOPs", "verify FLOPs", "PSNR dB",
           "SSIM", "rel L2", "accuracy", "digits-FD", "peak MB", "cache KB", "compile s")


def machine() -> Dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    malloc = pin_malloc_thresholds()   # idempotent; run_suite set it before timing
    if malloc:
        info["malloc"] = malloc
    return info


def _f(value, fmt: str, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value * scale, fmt)


FP32_COLUMN = "rel L2 vs fp32"    # bf16 benches only: against float32 eager of the same seeds


def markdown(rows: Sequence[Row]) -> str:
    with_fp32 = any(r.rel_l2_fp32 is not None for r in rows)
    columns = COLUMNS + ((FP32_COLUMN,) if with_fp32 else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = (r.model, r.method, _f(r.seconds_per_image, ".4f"), _f(r.speedup, ".2f") + "x",
                 _f(r.full_fraction, ".0%"), _f(r.flops_fraction, ".0%"), _f(r.verify_fraction, ".1%"),
                 _f(r.psnr_db, ".1f"), _f(r.ssim, ".3f"), _f(r.rel_l2, ".1e"), _f(r.accuracy, ".0%"),
                 _f(r.digits_fd, ".2f"), _f(r.peak_memory_mb, ".1f"), _f(r.cache_bytes, ".0f", 1 / 1024),
                 _f(r.compile_seconds, ".1f")) + ((_f(r.rel_l2_fp32, ".1e"),) if with_fp32 else ())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def skipped_rows(config: BenchConfig) -> List[Dict[str, str]]:
    """The rows ``config`` leaves out and why (``methods.plan_rows``)."""
    from speca_compile.bench.methods import plan_rows

    return [dataclasses.asdict(s) for s in plan_rows(config)[1]]


def header(config: BenchConfig) -> str:
    """What the table was measured at: the precision, what quality is against, the rows left out."""
    if config.precision == "fp32":
        text = ("Precision: fp32 (every row runs the float32 model; PSNR / SSIM / rel L2 are against "
                "float32 eager, the full compute of the same seeds).")
    else:
        text = (f"Precision: {config.precision}: eager, the torch.compile rows and the peers run the model "
                f"converted to {config.precision} (float inputs cast at each call, the sampler in float32); "
                f"the speca rows pass precision={config.precision!r} to the backend.  PSNR / SSIM / rel L2 "
                f"are against {config.precision} eager, the full compute at the same precision; "
                f"'{FP32_COLUMN}' is each row against float32 eager of the same seeds.")
    skipped = skipped_rows(config)
    if skipped:
        text += "\n\nRows left out:\n" + "\n".join(f"- {s['rows']}: {s['reason']}" for s in skipped)
    return text


def write(rows: List[Row], config: BenchConfig, command: str, out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "config": dataclasses.asdict(config), "machine": machine(),
               "precision": config.precision, "skipped": skipped_rows(config),
               "rows": [dataclasses.asdict(r) for r in rows]}
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md", "plot": out_dir / "pareto.png"}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    paths["markdown"].write_text(f"`{command}` on {machine()}\n\n{header(config)}\n\n{markdown(rows)}\n")
    pareto_png(rows, paths["plot"])
    forecasters = {r.options.get("forecaster", "taylor") for r in rows if r.options}
    if len(forecasters) > 1:
        paths["forecasters"] = forecaster_fronts_png(rows, out_dir / "forecasters.png")
    return paths
