import pytest
import torch

import speca_compile
from speca_compile.errors import OptionsError
from speca_compile.options import Options, valid_keys
from tests.reference_dit import ReferenceDiT


def test_defaults_are_valid():
    opts = Options.parse(None)
    assert opts.speculate is True and opts.lowering == "auto" and opts.order == 1
    assert opts.forecaster == "hermite"


def test_auto_lowering_is_onnxruntime_on_the_cpu_and_says_so_elsewhere():
    from speca_compile.runtime.engine import resolve_lowering

    opts = Options.parse(None)
    cpu, note = resolve_lowering(opts, [torch.zeros(2), 3])
    assert cpu.lowering == "onnxruntime" and note == (
        "lowering 'auto': onnxruntime (inputs on the cpu); each segment then runs on the faster of "
        "onnxruntime and eager, measured on its first call")
    assert cpu.engine_choice == "measure"
    assert cpu.on_lowering_error == "eager"       # auto: a segment that cannot export runs eagerly (warned)
    # a device onnxruntime has no provider for (meta stands in for a GPU without onnxruntime-gpu)
    other, note = resolve_lowering(opts, [torch.zeros(2, device="meta")])
    assert other.lowering == "eager" and "inputs on meta" in note
    explicit = Options.parse({"lowering": "onnxruntime"})
    assert resolve_lowering(explicit, [torch.zeros(2)]) == (
        explicit.replace(on_lowering_error="raise", engine_choice="lowering"), None)
    chosen = Options.parse({"on_lowering_error": "raise"})
    assert resolve_lowering(chosen, [torch.zeros(2)])[0].on_lowering_error == "raise"


def test_auto_lowering_on_cuda_is_inductor_unless_onnxruntime_has_a_cuda_provider(monkeypatch):
    from speca_compile.runtime import engine, onnxruntime_engine

    monkeypatch.setattr(onnxruntime_engine, "cuda_provider_available", lambda: False)
    lowering, note = engine.auto_lowering({"cuda"})
    assert lowering == "inductor" and "speca-compile[gpu]" in note
    monkeypatch.setattr(onnxruntime_engine, "cuda_provider_available", lambda: True)
    assert engine.auto_lowering({"cuda", "cpu"})[0] == "onnxruntime"
    assert engine.auto_lowering({"cpu"})[0] == "onnxruntime"


def test_default_compile_runs_onnxruntime_engines_and_reports_why():
    model = ReferenceDiT(depth=3).eval()
    compiled = torch.compile(model, backend="speca")
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 10.0]), torch.tensor([1, 2])
    with torch.no_grad():
        out = compiled(x, t, y)
        ref = model(x, t, y)
    stats = speca_compile.registry.runners_for(compiled)[0].stats()
    assert stats["lowering"] == "onnxruntime"
    assert any(n.startswith("lowering 'auto': onnxruntime (inputs on the cpu)") for n in stats["notes"])
    assert stats["engines"] and all(e.get("cache") for e in stats["engines"])
    assert not any("fallback" in e for e in stats["engines"])
    assert float((out - ref).norm() / ref.norm()) < 1e-4


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(OptionsError) as err:
        Options.parse({"ordr": 2})
    message = str(err.value)
    assert "'ordr'" in message
    for key in valid_keys():
        assert key in message


@pytest.mark.parametrize("key,value,fragment", [
    ("order", -1, "valid range [0, 8]"),
    ("order", 2.5, "must be int"),
    ("tau0", -0.1, "valid range"),
    ("tau0", float("nan"), "must be a number"),
    ("beta", 0.0, "valid range (0.0, 1.0]"),
    ("beta", 1.5, "valid range"),
    ("warmup", 0, "valid range >= 1"),
    ("max_speculative", 0, "valid range >= 1"),
    ("error_metric", "l2", "'rel_l2', 'rel_l1'"),
    ("on_reject", "retry", "'recompute', 'defer'"),
    ("forecaster", "magic", "'taylor', 'hermite', 'foca'"),
    ("speculate", 1, "must be bool"),
    ("lowering", "tvm", "valid: 'auto', 'eager', 'onnxruntime', 'inductor', 'tensorrt'"),
    ("precision", "int8", "'fp32', 'fp16', 'bf16'"),
])
def test_bad_values_are_named(key, value, fragment):
    with pytest.raises(OptionsError) as err:
        Options.parse({key: value})
    assert repr(key) in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize("lowering", ["eager", "inductor"])
def test_half_precision_needs_an_onnx_lowering(lowering):
    from speca_compile.runtime.engine import resolve_lowering

    with pytest.raises(OptionsError, match=r"'precision' 'fp16' needs lowering 'onnxruntime' or 'tensorrt'"):
        Options.parse({"precision": "fp16", "lowering": lowering})
    half = Options.parse({"precision": "fp16"})      # auto: onnxruntime on the cpu ...
    assert resolve_lowering(half, [torch.zeros(2)])[0].lowering == "onnxruntime"
    with pytest.raises(OptionsError, match="'precision' 'fp16' needs lowering"):   # ... eager elsewhere
        resolve_lowering(half, [torch.zeros(2, device="meta")])


def test_min_above_max_is_rejected():
    with pytest.raises(OptionsError, match="min_speculative"):
        Options.parse({"min_speculative": 6, "max_speculative": 5})


def test_non_dict_options_rejected():
    with pytest.raises(OptionsError, match="must be a dict"):
        Options.parse(["order", 2])


def _compile_and_call(options):
    model = ReferenceDiT(depth=3).eval()
    compiled = torch.compile(model, backend="speca", options=options)
    with torch.no_grad():
        compiled(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.tensor([1]))


def test_backend_rejects_unknown_option_at_compile():
    with pytest.raises(Exception) as err:
        _compile_and_call({"tau": 0.1})
    assert "unknown option(s) 'tau'" in str(err.value)


def test_verify_block_out_of_range_names_the_valid_range():
    with pytest.raises(Exception) as err:
        _compile_and_call({"verify_block": 3})
    assert "'verify_block' got 3" in str(err.value) and "[-3, 2]" in str(err.value)


def test_unknown_timestep_input_lists_graph_inputs():
    with pytest.raises(Exception) as err:
        _compile_and_call({"timestep_input": "sigma_t"})
    assert "'sigma_t'" in str(err.value) and "x, y" in str(err.value).replace("t, x", "x")
