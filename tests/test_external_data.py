"""ONNX files with external data (runtime/onnx_files.py): the cache and bundles with weights beside the graph.

A segment whose weights are over ``SPECA_EXTERNAL_DATA_BYTES`` (1.5 GiB by default) is written as
``<key>.onnx`` plus ``<key>.onnx.data``, renamed, checksummed and cleaned up together.  Here the
threshold is 0, so every segment of a tiny model is written that way (tensors of 256 bytes or
less stay inside the graph, so the models are sized to have larger weights in every segment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import speca_compile
from speca_compile import sampling
from speca_compile.errors import BundleError
from speca_compile.runtime import engine_cache, onnx_files
from speca_compile.runtime.engine_cache import EngineCache, file_digest
from tests import helpers
from tests.reference_dit import PolyDiT

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# the direct torch.onnx.export calls here (onnx_export quiets its own): torch's pytree deprecation
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
ENV = onnx_files.EXTERNAL_DATA_ENV


@pytest.fixture
def external(monkeypatch):
    """Every ONNX file written from now on keeps its weights outside."""
    monkeypatch.setenv(ENV, "0")


def leftovers(cache_dir: Path):
    """Temporary files and directories: every hidden name of the cache."""
    return sorted(p.name for p in cache_dir.iterdir() if p.name.startswith("."))


def locations(onnx_file: Path):
    model = onnx.load(str(onnx_file), load_external_data=False)
    return {onnx_files._location(t) for t in onnx_files._external_tensors(model)}


def assert_entry_with_data(onnx_file: Path) -> None:
    """``<key>.onnx`` reads ``<key>.onnx.data`` (its final name, recorded as such), and the checksum
    file lists both."""
    data = onnx_file.with_name(onnx_file.name + ".data")
    assert data.is_file() and locations(onnx_file) == {data.name}
    checksum = onnx_file.with_name(onnx_file.name + ".sha256").read_text().splitlines()
    assert checksum == [f"{file_digest(onnx_file)}  {onnx_file.name}", f"{file_digest(data)}  {data.name}"]


SPECULATION = {"forecaster": "taylor", "order": 2}   # exact on PolyDiT: decisions far from the threshold


def tiny_model():
    """PolyDiT with weights over 256 bytes in every segment (a, b, c: 384 bytes)."""
    torch.manual_seed(0)
    return PolyDiT(width=96).eval()


NOISE = torch.randn(3, 4, 96, generator=torch.Generator().manual_seed(1))


def trajectory(model, steps: int) -> torch.Tensor:
    with torch.no_grad():
        return sampling.denoise(lambda x, t: model(x, torch.full((x.shape[0],), t)), NOISE, steps, "flow")


def compiled_in(cache_dir, model, **options):
    return torch.compile(model, backend="speca", dynamic=True,
                         options={"lowering": "onnxruntime", "cache_dir": str(cache_dir), "speculate": False,
                                  **options})


def engines(compiled):
    return [e for e in speca_compile.stats(compiled)["per_graph"][-1]["engines"] if e.get("builds")]


def test_the_threshold_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert onnx_files.external_data_bytes() == onnx_files.EXTERNAL_DATA_BYTES == 1536 << 20
    monkeypatch.setenv(ENV, "1000")
    assert onnx_files.external_data_bytes() == 1000
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ValueError, match=f"{ENV}='lots'"):
        onnx_files.external_data_bytes()


def test_the_cache_keeps_each_file_with_its_data_reuses_them_and_rebuilds_a_changed_one(external, tmp_path):
    cache_dir = tmp_path / "engines"
    model = tiny_model()
    eager = trajectory(model, 3)
    assert helpers.rel_err(trajectory(compiled_in(cache_dir, model), 3), eager) < 1e-4
    files = sorted(cache_dir.glob("*.onnx"))
    assert len(files) == 3   # prologue, block stack, epilogue
    for f in files:
        assert_entry_with_data(f)
    assert leftovers(cache_dir) == []

    torch._dynamo.reset()   # a second compile finds every file and its data: hits, nothing exported
    second = compiled_in(cache_dir, model)
    assert helpers.rel_err(trajectory(second, 3), eager) < 1e-4
    assert {e["cache"] for e in engines(second)} == {"hit"}

    stack = next(Path(e["file"]) for e in engines(second) if e["segment"] == "block_stack")
    data = stack.with_name(stack.name + ".data")
    changed = bytearray(data.read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    data.write_bytes(bytes(changed))
    other = next(f for f in files if f.name != stack.name)
    (cache_dir / (other.name + ".data")).unlink()   # another entry loses its data file
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third = compiled_in(cache_dir, model)
        assert helpers.rel_err(trajectory(third, 3), eager) < 1e-4
    events = {Path(e["file"]).name: e["cache"] for e in engines(third)}
    assert events[stack.name] == "corrupt" and events[other.name] == "corrupt"
    assert sorted(events.values()) == ["corrupt", "corrupt", "hit"]
    assert sum("does not match its checksum" in str(w.message) for w in caught) == 2
    for f in files:
        assert_entry_with_data(f)
    assert leftovers(cache_dir) == []


class Attention(torch.nn.Module):
    """Reshapes, a softmax and a layer norm: the shape constants fp16's shape inference reads."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return self.out(self.norm((attn @ v).transpose(1, 2).reshape(b, n, d)) + x)


