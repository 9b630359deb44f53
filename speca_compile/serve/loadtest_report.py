"""The ``speca loadtest`` report: a Markdown table (people), JSON (machines), a latency-vs-throughput PNG.

Why each file is written atomically (a temp file in the same directory, then
``os.replace``): a load test can run for a long time and be interrupted, and a
reader (a CI step, a README generator) must never see a half-written table or
JSON; it sees the previous complete file or the new one.

Why the plot may be missing: matplotlib is an optional dependency.  Without it
the report says so (in the Markdown and the JSON ``plot`` field) instead of
failing after the measurements were made.

JSON has no infinity, and identical latents have infinite PSNR: non-finite
numbers are written as the strings ``"inf"`` / ``"-inf"`` (NaN as null).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

FILES = {"markdown": "loadtest.md", "json": "loadtest.json", "plot": "loadtest.png"}
PSNR_CAP = 60.0
COLUMNS = ("config", "rate", "ok", "failed (timeouts)", "images/s", "p50 s", "p95 s", "p99 s",
           "queue s", "compute s", "full steps", "PSNR min dB", "PSNR median dB")


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _rate(rate) -> str:
    return "max" if rate == "max" else f"{float(rate):g}/s"


def _f(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def table(result: Dict[str, Any]) -> str:
    """One row per configuration and rate, in run order."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result["runs"]:
        cells = (r["config"], _rate(r["rate"]), f"{r['ok']}/{r['requests']}", f"{r['failed']} ({r['timeouts']})",
                 _f(r["throughput"], ".3f"), _f(r["latency_p50"], ".3f"), _f(r["latency_p95"], ".3f"),
                 _f(r["latency_p99"], ".3f"), _f(r["queue_s_mean"], ".3f"), _f(r["compute_s_mean"], ".3f"),
                 _f(r["full_fraction"], ".0%"), _f(r.get("psnr_min"), ".1f"), _f(r.get("psnr_median"), ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: Dict[str, Any], plot_note: Optional[str] = None) -> str:
    """The whole Markdown report: settings, the table, saturation, quality, failures, the plot."""
    s = result["settings"]
    out = ["# speca loadtest", "",
           f"Target `{result['target']}` ({result['kind']}): {s['requests']} requests per rate "
           f"({', '.join(_rate(r) for r in s['rates'])}), {s['steps']} steps, guidance {s['guidance']}, "
           f"max batch {s['max_batch']}, client timeout {s['timeout']:g} s, arrival seed {s['seed']}, "
           f"{s.get('warmup', 0)} warm-up request(s) per server, {s.get('rounds', 1)} round(s) "
           "with the configurations interleaved (each row: its median round by images/s).", "",
           "Latency: scheduled arrival to answer, successful requests only. images/s: successful "
           "requests / (last completion - first arrival). full steps: sum(full) / sum(full + speculative).",
           "", table(result), ""]
    spread = [r for r in result["runs"] if len(r.get("throughput_rounds") or []) > 1]
    if spread:
        out += ["images/s of every round: " + "; ".join(
            f"{r['config']} @ {_rate(r['rate'])} " + ", ".join(_f(v, ".2f") for v in r["throughput_rounds"])
            for r in spread) + ".", ""]
    sat = result.get("saturation") or {}
    if sat:
        out.append("Saturation throughput (rate max, else the best rate): "
                   + ", ".join(f"{c} {_f(v, '.3f')} images/s" for c, v in sat.items()) + ".")
    if result["kind"] == "bundle":
        ratio = result.get("spec_vs_full_saturation")
        out.append(f"step-spec / step-full saturation throughput: {_f(ratio, '.2f')}"
                   + ("x." if ratio is not None else " (needs both configurations)."))
        q = result.get("quality")
        if q:
            out += ["", "Quality: PSNR of each configuration's latents vs step-full's for the same seed "
                        "(peak = step-full's value range).", "",
                    "| config | compared | PSNR min dB | PSNR median dB |", "|---|---|---|---|"]
            out += [f"| {c} | {v['compared']} | {_f(v['psnr_min'], '.1f')} | {_f(v['psnr_median'], '.1f')} |"
                    for c, v in q.items()]
        else:
            out.append("Quality: not measured (needs the step-full configuration).")
    failures = [r for r in result["runs"] if r["failed"]]
    if failures:
        out += ["", "Failures (counted above, never dropped):"]
        for r in failures:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["kinds"].items()) if k != "ok")
            out.append(f"- {r['config']} @ {_rate(r['rate'])}: {kinds}")
            out += [f"  - {e}" for e in r.get("error_samples", [])]
    note = plot_note if plot_note is not None else result.get("plot")
    if note:
        out += ["", f"Plot: {note}"]
    return "\n".join(out) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):   # numpy scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def to_json(result: Dict[str, Any]) -> str:
    """Strict JSON (no Infinity/NaN tokens) of the result."""
    return json.dumps(_jsonable(result), indent=2, allow_nan=False)


def render_plot(result: Dict[str, Any]) -> Tuple[Optional[bytes], Optional[str]]:
    """(PNG bytes, None), or (None, why not): p50 latency vs throughput per configuration,
    the error bar reaching up to p95, each point labelled with its rate."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "not drawn: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4.8))
    drawn = 0
    for config in result["configs"]:
        points = [(r["throughput"], r["latency_p50"], r["latency_p95"], r["rate"]) for r in result["runs"]
                  if r["config"] == config and r["throughput"] is not None and r["latency_p50"] is not None]
        if not points:
            continue
        points.sort(key=lambda p: p[0])
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        up = [max(0.0, (p[2] if p[2] is not None else p[1]) - p[1]) for p in points]
        ax.errorbar(xs, ys, yerr=[[0.0] * len(ys), up], marker="o", capsize=3, label=config)
        for x, y, _, rate in points:
            ax.annotate(_rate(rate), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no successful requests", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency p50 (s); bar up to p95")
    ax.set_title(f"speca loadtest: {result['target']}", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue(), None


def write_report(result: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Write loadtest.md, loadtest.json and (with matplotlib) loadtest.png into ``out_dir``,
    each atomically; returns {"markdown", "json"[, "plot"]: path}.  ``result`` is not changed;
    the written copy carries ``plot``: the PNG's file name or why there is none."""
    out_dir = Path(out_dir)
    png, note = render_plot(result)
    written = dict(result, plot=FILES["plot"] if png is not None else note)
    paths: Dict[str, Path] = {}
    if png is not None:
        paths["plot"] = atomic_write(out_dir / FILES["plot"], png)
    else:   # a PNG left by an earlier run would not show these numbers
        try:
            (out_dir / FILES["plot"]).unlink()
        except FileNotFoundError:
            pass
    paths["json"] = atomic_write(out_dir / FILES["json"], to_json(written).encode("utf-8"))
    paths["markdown"] = atomic_write(out_dir / FILES["markdown"],
                                     markdown(written, None if png is not None else note).encode("utf-8"))
    return paths
