"""``speca bench`` rows for issue 18's GPU acceptance, checked on the CPU.

* the row plan of ``--device cuda`` (read without a GPU: ``methods.plan_rows`` needs none);
* ``--compile-modes``: one ``torch.compile`` row per mode (reduce-overhead compiles without CUDA
  graphs on the CPU: Inductor skips them for CPU tensors);
* ``--precision bf16``: eager and torch.compile run the model in bfloat16, the speca rows pass
  ``precision="bf16"``, lowerings without bf16 are left out with the reason, the header says it;
* ``--device cuda`` where PyTorch sees no GPU: a clear error before any work.
"""

import json

import pytest
import torch

from speca_compile import cli, zoo
from speca_compile.bench import methods as methods_mod
from speca_compile.bench import report
from speca_compile.bench.suite import BenchConfig, bench_model


def cuda_config(**changes):
    settings = dict(models=("dit_xl2",), steps=50, images=8, batch=8, taus=(0.1, 0.2, 0.4), acceptances=("budget",),
                    lowerings=methods_mod.default_lowerings("cuda"),
                    compile_modes=methods_mod.default_compile_modes("cuda"),
                    precision="bf16", peers=False, device="cuda")
    return BenchConfig(**{**settings, **changes})


def test_the_cuda_plan_lists_issue_18s_rows(monkeypatch):
    monkeypatch.setattr(methods_mod, "tensorrt_importable", lambda: False)
    planned, skipped = methods_mod.plan_rows(cuda_config())
    speca = [f"speca[{lowering}] {setting}" for lowering in ("eager", "inductor")
             for setting in ("full (speculate=False)", "tau0=0.1", "tau0=0.2", "tau0=0.4")]
    assert [p.name for p in planned] == (["eager"] + speca + [
        "torch.compile default", "torch.compile mode=max-autotune-no-cudagraphs",
        "torch.compile mode=reduce-overhead"])
    assert skipped == []
    for p in planned:
        if p.kind == "speca":
            assert p.options["precision"] == "bf16" and p.options["lowering"] in ("eager", "inductor")
            assert p.options.get("speculate", True) == (p.name.split("] ")[1] != "full (speculate=False)")
    assert [p.mode for p in planned if p.kind == "compile"] == ["default", "max-autotune-no-cudagraphs",
                                                               "reduce-overhead"]
    # the rows are valid backend options as planned
    for p in planned:
        if p.kind == "speca":
            methods_mod.Options.parse(p.options)
    # fp32: the options carry no precision (the rows and their options as before)
    planned, _ = methods_mod.plan_rows(cuda_config(precision="fp32"))
    assert all("precision" not in p.options for p in planned if p.kind == "speca")
    # --no-inductor removes every torch.compile row
    planned, _ = methods_mod.plan_rows(cuda_config(inductor=False))
    assert not [p for p in planned if p.kind == "compile"]


def test_cuda_lowering_defaults_and_tensorrt(monkeypatch):
    assert methods_mod.default_lowerings("cpu") == ("eager", "auto") == cli.LOWERINGS   # auto: the backend's default
    monkeypatch.setattr(methods_mod, "tensorrt_importable", lambda: False)
    assert methods_mod.default_lowerings("cuda") == methods_mod.default_lowerings("cuda:1") == ("eager", "inductor")
    monkeypatch.setattr(methods_mod, "tensorrt_importable", lambda: True)
    assert methods_mod.default_lowerings("cuda") == ("eager", "inductor", "tensorrt")
    assert methods_mod.default_compile_modes("cpu") == ("default",)
    # bf16: TensorRT's rows are left out with the reason, fp32 keeps them
    planned, skipped = methods_mod.plan_rows(cuda_config())
    assert not [p for p in planned if p.name.startswith("speca[tensorrt]")]
    assert [s.rows for s in skipped] == ["speca[tensorrt] (every setting)"] and "bf16" in skipped[0].reason
    planned, skipped = methods_mod.plan_rows(cuda_config(precision="fp32"))
    assert skipped == [] and "speca[tensorrt] tau0=0.1" in [p.name for p in planned]


def test_the_cli_resolves_cuda_defaults(monkeypatch, tmp_path):
    """With a GPU visible (faked: nothing runs), the CLI's config is the plan above."""
    from speca_compile.bench import suite

    seen = {}

    class Stop(Exception):
        pass

    def fake_run_suite(config, *args, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(methods_mod, "tensorrt_importable", lambda: False)
    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    with pytest.raises(Stop):
        cli.main(["bench", "--device", "cuda", "--models", "dit_xl2", "--precision", "bf16", "--no-peers",
                  "--tau0", "0.1,0.2,0.4", "--acceptance", "budget", "--out", str(tmp_path)])
    config = seen["config"]
    assert config.device == "cuda" and config.precision == "bf16"
    assert config.lowerings == ("eager", "inductor")
    assert config.compile_modes == ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
    assert ([p.name for p in methods_mod.plan_rows(config)[0]]
            == [p.name for p in methods_mod.plan_rows(cuda_config(steps=config.steps))[0]])
    # cuda:N beyond the visible devices
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--device", "cuda:1", "--models", "dit", "--out", str(tmp_path)])
    assert "--device cuda:1" in str(exc.value.code) and "1 visible" in str(exc.value.code)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch):
    from speca_compile.bench import suite

    def must_not_run(*args, **kwargs):
        raise AssertionError("the bench ran although no CUDA device is visible")

    monkeypatch.setattr(suite, "run_suite", must_not_run)
    monkeypatch.setattr(suite, "load_model", must_not_run)
    monkeypatch.setattr(zoo, "build", must_not_run)     # --schedulers reads the models' kinds
    for device in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["bench", "--device", device, "--models", "dit", "--schedulers", "ddim",
                      "--out", str(tmp_path / "out")])
        message = str(exc.value.code)
        assert message.startswith(f"speca bench: --device {device}: no CUDA device is visible"), message
    assert not (tmp_path / "out").exists()
    # with the module's entry point too: exit status 1 and the message on stderr
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "speca_compile", "bench", "--device", "cuda", "--models", "dit",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--device cuda: no CUDA device is visible" in done.stderr


