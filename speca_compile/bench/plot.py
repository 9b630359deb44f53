"""The Pareto plot: speedup vs PSNR, one curve per method family, one panel per model."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

PSNR_CAP = 60.0   # identical images have infinite PSNR; drawn at the cap


def pareto_png(rows: Sequence, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        families = defaultdict(list)
        for r in rows:
            if r.model == model:
                db = PSNR_CAP if math.isinf(r.psnr_db) else min(r.psnr_db, PSNR_CAP)
                families[r.family].append((db, r.speedup))
        for family, points in families.items():
            points.sort()
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", linewidth=2 if family.startswith("speca") else 1.2, label=family)
        ax.axvline(30, color="grey", linestyle=":", linewidth=1)
        ax.axhline(1, color="grey", linestyle=":", linewidth=1)
        ax.set_title(model)
        ax.set_xlabel(f"PSNR vs full compute (dB, identical drawn at {PSNR_CAP:g})")
        ax.set_ylabel("speedup vs eager (same run)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def forecaster_fronts_png(rows: Sequence, path: Path) -> Path:
    """Per model, each forecaster's Pareto front over all its settings (order, max_speculative,
    tau0): the plot that picks the default forecaster.  Points are labelled with their settings.

    The speed axis is counted compute (1 / FLOPs fraction), not wall time: it is deterministic,
    and on a shared machine rows with identical decisions were measured 2.5x-4.1x apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speca_compile.bench.tune import pareto_front

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        speca = [dataclasses.replace(r, speedup=1.0 / r.flops_fraction) for r in rows
                 if r.model == model and r.options and r.options.get("speculate", True) and r.flops_fraction]
        for forecaster in dict.fromkeys(r.options.get("forecaster", "taylor") for r in speca):
            front = pareto_front([r for r in speca if r.options.get("forecaster", "taylor") == forecaster])
            points = sorted(((min(r.psnr_db, PSNR_CAP), r.speedup, r) for r in front), key=lambda p: p[:2])
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, marker="o", linewidth=2, label=forecaster)
            for x, y, r in points:
                o = r.options
                ax.annotate(f"o{o.get('order', 2)} m{o.get('max_speculative', 5)} t{o.get('tau0')}", (x, y),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axvline(30, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{model}: each forecaster's Pareto front (o=order, m=max_speculative, t=tau0)",
                     fontsize=9)
        ax.set_xlabel("PSNR vs full compute (dB)")
        ax.set_ylabel("compute speedup (1 / counted FLOPs fraction)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
