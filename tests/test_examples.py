"""The examples run as documented."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_compile_a_dit_example_runs_and_speculates():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "compile_a_dit.py")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    full, total = (int(v) for v in lines["full sample-steps"].split(" of "))
    assert total == 100 and full < 50
    assert float(lines["relative L2 vs full compute"]) < 0.25


def test_sample_digits_example_draws_full_and_speculative_digits(tmp_path):
    out = tmp_path / "digits.png"
    done = subprocess.run([sys.executable, str(REPO / "examples" / "sample_digits.py"), "dit_digits",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    full, total = (int(v) for v in lines["full sample-steps"].split(" of "))
    assert total == 1000 and full < total / 2
    assert float(lines["PSNR vs full compute"].split()[0]) > 30     # measured 30.6 dB
    assert lines["judge accuracy (full compute)"] == "100%"
    assert out.stat().st_size > 1000


def test_pipeline_example_runs_diffusers_flux_pipeline_with_speca(tmp_path):
    out = tmp_path / "pipeline.png"
    done = subprocess.run([sys.executable, str(REPO / "examples" / "pipeline_flux_digits.py"), "--steps", "30",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["repeated call identical"] == "True"
    full, total = (int(v) for v in lines["full sample-steps in the last call"].split(" (")[0].split(" of "))
    assert total == 600 and full < total / 2
    assert float(lines["PSNR vs the plain pipeline"].split()[0]) > 30
    assert lines["judge accuracy"].startswith("plain 100%")
    assert out.stat().st_size > 1000


def test_engine_cache_times_reports_a_miss_then_a_hit():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "engine_cache_times.py"), "--models", "dit_digits",
                           "--batch", "2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| dit_digits"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "miss, miss, miss, miss" and cells[4] == "hit, hit, hit, hit"
    assert float(cells[3]) < float(cells[1])    # loading from the cache is faster than exporting


def test_serve_tick_profile_breaks_a_tick_down_per_engine(reference_bundles, capsys):
    import runpy
    import sys

    path = reference_bundles.get("dit_digits")[1]
    argv = sys.argv
    sys.argv = ["serve_tick_profile.py", str(path), "--max-batch", "2", "--requests", "3", "--rounds", "1"]
    try:
        runpy.run_path(str(REPO / "examples" / "serve_tick_profile.py"), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "step-full:" in out and "step-spec:" in out and "block_stack" in out
    assert "full / speculative ms per tick, per round:" in out


def test_fused_step_ab_prints_its_table():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "fused_step_ab.py"), "dit_digits",
                           "--images", "3", "--steps", "8", "--rounds", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| speca")]
    assert [line.split("|")[1].strip() for line in table] == [
        "speca inductor fused", "speca inductor segments", "speca onnxruntime"]
    assert "'programs'" in table[0] and "fuse_steps=False" in table[1]


def test_ort_threads_ab_compares_the_waits_on_identical_numbers(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "ort_threads_ab.py"), "dit_digits",
                           "--images", "2", "--steps", "6", "--rounds", "1", "--tau0", "0.4",
                           "--variants", "sleep,during run", "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| threads")}
    assert list(rows) == ["eager", "sleep", "during run"]   # two variants: the third costs CI ~10 s
    # how threads wait changes no number: every variant equals the first
    assert all(float(rows[v]) < 1e-6 for v in ["sleep", "during run"])
    assert len(list((tmp_path / "during_run").glob("*.onnx"))) == len(list((tmp_path / "sleep").glob("*.onnx")))


def test_engine_choice_ab_compares_the_lowerings_on_agreeing_numbers(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "engine_choice_ab.py"), "dit_digits",
                           "--images", "2", "--steps", "6", "--rounds", "1", "--tau0", "0.4",
                           "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): float(line.split("|")[4]) for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| lowering")}
    assert list(rows) == ["model (eager)", "eager", "onnxruntime", "auto"]
    # the lowerings agree with each other (each within the engines' checked bound of the eager lowering)
    assert abs(rows["onnxruntime"] - rows["eager"]) < 1e-3 and abs(rows["auto"] - rows["eager"]) < 1e-3
    chosen = [line for line in done.stdout.splitlines() if line.startswith("auto ")]
    assert chosen and all("(trials)" in line for line in chosen)   # each segment chose on its first call
    assert len(list(tmp_path.glob("*.choice"))) == len(chosen)
