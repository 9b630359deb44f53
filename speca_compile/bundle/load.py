"""``speca_compile.load``: run a bundle from its manifest alone, without the model's code or weights.

Everything is checked before anything runs: the manifest's schema and
fields, that the directory holds exactly the listed files (a segment's
external data file included), and every file's sha256.  Each call is then
checked against the declared inputs (names, dtypes, ranks, fixed sizes).  The runner, the feature cache and the
speculation policy are the same objects the compiled model uses; the
segments are ONNX Runtime sessions over the bundle's files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from speca_compile.bundle import manifest as mf
from speca_compile.bundle.export import EXAMPLE_INPUTS, MANIFEST
from speca_compile.errors import BundleError
from speca_compile.options import Options
from speca_compile.passes.find_blocks import BlockPlan
from speca_compile.passes.partition import Segment, SpeculativeProgram, ValueRef, unit_segment_name
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.engine_cache import file_digest
from speca_compile.runtime.onnxruntime_engine import make_session, run_session
from speca_compile.runtime.runner import Runner

BUNDLE_LOWERINGS = ("onnxruntime",)


def read_manifest(path) -> mf.Manifest:
    """The checked manifest of the bundle at ``path`` (files not yet verified)."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a bundle directory")
    file = folder / MANIFEST
    if not file.is_file():
        raise BundleError(f"{folder}: no {MANIFEST}")
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: not valid JSON ({exc})") from None
    return mf.parse(data)


def verify_files(path, manifest: mf.Manifest) -> None:
    """Exactly the listed files, each with its recorded sha256."""
    folder = Path(path)
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise BundleError(f"{folder}: missing file(s) {', '.join(_named(manifest, n) for n in missing)} "
                          f"listed in {MANIFEST}")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise BundleError(f"{folder}: unexpected file(s) {', '.join(extra)} not listed in {MANIFEST}")
    for name, expected in manifest.files.items():
        actual = file_digest(folder / name)
        if actual != expected:
            raise BundleError(f"{folder / name}: sha256 {actual[:16]}... does not match the manifest's "
                              f"{expected[:16]}... (the file changed after export)"
                              + (f"; it is {_data_of(manifest, name)}" if _data_of(manifest, name) else ""))


def _data_of(manifest: mf.Manifest, name: str) -> str:
    """``name`` as "the external data of segment ..." if it is one, else ""."""
    owner = next((d.name for d in manifest.segments if d.data == name), None)
    return f"the external data of segment {owner!r}" if owner is not None else ""


def _named(manifest: mf.Manifest, name: str) -> str:
    role = _data_of(manifest, name)
    return f"{name} ({role})" if role else name


def load(path, lowering: str = "onnxruntime", device: str = "cpu") -> "BundleModel":
    """A callable model from the bundle at ``path``; raises ``BundleError`` naming any problem."""
    if lowering not in BUNDLE_LOWERINGS:
        raise BundleError(f"load: lowering {lowering!r} is not supported for bundles; valid: "
                          f"{', '.join(BUNDLE_LOWERINGS)}")
    manifest = read_manifest(path)
    verify_files(path, manifest)
    return BundleModel(Path(path), manifest, torch.device(device))


class BundleEngine(Engine):
    """One segment as an ONNX Runtime session; non-tensor inputs are baked into the graph."""

    name = "onnxruntime (bundle)"

    def __init__(self, decl: mf.SegmentDecl, session):
        self.decl = decl
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        # the check against eager it passed at export (``checked_at_export``: None in older bundles);
        # a loaded bundle has no eager segment to compare with, the files' sha256 ties them to it
        self.info = {"segment": decl.name, "file": decl.file, "checked_at_export": decl.check}
        if len(self.output_names) != len(decl.tensor_outputs):
            raise BundleError(f"{decl.file}: the ONNX graph has {len(self.output_names)} outputs, the manifest "
                              f"declares {len(decl.tensor_outputs)} for segment {decl.name!r}")

    def run(self, inputs: Sequence) -> List:
        tensors = [inputs[i] for i in self.decl.tensor_inputs]
        outputs = run_session(self.session, self.decl.onnx_inputs, self.output_names, tensors)
        result: List = [None] * len(self.decl.outputs)
        for i, t in zip(self.decl.tensor_outputs, outputs):
            result[i] = t
        return result


