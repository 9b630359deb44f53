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


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = (r.model, r.method, _f(r.seconds_per_image, ".4f"), _f(r.speedup, ".2f") + "x",
                 _f(r.full_fraction, ".0%"), _f(r.flops_fraction, ".0%"), _f(r.verify_fraction, ".1%"),
                 _f(r.psnr_db, ".1f"), _f(r.ssim, ".3f"), _f(r.rel_l2, ".1e"), _f(r.accuracy, ".0%"),
                 _f(r.digits_fd, ".2f"), _f(r.peak_memory_mb, ".1f"), _f(r.cache_bytes, ".0f", 1 / 1024),
                 _f(r.compile_seconds, ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(rows: List[Row], config: BenchConfig, command: str, out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "config": dataclasses.asdict(config), "machine": machine(),
               "rows": [dataclasses.asdict(r) for r in rows]}
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md", "plot": out_dir / "pareto.png"}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    paths["markdown"].write_text(f"`{command}` on {machine()}\n\n{markdown(rows)}\n")
    pareto_png(rows, paths["plot"])
    forecasters = {r.options.get("forecaster", "taylor") for r in rows if r.options}
    if len(forecasters) > 1:
        paths["forecasters"] = forecaster_fronts_png(rows, out_dir / "forecasters.png")
    return paths
