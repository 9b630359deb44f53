"""speca tune: the Pareto front of a short sweep, and the command end to end on a tiny model."""

import dataclasses

from speca_compile.bench.suite import Row
from speca_compile.bench.tune import describe, pareto_front
from speca_compile.cli import main


def _row(name, speedup, psnr, options={"forecaster": "taylor", "order": 2, "tau0": 0.1}):
    return Row(model="m", method=name, family="speca", seconds_per_image=1.0, speedup=speedup,
               full_fraction=0.3, flops_fraction=None, verify_fraction=None, psnr_db=psnr, ssim=None,
               rel_l2=0.0, accuracy=None, digits_fd=None, peak_memory_mb=None, cache_bytes=None,
               compile_seconds=0.0, options=dict(options))


def test_front_keeps_exactly_the_undominated_speca_rows():
    rows = [_row("a", 3.0, 30.0), _row("b", 2.0, 40.0), _row("c", 2.0, 35.0), _row("d", 3.0, 29.0),
            _row("e", 1.0, 45.0), dataclasses.replace(_row("eager", 9.0, 99.0), options=None),
            _row("full", 9.0, 99.0, {"speculate": False, "forecaster": "taylor", "order": 2, "tau0": 0.1})]
    assert [r.method for r in pareto_front(rows)] == ["a", "b", "e"]
    assert describe(rows[0]) == "forecaster='taylor', order=2, tau0=0.1"


def test_tune_prints_a_front_of_settings(tmp_path, capsys):
    assert main(["tune", "dit", "--steps", "12", "--images", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("| ") and "forecaster=" in ln]
    assert lines, out
    speeds = [float(ln.split("|")[1].strip().rstrip("x")) for ln in lines]
    psnrs = [float(ln.split("|")[2]) for ln in lines]
    assert speeds == sorted(speeds, reverse=True)          # fastest first ...
    assert psnrs == sorted(psnrs)                          # ... and on a front, each slower one is closer
    assert (tmp_path / "bench.json").exists()


def test_bench_report_draws_forecaster_fronts_only_when_forecasters_compete(tmp_path):
    from speca_compile.bench import report
    from speca_compile.bench.suite import BenchConfig

    foca = {"forecaster": "foca", "order": 1, "tau0": 0.3, "max_speculative": 10}
    rows = [_row("a", 3.0, 30.0), _row("b", 2.0, 40.0), _row("f", 4.0, 33.0, foca)]
    paths = report.write(rows, BenchConfig(), "speca bench", tmp_path / "two")
    assert paths["forecasters"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert describe(rows[2]) == "forecaster='foca', order=1, tau0=0.3, max_speculative=10"
    assert "forecasters" not in report.write(rows[:2], BenchConfig(), "speca bench", tmp_path / "one")
