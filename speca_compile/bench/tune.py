"""``speca tune MODEL``: a short sweep of forecaster, order and tau0, reduced to its Pareto front.

The sweep is a small ``speca bench`` (eager lowering, few images, one timed
round), so its speedups are rough; the front says which settings are worth
a full bench.  A setting is on the front when no other is at least as fast
and at least as close to full compute, and better in one of the two.
"""

from __future__ import annotations

from typing import List, Sequence

from speca_compile.bench.suite import BenchConfig, Row, run_suite
from speca_compile.options import Options

TUNE = dict(steps=50, images=10, batch=10, repeats=1, taus=(0.1, 0.2, 0.4, "auto"), acceptances=("budget",),
            lowerings=("eager",),
            forecasters=("taylor", "hermite", "foca"), orders=(1, 2), inductor=False, peers=False)


def tune_config(model: str, **changes) -> BenchConfig:
    return BenchConfig(models=(model,), **{**TUNE, **changes})


def pareto_front(rows: Sequence[Row]) -> List[Row]:
    """The speca rows no other speca row dominates in (speedup, PSNR), fastest first."""
    candidates = [r for r in rows if r.options is not None and r.options.get("speculate", True)]

    def dominated(r: Row) -> bool:
        return any(o.speedup >= r.speedup and o.psnr_db >= r.psnr_db
                   and (o.speedup > r.speedup or o.psnr_db > r.psnr_db) for o in candidates)

    return sorted((r for r in candidates if not dominated(r)), key=lambda r: -r.speedup)


def describe(row: Row) -> str:
    o = row.options
    longest = o.get("max_speculative", Options.max_speculative)
    tau = (f"tau0={o['tau0']:g}" if o["tau0"] != "auto"
           else f"tau0='auto' (calibrated to {row.tau0_used:.3g})" if row.tau0_used is not None else "tau0='auto'")
    return (f"forecaster={o['forecaster']!r}, order={o['order']}, {tau}"
            + ("" if longest == Options.max_speculative else f", max_speculative={longest}"))


def run_tune(config: BenchConfig, progress=None, on_methods=None) -> List[Row]:
    return run_suite(config, progress, on_methods)
