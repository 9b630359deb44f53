"""The ``speca`` command: inspect prints the partition, bench writes honest rows."""

import json
import math

import torch

import speca_compile
from speca_compile import cli
from tests import helpers


def test_inspect_prints_blocks_segments_and_cuts(capsys):
    assert cli.main(["inspect", "flux"]) == 0
    out = capsys.readouterr().out
    assert "4 blocks in 2 stack(s): transformer_blocks x2, single_transformer_blocks x2" in out
    assert "segment block_3:single_transformer_blocks.1" in out
    assert "cut 4" in out and "speculation: possible" in out


def test_bench_rows_are_consistent(tmp_path, capsys):
    code = cli.main(["bench", "--models", "dit", "--steps", "8", "--images", "1", "--batch", "1",
                     "--repeats", "1", "--tau0", "0,1e30", "--acceptance", "step", "--lowerings", "eager",
                     "--no-inductor", "--no-peers", "--out", str(tmp_path)])
    assert code == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["method"].replace(" step", ""): r for r in payload["rows"]}   # SpeCa's per-step rule
    assert list(rows) == ["eager", "speca[eager] full (speculate=False)", "speca[eager] tau0=0",
                          "speca[eager] tau0=1e+30"]
    assert rows["eager"]["speedup"] == 1.0 and math.isinf(rows["eager"]["psnr_db"])
    assert rows["speca[eager] full (speculate=False)"]["full_fraction"] == 1.0
    assert rows["speca[eager] full (speculate=False)"]["rel_l2"] < 1e-5
    # 8 steps: warmup 3, then SSR SS (tau0=0) or SSAAA (always accepted)
    assert rows["speca[eager] tau0=0"]["full_fraction"] == 4 / 8
    assert rows["speca[eager] tau0=1e+30"]["full_fraction"] == 3 / 8
    assert rows["speca[eager] tau0=1e+30"]["rel_l2"] > 0
    # FLOPs are counted: the full path does exactly eager's work, speculation less, checks some
    assert rows["speca[eager] full (speculate=False)"]["flops_fraction"] == 1.0
    never_rejected = rows["speca[eager] tau0=1e+30"]
    assert 0 < never_rejected["flops_fraction"] < rows["speca[eager] tau0=0"]["flops_fraction"] < 1
    assert 0 < never_rejected["verify_fraction"] < 1
    assert never_rejected["peak_memory_mb"] > 0 and never_rejected["cache_bytes"] > 0
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "| dit | eager |" in (tmp_path / "bench.md").read_text()
    assert payload["command"].startswith("speca bench --models dit")


def test_bench_rejects_bad_arguments(tmp_path):
    for bad in (["--models", "nope"], ["--tau0", "x"], ["--steps", "0"], ["--lowerings", "tensorrt"],
                ["--forecasters", "fcoa"], ["--max-speculative", "0"], ["--orders", "two"]):
        try:
            cli.main(["bench", *bad, "--out", str(tmp_path)])
        except SystemExit as exc:
            assert exc.code != 0 and exc.code is not None
        else:
            raise AssertionError(f"{bad} was accepted")


def test_two_compiles_of_one_model_keep_separate_stats():
    z = helpers.build("reference_dit")
    # the stats are the subject, not a lowering: the segments run eagerly
    full = torch.compile(z.model, backend="speca", options={"speculate": False, "lowering": "eager"})
    spec = torch.compile(z.model, backend="speca", options={"tau0": 1e30, "lowering": "eager"})
    helpers.trajectory(z, full, 2, 10)
    helpers.trajectory(z, spec, 2, 10)
    assert speca_compile.stats(full)["trajectories"][-1]["full"] == 20
    assert speca_compile.stats(spec)["trajectories"][-1]["full"] == 2 * 3   # warmup, then never rejected
    assert len(speca_compile.stats(z.model)["per_graph"]) == 2  # the plain module sees both
