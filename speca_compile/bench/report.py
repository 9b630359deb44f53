"""Bench results as JSON (for machines) and a Markdown table (for the README)."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from speca_compile.bench.suite import BenchConfig, Row

HEADER = ("| model | method | s/image | speedup vs eager | full-step fraction | rel L2 vs full "
          "| PSNR vs full (dB) | compile s | cache bytes |")


def machine() -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": str(torch.get_num_threads())}


def markdown(rows: Sequence[Row]) -> str:
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in rows:
        db = "inf" if math.isinf(r.psnr_db) else f"{r.psnr_db:.1f}"
        lines.append(f"| {r.model} | {r.method} | {r.seconds_per_image:.4f} | {r.speedup:.2f}x "
                     f"| {r.full_fraction:.2f} | {r.rel_l2:.2e} | {db} | {r.compile_seconds:.1f} "
                     f"| {r.cache_bytes} |")
    return "\n".join(lines)


def write(rows: List[Row], config: BenchConfig, command: str, out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "config": dataclasses.asdict(config), "machine": machine(),
               "rows": [dataclasses.asdict(r) for r in rows]}
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    md_path.write_text(f"`{command}` on {machine()}\n\n{markdown(rows)}\n")
    return {"json": json_path, "markdown": md_path}
