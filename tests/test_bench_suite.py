"""``speca bench`` internals: rows on a trained model carry every metric; peers run and are measured."""

import math

import pytest

from speca_compile.bench.suite import BenchConfig, bench_model, load_model


def test_reference_model_rows_carry_quality_compute_and_memory():
    config = BenchConfig(models=("dit_digits",), steps=8, images=4, batch=2, repeats=1, taus=(1e30,),
                         acceptances=("budget",), lowerings=("eager",), inductor=False, peers=False)
    rows = {r.method: r for r in bench_model(load_model("dit_digits"), config)}
    eager, full, spec = rows["eager"], rows["speca[eager] full (speculate=False)"], rows["speca[eager] tau0=1e+30"]
    assert math.isinf(eager.psnr_db) and eager.ssim > 0.9999 and eager.flops_fraction == 1.0
    assert full.flops_fraction == 1.0 and full.rel_l2 < 1e-5
    # 8 steps, never rejected: warmup 3, then forecasts, so 3 full steps of 8 per sample
    assert spec.full_fraction == 3 / 8 and spec.flops_fraction < 0.7 and 0 < spec.verify_fraction < 1
    for row in rows.values():
        assert 0 <= row.accuracy <= 1 and row.digits_fd >= 0 and row.peak_memory_mb > 0
    assert spec.ssim < 1.0 and spec.cache_bytes > 0


def test_peer_caches_run_on_flux_and_are_counted():
    pytest.importorskip("cache_dit")
    config = BenchConfig(models=("flux",), steps=8, images=2, batch=2, repeats=1, taus=(0.1,),
                         lowerings=("eager",), inductor=False, peers=True)
    rows = bench_model(load_model("flux"), config)
    families = {r.family for r in rows}
    assert {"diffusers FirstBlockCache", "diffusers TaylorSeerCache", "diffusers MagCache",
            "cache-dit DBCache+TaylorSeer"} <= families
    for row in rows:
        assert row.flops_fraction is not None and 0 < row.flops_fraction <= 1.0 + 1e-9
    # the peers skip work, and the meter sees it
    assert min(r.flops_fraction for r in rows if not r.family.startswith(("eager", "speca"))) < 1.0


def test_speca_rows_for_each_policy_forecaster_order_and_max_speculative():
    import torch

    from speca_compile.bench.methods import POLICY_TAUS, STEP_POLICY, build_methods

    config = BenchConfig(models=("dit",), taus=(0.1,), lowerings=("eager",), forecasters=("hermite", "foca"),
                         orders=(1, 2), max_speculatives=(5, 10), inductor=False, peers=False)
    ref = load_model("dit")
    methods = build_methods(ref, config, torch.zeros(1), {})
    spec = {m.name: m for m in methods if m.family.startswith("speca") and m.options.get("speculate", True)}
    assert len(spec) == 2 * 2 * 2 * 2      # both policies
    row = spec["speca[eager] tau0=0.1 foca order=2 max_spec=10"]     # names list what differs from the defaults
    assert row.options == {"acceptance": "budget", "tau0": 0.1, "lowering": "eager", "forecaster": "foca",
                           "order": 2, "max_speculative": 10}
    assert row.family == "speca[eager] foca order=2 max_spec=10"      # its own Pareto curve
    step = spec["speca[eager] tau0=0.1 step max_spec=10"]
    assert step.options == {**STEP_POLICY, "tau0": 0.1, "lowering": "eager", "forecaster": "hermite", "order": 1,
                            "max_speculative": 10}
    assert step.family == "speca[eager] step max_spec=10"
    # without --tau0 / --max-speculative each policy brings its own thresholds and cap
    config = BenchConfig(models=("dit",), lowerings=("eager",), inductor=False, peers=False)
    names = [m.name for m in build_methods(ref, config, torch.zeros(1), {})]
    assert names[2:] == ([f"speca[eager] tau0={t}" for t in POLICY_TAUS["budget"]]
                         + [f"speca[eager] tau0={t} step" for t in POLICY_TAUS["step"]])
    default = next(m for m in methods if m.name == "speca[eager] tau0=0.1 max_spec=5").options
    assert (default["forecaster"], default["order"], default["acceptance"]) == ("hermite", 1, "budget")


def test_speca_rows_for_each_verify_stride():
    import torch

    from speca_compile.bench.methods import build_methods

    config = BenchConfig(models=("dit",), taus=(0.2,), lowerings=("eager",), acceptances=("budget",),
                         verify_strides=(1, 4), inductor=False, peers=False)
    methods = build_methods(load_model("dit"), config, torch.zeros(1), {})
    spec = {m.name: m for m in methods if m.family.startswith("speca") and m.options.get("speculate", True)}
    assert set(spec) == {"speca[eager] tau0=0.2", "speca[eager] tau0=0.2 verify_stride=4"}
    assert spec["speca[eager] tau0=0.2 verify_stride=4"].options["verify_stride"] == 4
    assert spec["speca[eager] tau0=0.2 verify_stride=4"].family == "speca[eager] verify_stride=4"


def test_the_bench_pins_glibc_malloc_thresholds():
    """bench/allocator.py: on glibc the thresholds are set (and the report says so)."""
    import platform

    from speca_compile.bench.allocator import pin_malloc_thresholds
    from speca_compile.bench.report import machine

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()}): nothing to pin")
    assert pin_malloc_thresholds() == "glibc mmap threshold 64 MiB, trim 256 MiB (pinned)"
    assert machine()["malloc"].startswith("glibc mmap threshold")