def toy_model() -> zoo.ZooModel:
    """A two-layer MLP in the zoo's shape: Inductor compiles it in seconds (no speca rows use it)."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

        def forward(self, x, t):
            return self.b(torch.nn.functional.gelu(self.a(x) + t[:, None]))

    def call(m, x, t, extra):
        return m(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))

    return zoo.ZooModel("toy", Toy().eval(), "flow", lambda batch, seed: {}, lambda b: (b, 8), call)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compile_mode_rows_run_on_the_cpu(tmp_path, precision):
    config = BenchConfig(models=("toy",), steps=4, images=3, batch=2, repeats=1, lowerings=(),
                         compile_modes=("default", "reduce-overhead"), precision=precision, peers=False)
    rows = bench_model(toy_model(), config)
    assert [r.method for r in rows] == ["eager", "torch.compile default", "torch.compile mode=reduce-overhead"]
    by_name = {r.method: r for r in rows}
    for row in rows[1:]:
        assert row.full_fraction == 1.0 and row.flops_fraction == 1.0 and row.compile_seconds >= 0
        # the same float32 or bfloat16 arithmetic as eager, compiled: close to it
        assert row.rel_l2 < (1e-5 if precision == "fp32" else 3e-2), (row.method, row.rel_l2)
        assert row.precision == precision
    assert by_name["torch.compile mode=reduce-overhead"].family == "torch.compile (inductor) mode=reduce-overhead"
    assert by_name["torch.compile default"].family == "torch.compile (inductor)"
    if precision == "bf16":   # bfloat16's own error, against float32 eager
        assert 0 < by_name["eager"].rel_l2_fp32 < 3e-2
    else:
        assert all(r.rel_l2_fp32 is None for r in rows)
    paths = report.write(rows, config, "test", tmp_path)
    text = paths["markdown"].read_text()
    assert "| toy | torch.compile mode=reduce-overhead |" in text and f"Precision: {precision}" in text
    assert ("rel L2 vs fp32" in text) == (precision == "bf16")


def test_bf16_bench_end_to_end_on_the_cpu(tmp_path, capsys):
    """A tiny DiT: eager in bfloat16, speca[eager] with precision="bf16", speca[onnxruntime] left out."""
    from speca_compile.options import PRECISIONS

    # needs the backend's precision="bf16" (options.py / runtime/precision.py): a plain failure without it
    assert "bf16" in PRECISIONS, f"speca_compile.options.PRECISIONS = {PRECISIONS}: no bf16 yet"
    code = cli.main(["bench", "--models", "dit", "--steps", "8", "--images", "2", "--batch", "2", "--repeats", "1",
                     "--tau0", "1e30", "--acceptance", "budget", "--lowerings", "eager,onnxruntime",
                     "--precision", "bf16", "--no-inductor", "--no-peers", "--out", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    assert "leaving out speca[onnxruntime] (every setting): lowering 'onnxruntime' takes no bf16" in captured.err
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert payload["precision"] == "bf16" and payload["config"]["precision"] == "bf16"
    assert [s["rows"] for s in payload["skipped"]] == ["speca[onnxruntime] (every setting)"]
    rows = {r["method"]: r for r in payload["rows"]}
    assert list(rows) == ["eager", "speca[eager] full (speculate=False)", "speca[eager] tau0=1e+30"]
    assert rows["speca[eager] tau0=1e+30"]["options"]["precision"] == "bf16"
    assert all(r["precision"] == "bf16" for r in rows.values())
    # quality against bf16 eager: the bf16 full path is close to it, bf16 itself is off float32 by its own error
    assert rows["speca[eager] full (speculate=False)"]["rel_l2"] < 3e-2
    assert rows["speca[eager] full (speculate=False)"]["full_fraction"] == 1.0
    assert rows["speca[eager] tau0=1e+30"]["full_fraction"] == 3 / 8     # warmup 3, then never rejected
    assert 0 < rows["eager"]["rel_l2_fp32"] < 3e-2 and rows["eager"]["rel_l2"] == 0
    text = (tmp_path / "bench.md").read_text()
    assert "Precision: bf16" in text and "Rows left out:" in text and "rel L2 vs fp32" in text
    assert "Precision: bf16" in captured.out
