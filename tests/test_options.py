import pytest
import torch

import speca_compile
from speca_compile.errors import OptionsError
from speca_compile.options import Options, valid_keys
from tests.reference_dit import ReferenceDiT


def test_defaults_are_valid():
    opts = Options.parse(None)
    assert opts.speculate is True and opts.lowering == "eager" and opts.order == 2


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
    ("forecaster", "magic", "'taylor'"),
    ("speculate", 1, "must be bool"),
    ("lowering", "tvm", "valid: 'eager', 'onnxruntime', 'inductor', 'tensorrt'"),
])
def test_bad_values_are_named(key, value, fragment):
    with pytest.raises(OptionsError) as err:
        Options.parse({key: value})
    assert repr(key) in str(err.value)
    assert fragment in str(err.value)


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