def test_fp16_keeps_its_data_outside_and_computes_as_the_one_file_fp16(tmp_path, monkeypatch):
    import onnxruntime

    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 10, 64)
    with torch.no_grad():
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        eager = model(x).numpy()
    outputs, graphs = {}, {}
    for name, threshold in (("outside", "0"), ("inside", None)):
        if threshold is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, threshold)
        path = EngineCache(str(tmp_path / name)).get_or_build(
            "a" * 32, ".onnx", lambda p: (onnx_files.save_program(program, p), onnx_files.to_fp16(p)))
        session = onnxruntime.InferenceSession(str(path))
        outputs[name] = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        graphs[name] = [(n.op_type, list(n.input), list(n.output))
                        for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert_entry_with_data(tmp_path / "outside" / f"{'a' * 32}.onnx")
    inside = tmp_path / "inside" / f"{'a' * 32}.onnx"   # small files stay one self-contained file
    assert locations(inside) == set() and not list((tmp_path / "inside").glob("*.data"))
    assert (tmp_path / "inside" / f"{inside.name}.sha256").read_text().strip() == file_digest(inside)
    assert graphs["outside"] == graphs["inside"] and "Cast" in {op for op, _, _ in graphs["inside"]}
    assert (outputs["outside"] == outputs["inside"]).all()
    assert abs(outputs["inside"] - eager).max() < 1e-2


@pytest.fixture(scope="module")
def linear_program():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    with torch.no_grad():
        return torch.onnx.export(model, (torch.randn(2, 32),), dynamo=True, verbose=False)


def test_an_interrupted_build_leaves_no_files(external, tmp_path, linear_program, monkeypatch):
    cache = EngineCache(str(tmp_path))
    key = "e" * 32

    def fails_after_saving(path):
        onnx_files.save_program(linear_program, path)
        assert onnx_files.data_path(path).exists()   # the weights were written beside it
        raise KeyboardInterrupt   # interrupted between the export and the renames

    with pytest.raises(KeyboardInterrupt):
        cache.fetch(key, ".onnx", fails_after_saving)
    assert sorted(os.listdir(tmp_path)) == [f"{key}.onnx.lock"]

    # a failure after the data file was renamed into place, before the file: the data goes too
    real_replace, renamed = os.replace, []

    def checksum_rename_fails(source, dest):
        if Path(dest).parent == tmp_path:
            renamed.append(Path(dest).name)
            if Path(dest).name == f"{key}.onnx.sha256":
                raise OSError("disk full (simulated)")
        real_replace(source, dest)

    monkeypatch.setattr(engine_cache.os, "replace", checksum_rename_fails)
    with pytest.raises(OSError, match="simulated"):
        cache.fetch(key, ".onnx", lambda p: onnx_files.save_program(linear_program, p))
    assert renamed[-2:] == [f"{key}.onnx.data", f"{key}.onnx.sha256"]
    assert sorted(os.listdir(tmp_path)) == [f"{key}.onnx.lock"]
    monkeypatch.setattr(engine_cache.os, "replace", real_replace)

    path, event = cache.fetch(key, ".onnx", lambda p: onnx_files.save_program(linear_program, p))
    assert event == "miss" and sorted(os.listdir(tmp_path)) == [f"{key}.onnx", f"{key}.onnx.data",
                                                                 f"{key}.onnx.lock", f"{key}.onnx.sha256"]
    assert_entry_with_data(path)


def test_what_a_killed_build_left_is_removed_under_the_lock(external, tmp_path, linear_program, monkeypatch):
    cache = EngineCache(str(tmp_path))
    key = "d" * 32
    # a build killed (SIGKILL) mid-write: its file, checksum and data, and onnx_ir's directory
    # for the data file; and, from a kill between the renames, a data file with no file
    for name in (f".{key}.abcd1234.onnx", f".{key}.abcd1234.onnx.sha256", f".{key}.abcd1234.onnx.data",
                 f"{key}.onnx.data"):
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / f"..{key}.abcd1234.onnx.data.xyz").mkdir()
    (tmp_path / f"..{key}.abcd1234.onnx.data.xyz" / f".{key}.abcd1234.onnx.data").write_bytes(b"half")
    (tmp_path / f".{'f' * 32}.abcd1234.onnx").write_bytes(b"another entry's")   # not this entry's

    path, event = cache.fetch(key, ".onnx", lambda p: onnx_files.save_program(linear_program, p))
    assert event == "miss"
    assert leftovers(tmp_path) == [f".{'f' * 32}.abcd1234.onnx"]
    assert_entry_with_data(path)
    # and a one-file build of the key (a higher threshold) removes the older build's data file
    path.unlink()
    monkeypatch.delenv(ENV)
    cache.fetch(key, ".onnx", lambda p: onnx_files.save_program(linear_program, p))
    assert not (tmp_path / f"{key}.onnx.data").exists() and locations(path) == set()


