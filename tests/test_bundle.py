"""Engine bundles: export, load in a fresh process without model code, every bad input named."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import speca_compile
from speca_compile.bundle import export as export_mod
from speca_compile.bundle import manifest as mf
from speca_compile.errors import BundleError
from speca_compile.runtime.onnxruntime_engine import SPIN_DURING_RUN
from tests import helpers
from tests.helpers import build, noise_for
from tests.reference_dit import OriginalDiT, PolyDiT

REPO = Path(__file__).resolve().parents[1]
STEPS = 20


@pytest.fixture(scope="module", params=["dit_digits", "flux_digits"])
def exported(request, reference_bundles):
    return reference_bundles.get(request.param)


def test_bundle_reproduces_the_compiled_model_in_a_process_without_model_code(exported, tmp_path):
    ref, path, fixed, noise = exported
    torch._dynamo.reset()
    compiled = torch.compile(ref.model, backend="speca", dynamic=True, options={"lowering": "onnxruntime"})
    expected = helpers.trajectory(ref, compiled, noise.shape[0], STEPS, extra={"labels": None, **fixed},
                                  noise=noise)
    decisions = speca_compile.stats(compiled)["trajectories"][-1]["decisions"]
    inputs, result = tmp_path / "inputs.pt", tmp_path / "result.pt"
    torch.save({"noise": noise, "fixed": fixed, "kind": ref.kind, "steps": STEPS, "guidance": ref.guidance},
               inputs)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "bundle_runner.py"), str(path), str(inputs),
                           str(result)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(result, weights_only=True)
    assert helpers.rel_err(got["out"], expected) < 1e-4
    assert got["decisions"] == decisions
    assert any("A" in d or "S" in d for d in decisions)


def test_bundle_holds_the_segments_the_runtime_runs(exported, tmp_path):
    """Full steps run the fused block stack, speculative ones the verify block alone: the bundle
    holds those four engines, and a manifest without the verify block is refused."""
    ref, path, _, _ = exported
    manifest = json.loads((path / "manifest.json").read_text())
    verify = manifest["units"][-1]
    names = [s["name"] for s in manifest["segments"]]
    assert names == ["prologue", f"block_{len(manifest['units']) - 1}:{verify}", "block_stack", "epilogue"]
    assert manifest["stack"] == "block_stack" and len(list(path.glob("*.onnx"))) == 4
    manifest["segments"] = [s for s in manifest["segments"] if s["name"] != names[1]]
    with pytest.raises(BundleError, match=rf"'segments' lacks {names[1]}, which the runtime runs"):
        mf.parse(manifest)


def _copy(exported, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported[1], target)
    return target


def test_missing_extra_and_changed_files_are_named(exported, tmp_path):
    path = _copy(exported, tmp_path)
    onnx_file = sorted(path.glob("*.onnx"))[1]
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{onnx_file.name}: sha256 .* does not match"):
        speca_compile.load(path)
    onnx_file.unlink()
    with pytest.raises(BundleError, match=rf"missing file\(s\) {onnx_file.name}"):
        speca_compile.load(path)
    shutil.copyfile(exported[1] / onnx_file.name, onnx_file)
    (path / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"unexpected file\(s\) notes.txt"):
        speca_compile.load(path)


def test_schema_version_and_broken_manifest_are_named(exported, tmp_path):
    path = _copy(exported, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        speca_compile.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        speca_compile.load(path)
    with pytest.raises(BundleError, match="not a bundle directory"):
        speca_compile.load(tmp_path / "nowhere")


def test_every_segment_carries_its_check_against_eager(exported, tmp_path):
    """A loaded bundle has no eager segment to compare with: each engine's first-call check at
    export is recorded (and shown in ``stats``); a record outside its bound is refused, and an
    engine that was never checked, or failed, is not exported."""
    from types import SimpleNamespace

    from speca_compile.bundle import export as bundle_export
    from speca_compile.runtime.engine_check import Verdict

    ref, path, fixed, noise = exported
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    for seg in manifest["segments"]:
        assert seg["check"]["rel_error"] <= seg["check"]["bound"] == 1e-4, seg
    model = speca_compile.load(path)
    engines = model.runner.stats()["engines"]
    assert engines and all(e["checked_at_export"]["rel_error"] <= 1e-4 for e in engines)
    copy = _copy(exported, tmp_path)
    manifest["segments"][0]["check"]["rel_error"] = 0.5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"segments\[0\].check must record a rel_error within its bound"):
        speca_compile.load(copy)
    for verdict, says in ((None, "was never checked against eager"),
                          (Verdict(False, 0.3, 1e-4, "rel L2 3.0e-01"), "disagrees with eager")):
        engine = SimpleNamespace(variants={"k": SimpleNamespace(verdict=verdict)})
        segment = SimpleNamespace(name="block_stack")
        with pytest.raises(BundleError, match=f"the engine of segment 'block_stack' {says}"):
            bundle_export._segment(0, segment, engine, tmp_path)


def test_side_values_are_recorded_and_checked(exported, tmp_path):
    """The manifest records which prologue values are per row (mixed steps share one prologue
    and epilogue); a bad entry is named; a bundle without the field (older) still loads."""
    path = _copy(exported, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["side_values"] is not None
    assert {kind for _, kind in manifest["side_values"]} <= {"row", "shared", "count"}
    manifest["side_values"] = [["x", "sometimes"]]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"side_values\[0\] is \['x', 'sometimes'\]"):
        speca_compile.load(path)
    del manifest["side_values"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert speca_compile.load(path).runner.program.side_values is None


def test_wrong_inputs_are_named(exported):
    ref, path, fixed, noise = exported
    model = speca_compile.load(path)
    x = torch.cat([noise, noise])
    t = torch.full((x.shape[0],), 0.5)
    with pytest.raises(BundleError, match="missing"):
        model(x, **fixed)
    with pytest.raises(BundleError, match="unexpected \\['colour'\\]"):
        model(x, timestep=t, colour=t, **fixed)
    with pytest.raises(BundleError, match="input 'timestep': dtype float64, expected float32"):
        model(x, timestep=t.double(), **fixed)
    with pytest.raises(BundleError, match="input .*: shape .*expected"):
        model(x[..., None], timestep=t, **fixed)
    with pytest.raises(BundleError, match="positional input"):
        model(x, t, t, t, t, t, t, **fixed)
    assert model(x, timestep=t, **fixed)[0].shape[0] == x.shape[0]


def test_every_session_spins_during_its_runs_only(exported):
    """make_session's threading (measured in its docstring), for a loaded bundle's sessions too."""
    _, path, _, _ = exported
    for engine in speca_compile.load(path).runner.engines.values():
        options = engine.session.get_session_options()
        assert {k: options.get_session_config_entry(k) for k in SPIN_DURING_RUN} == SPIN_DURING_RUN


def test_interrupted_export_leaves_the_target_untouched(exported, tmp_path, monkeypatch):
    ref, path, fixed, noise = exported
    target = _copy(exported, tmp_path)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_mod, "_move_into_place", fail)
    # the export that fails at its last step (moving the new bundle into place) is a whole one, but of
    # a tiny model: the reference model's export is the fixture's (minutes on two cores), and which
    # model's engines were built does not matter to what is left behind
    torch.manual_seed(0)
    tiny = PolyDiT().eval()
    with pytest.raises(OSError, match="simulated"):
        speca_compile.export(tiny, (torch.randn(2, 4, 8), torch.full((2,), 0.5)), target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]      # no half bundle, no temp dir
    with pytest.raises(BundleError, match="exists; pass overwrite=True"):
        speca_compile.export(ref.model, (noise,), target)


def test_inspect_summarises_a_bundle(exported):
    from speca_compile.cli import main

    assert main(["inspect", str(exported[1])]) == 0


def test_export_refuses_options_it_sets():
    with pytest.raises(BundleError, match="lowering"):
        speca_compile.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), "/nonexistent/x",
                             options={"lowering": "eager"})


def _guided_run(model, x, y, steps=8):
    """A few Euler steps of a CFG-halving model: its outputs at every step (both halves of x equal)."""
    outs = []
    ts = torch.linspace(1.0, 0.2, steps)
    with torch.no_grad(), speca_compile.generation():
        for k, t in enumerate(ts):
            out = model(x, torch.full((x.shape[0],), float(t)), y)
            out = out[0] if isinstance(out, (tuple, list)) else out
            outs.append(out)
            if k + 1 < steps:
                x = x + (ts[k + 1] - t) * out[:, :4]
    return torch.stack(outs)


def test_original_style_dit_with_cfg_exports_and_loads(tmp_path):
    """The original DiT's forward_with_cfg: its block stack's batch is the size 2 * (B // 2), and its
    epilogue splits by len(eps) // 2.  The export once failed on both ("size expression 1/2 uses
    Half", then onnxscript's constant folding on SplitToSequence); the bundle reproduces the model
    compiled with the ONNX Runtime lowering over a short guided run, speculative steps included."""
    torch.manual_seed(0)
    model = OriginalDiT(cfg_scale=4.0).eval()
    half = torch.randn(2, 4, 8, 8)
    x, y = torch.cat([half, half]), torch.tensor([1, 2, 10, 10])
    path = speca_compile.export(model, (x, torch.full((4,), 0.5), y), tmp_path / "bundle")
    loaded = speca_compile.load(path)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="speca", dynamic=True,
                             options={"lowering": "onnxruntime", "cache_dir": str(tmp_path / "engines")})
    expected = _guided_run(compiled, x, y)
    assert helpers.rel_err(_guided_run(loaded, x, y), expected) < 1e-4
    assert helpers.rel_err(expected[0], _guided_run(model, x, y, steps=1)[0]) < 1e-4   # a full step: eager's
    # and in a process that cannot import the model's code (tests.reference_dit) or diffusers
    torch.save({"x": x, "y": y}, tmp_path / "inputs.pt")
    done = subprocess.run([sys.executable, "-c", _GUIDED_RUNNER, str(path), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert helpers.rel_err(got["outs"], expected) < 1e-4
    assert got["decisions"] == speca_compile.stats(compiled)["trajectories"][-1]["decisions"]


# _guided_run in a process where the model's code cannot be imported
_GUIDED_RUNNER = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in ("diffusers", "tests", "speca_compile.reference")):
            raise ImportError(name + " is blocked: a bundle must run without the model's code")
sys.meta_path.insert(0, _Blocked())
import torch, speca_compile
bundle, inputs, out = sys.argv[1:]
data = torch.load(inputs, weights_only=True)
model, x, y = speca_compile.load(bundle), data["x"], data["y"]
outs, ts = [], torch.linspace(1.0, 0.2, 8)
with torch.no_grad(), speca_compile.generation():
    for k, t in enumerate(ts):
        o = model(x, torch.full((x.shape[0],), float(t)), y)[0]
        outs.append(o)
        if k + 1 < len(ts):
            x = x + (ts[k + 1] - t) * o[:, :4]
torch.save({"outs": torch.stack(outs), "decisions": model.stats()["trajectories"][-1]["decisions"]}, out)
"""


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_manifest_parser_never_crashes_on_arbitrary_json(data):
    try:
        mf.parse(data)
    except BundleError:
        pass


def _valid_manifest():
    return {"format": mf.FORMAT, "schema_version": mf.SCHEMA_VERSION,
            "inputs": [{"key": "x", "dtype": "float32", "shape": [None, 4], "position": 0}],
            "placeholders": [{"name": "l_x_", "kind": "input", "key": "x"},
                             {"name": "s0", "kind": "dim", "key": "x", "axis": 0},
                             {"name": "w", "kind": "module", "value": None}],
            "segments": [{"name": "whole_graph", "file": "a.onnx", "inputs": ["l_x_"], "outputs": ["y"],
                          "tensor_inputs": [0], "onnx_inputs": ["l_x_"], "tensor_outputs": [0]}],
            "cuts": [], "units": [], "stack": None, "outputs": ["y"], "timestep_index": 0, "batch_inputs": [0],
            "batch_size": None, "reason": None, "settings": {k: None for k in mf.SETTINGS},
            "files": {"a.onnx": "0" * 64}, "created_with": {}}


def test_the_valid_fuzz_seed_parses():
    assert mf.parse(_valid_manifest()).inputs[0].key == "x"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_manifest_parser_never_crashes_on_a_mutated_manifest(data):
    manifest = _valid_manifest()
    node, path = manifest, []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append((node, key))
        node = node[key]
    if path:
        parent, key = path[-1]
        parent[key] = data.draw(_json)
    try:
        mf.parse(manifest)
    except BundleError:
        pass


def test_a_token_subset_check_is_exported_and_runs_from_the_bundle(tmp_path):
    """verify_stride > 1: the bundle holds the verify block on every k-th token (segment
    verify_tokens) instead of the whole block and records the strides; the loaded bundle checks
    with it (stats say so) and reproduces the model compiled with the same options, decisions
    included.  A manifest whose strides do not fit the segment is refused by name."""
    z = build("dit")
    options = {"verify_stride": 2, "tau0": 0.2}
    noise, extra = noise_for(z, 2, 0), z.make_inputs(2, 1)
    path = speca_compile.export(z.model, (noise,), tmp_path / "bundle", options=options,
                                example_kwargs={"timestep": torch.full((2,), 999.0), "return_dict": False, **extra})
    manifest = json.loads((path / "manifest.json").read_text())
    names = [s["name"] for s in manifest["segments"]]
    assert names == ["prologue", "verify_tokens", "block_stack", "epilogue"]
    assert manifest["verify_tokens"] == [2] and manifest["settings"]["verify_stride"] == 2
    loaded = speca_compile.load(path)

    def bundle(*args, return_dict=None, **kwargs):
        return loaded(*args, **kwargs)

    got = helpers.trajectory(z, bundle, 2, 12)
    torch._dynamo.reset()
    compiled = torch.compile(z.model, backend="speca", dynamic=True,
                             options={"lowering": "onnxruntime", "cache_dir": str(tmp_path / "engines"), **options})
    expected = helpers.trajectory(z, compiled, 2, 12)
    assert helpers.rel_err(got, expected) < 1e-4
    stats, reference = loaded.stats(), speca_compile.stats(compiled)["per_graph"][0]
    assert stats["verify_tokens"] == reference["verify_tokens"] == [2]
    assert any("checks every 2-th token" in n for n in stats["notes"]), stats["notes"]
    decisions = stats["trajectories"][-1]["decisions"]
    assert decisions == reference["trajectories"][-1]["decisions"] and any("A" in d for d in decisions)
    manifest["verify_tokens"] = [2, 2]
    with pytest.raises(BundleError, match="'verify_tokens' holds 2 stride"):
        mf.parse(manifest)