class BundleModel:
    """Calls like the exported model (same positional and keyword tensors); returns a tuple of tensors."""

    def __init__(self, path: Path, manifest: mf.Manifest, device: torch.device):
        self.path = path
        self.manifest = manifest
        on_gpu = device.type == "cuda"
        engines: Dict[str, Engine] = {}
        for decl in manifest.segments:
            session = make_session(path / decl.file, on_gpu, f"bundle segment {decl.name!r}")
            engines[decl.name] = BundleEngine(decl, session)
        declared = {d.name: Segment(d.name, None, d.inputs, d.outputs) for d in manifest.segments}
        if manifest.cuts:   # blocks the runtime never runs alone are not in the bundle
            names = (["prologue"] + [unit_segment_name(i, u) for i, u in enumerate(manifest.units)]
                     + ["epilogue"])
            segments = tuple(declared.get(n, Segment(n, None, (), ())) for n in names)
        else:
            segments = tuple(declared.values())
        plan = BlockPlan(stacks=(), units=manifest.units, assignment={})
        program = SpeculativeProgram(
            placeholders=tuple(p.name for p in manifest.placeholders),
            user_inputs=tuple(p.name for p in manifest.placeholders if p.kind != "module"),
            segments=segments, cuts=manifest.cuts, output=tuple(ValueRef(n) for n in manifest.outputs),
            plan=plan, shapes={}, batch_size=manifest.batch_size, reason=manifest.reason,
            stack=declared.get(manifest.stack) if manifest.stack is not None else None,
            side_values=manifest.side_values,
            verify_tokens=declared.get(mf.VERIFY_TOKENS) if manifest.verify_tokens is not None else None,
            verify_token_strides=manifest.verify_tokens or ())
        options = Options.parse({**manifest.settings, "lowering": "onnxruntime"})
        notes = [f"loaded from bundle {path}"]
        if manifest.verify_tokens is not None:
            notes.append(f"verify_stride={options.verify_stride}: the verify block checks every "
                         f"{options.verify_stride}-th token (the bundle's {mf.VERIFY_TOKENS} segment)")
        elif options.verify_stride > 1:
            notes.append(f"verify_stride={options.verify_stride}: every token checked (the export "
                         "found no token subset of the verify block)")
        self.runner = Runner(program, engines, options, manifest.batch_inputs, manifest.timestep_index,
                             manifest.reason, notes=tuple(notes))

    def __call__(self, *args, **kwargs):
        given = self.by_key(args, kwargs)
        self._check(given)
        flat = []
        for p in self.manifest.placeholders:
            if p.kind == "input":
                flat.append(given[p.key])
            elif p.kind == "dim":
                flat.append(int(given[p.key].shape[p.axis]))
            else:
                flat.append(p.value)
        with torch.no_grad():
            return self.runner(*flat)

    def by_key(self, args: Sequence, kwargs: Dict) -> Dict[str, object]:
        """Positional and keyword call inputs as one dict keyed by the manifest's input keys."""
        by_position = {d.position: d.key for d in self.manifest.inputs if d.position is not None}
        if any(i not in by_position for i in range(len(args))):
            raise BundleError(f"bundle takes {len(by_position)} positional input(s) "
                              f"({', '.join(by_position[i] for i in sorted(by_position))}), got {len(args)}")
        given = {by_position[i]: v for i, v in enumerate(args)}
        overlap = sorted(set(given) & set(kwargs))
        if overlap:
            raise BundleError(f"bundle input(s) {overlap} given twice")
        given.update(kwargs)
        return given

    def _check(self, given: Dict[str, object]) -> None:
        declared = {d.key: d for d in self.manifest.inputs}
        missing = sorted(set(declared) - set(given))
        unknown = sorted(set(given) - set(declared))
        if missing or unknown:
            raise BundleError(f"bundle inputs: expected {_describe(self.manifest.inputs)}"
                              + (f"; missing {missing}" if missing else "")
                              + (f"; unexpected {unknown}" if unknown else ""))
        for key, decl in declared.items():
            value = given[key]
            if not isinstance(value, torch.Tensor):
                raise BundleError(f"bundle input {key!r}: expected a tensor, got {type(value).__name__}")
            dtype = str(value.dtype).replace("torch.", "")
            if dtype != decl.dtype:
                raise BundleError(f"bundle input {key!r}: dtype {dtype}, expected {decl.dtype}")
            if value.dim() != len(decl.shape) or any(
                    want is not None and got != want for got, want in zip(value.shape, decl.shape)):
                raise BundleError(f"bundle input {key!r}: shape {list(value.shape)}, expected "
                                  f"{format_shape(decl.shape)}")

    def example_inputs(self):
        """The (args, kwargs) the bundle was exported with."""
        saved = torch.load(self.path / EXAMPLE_INPUTS, weights_only=True)
        return tuple(saved["args"]), dict(saved["kwargs"])

    def stats(self) -> Dict:
        return self.runner.stats()

    def reset(self) -> None:
        self.runner.reset()


def format_shape(shape) -> str:
    return "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"


def _describe(inputs) -> str:
    return ", ".join(f"{d.key}: {d.dtype}{format_shape(d.shape)}" for d in inputs)