# ---------------------------------------------------------------- bundles

RUNNER = r"""
import sys

class Blocked:
    BLOCKED = ("diffusers", "transformers", "speca_compile.reference", "speca_compile.zoo", "tests")

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
            raise ImportError(f"{name} is blocked: a bundle must run without the model's code")
        return None

sys.meta_path.insert(0, Blocked())
import torch
import speca_compile
from speca_compile import sampling

bundle, noise_file, out_file, steps = sys.argv[1:5]
model = speca_compile.load(bundle)
noise = torch.load(noise_file, weights_only=True)
out = sampling.denoise(lambda x, t: model(x, torch.full((x.shape[0],), t))[0], noise, int(steps), "flow")
torch.save({"out": out, "decisions": model.stats()["trajectories"][-1]["decisions"]}, out_file)
"""
STEPS = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of a tiny model, every segment with its weights in a data file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV, "0")
        model = tiny_model()
        path = tmp_path_factory.mktemp("external") / "bundle"
        speca_compile.export(model, (torch.randn(2, 4, 96), torch.full((2,), 0.5)), path, options=SPECULATION)
    return model, path


def test_a_bundle_carries_the_data_files_and_runs_without_the_model_code(bundle, tmp_path):
    model, path = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["segments"]) == 4
    for seg in manifest["segments"]:
        assert seg["data"] == seg["file"] + ".data"
        assert locations(path / seg["file"]) == {seg["data"]}
        assert manifest["files"][seg["data"]] == file_digest(path / seg["data"])
    assert not list(path.glob(".*")) and not [p for p in path.iterdir() if p.name.endswith(".sha256")]

    torch.save(NOISE, tmp_path / "noise.pt")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(tmp_path / "noise.pt"),
                           str(tmp_path / "out.pt"), str(STEPS)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    # the forecasts are exact on this model, so the speculative trajectory is eager's
    assert helpers.rel_err(got["out"], trajectory(model, STEPS)) < 1e-4
    assert sum(d == "AAA" for d in got["decisions"]) >= 1 and sum(d == "SSS" for d in got["decisions"]) >= 4


def test_a_missing_or_changed_data_file_is_named(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    seg = manifest["segments"][2]
    data = copy / seg["data"]
    changed = bytearray(data.read_bytes())
    changed[-1] ^= 0xFF
    data.write_bytes(bytes(changed))
    with pytest.raises(BundleError, match=rf"{seg['data']}: sha256 .* does not match.*external data of "
                                          rf"segment '{seg['name']}'"):
        speca_compile.load(copy)
    data.unlink()
    with pytest.raises(BundleError, match=rf"missing file\(s\) {seg['data']} \(the external data of segment"):
        speca_compile.load(copy)
    # a manifest naming a data file it has no checksum for is refused before any file is read
    manifest["segments"][2]["data"] = "elsewhere.data"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"segments\[2\]\.data 'elsewhere.data' has no checksum"):
        speca_compile.load(copy)
