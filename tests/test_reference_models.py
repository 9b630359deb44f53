"""The trained reference models, the judge and the data split they rest on."""

import pytest
import torch

import speca_compile
from speca_compile.errors import SpecaError
from speca_compile.reference import digits, judge, store
from tests import helpers


def test_split_is_fixed_disjoint_and_stratified():
    train_x, train_y = digits.split("train")
    held_x, held_y = digits.split("held_out")
    assert train_x.shape[1:] == (1, 16, 16) and len(train_y) + len(held_y) == 1797
    assert train_x.min() >= -1 and train_x.max() <= 1
    assert torch.bincount(held_y, minlength=10).min() >= 35          # every digit held out
    flat_train = {tuple(v.flatten().tolist()) for v in train_x}
    assert not any(tuple(v.flatten().tolist()) in flat_train for v in held_x[:50])
    with pytest.raises(ValueError, match="valid: 'train', 'held_out'"):
        digits.split("test")


def test_judge_meets_its_accuracy_bar_on_held_out_digits():
    held_x, held_y = digits.split("held_out")
    assert judge.accuracy(store.load_judge(), held_x, held_y) >= 0.97


def test_digits_fd_is_near_zero_for_the_same_distribution_and_grows_with_damage():
    j = store.load_judge()
    held_x, _ = digits.split("held_out")
    train_x, _ = digits.split("train")
    same = judge.frechet_distance(j, train_x[:360], held_x)
    noisy = judge.frechet_distance(j, (train_x[:360] + 0.5 * torch.randn(360, 1, 16, 16)).clamp(-1, 1), held_x)
    assert 0 <= same < noisy


def test_missing_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECA_REFERENCE_DIR", str(tmp_path))
    with pytest.raises(SpecaError, match="python -m speca_compile.reference.train dit_digits"):
        store.load("dit_digits")


@pytest.mark.parametrize("name", store.NAMES)
def test_full_path_matches_eager_and_lowerings_agree_on_decisions(name):
    # the default engine cache: these models' shape-general engines are the ones tests/test_bundle.py
    # and examples/sample_digits.py build, so a run from an empty cache exports them once, not per test
    ref = store.load(name)
    eager = helpers.trajectory(ref, ref.model, 2, 8)
    for lowering in ("eager", "onnxruntime"):
        full = torch.compile(ref.model, backend="speca", options={"speculate": False, "lowering": lowering})
        out = helpers.trajectory(ref, full, 2, 8)
        assert helpers.rel_err(out, eager) < 1e-4, lowering
    decisions = {}
    for lowering in ("eager", "onnxruntime"):
        spec = torch.compile(ref.model, backend="speca", dynamic=True, options={"lowering": lowering})
        helpers.trajectory(ref, spec, 2, 20)
        decisions[lowering] = speca_compile.stats(spec)["trajectories"][-1]["decisions"]
    assert decisions["onnxruntime"] == decisions["eager"]
    assert sum(d.count("F") for d in decisions["eager"]) < 20 * 4     # it did speculate
