"""The Pareto plot: speedup vs PSNR, one curve per method family, one panel per model."""

from __future__ import annotations

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
