"""``speca_compile.export``: compile a model once and write its engines and manifest as a bundle.

The model is compiled with the ONNX Runtime lowering and called on the
example inputs until every segment the runtime runs has an engine: the first
step of a trajectory is a full one (prologue, block stack, epilogue), the
verify block's engine is built by the first speculative step.  The bundle
holds those segments only: one ONNX file each, and beside a file whose
weights are over 1.5 GiB its external data (``NN_name.onnx.data``, recorded
so in the graph and as the segment's ``data`` in the manifest, with its
sha256 in ``files``: see ``runtime/onnx_files``).  The bundle is written to a
temporary directory beside the target and renamed into place at the end: an
interrupted export leaves the target as it was, and an existing bundle is
replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

import speca_compile
from speca_compile.bundle import manifest as mf
from speca_compile.errors import BundleError
from speca_compile.options import Options
from speca_compile.passes.partition import ValueRef
from speca_compile.registry import runners_for
from speca_compile.runtime.engine_cache import file_digest
from speca_compile.runtime.onnx_files import copy_onnx

MANIFEST = "manifest.json"
EXAMPLE_INPUTS = "example_inputs.pt"
_NOT_OPTIONS = ("lowering", "engine_choice", "cache_dir", "progress", "on_lowering_error", "generation_key")


def export(model: torch.nn.Module, example_inputs, out_dir, options: Optional[Mapping[str, Any]] = None,
           overwrite: bool = False, dynamic: bool = True, example_kwargs: Optional[Mapping] = None,
           serving: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model``'s speca engines for ``example_inputs`` to the bundle ``out_dir``; returns its path.

    ``example_inputs``: a dict of keyword arguments, a tuple of positional ones,
    or one tensor; ``example_kwargs`` adds keyword arguments to positional ones.  ``dynamic=True`` (default) exports batch and token axes as
    dynamic, so the bundle serves other batch sizes and resolutions.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists; pass overwrite=True to replace it")
    fixed = sorted(k for k in (options or {}) if k in _NOT_OPTIONS)
    if fixed:
        raise BundleError(f"export sets {', '.join(fixed)} itself (bundles run ONNX Runtime engines); "
                          "leave them out of options")
    args, kwargs = _split(example_inputs)
    kwargs.update(example_kwargs or {})
    serving = _serving_section(serving)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        settings = Options.parse({**dict(options or {}), "lowering": "onnxruntime",
                                  "cache_dir": str(work / "engine_cache")})
        compiled = torch.compile(model, backend="speca", dynamic=dynamic, options=settings)
        with torch.no_grad():
            compiled(*args, **kwargs)
        runners = runners_for(compiled)
        if not runners:
            raise BundleError("export: the model ran without the speca backend (Dynamo fell back to eager; "
                              "see its warnings, e.g. the recompile limit)")
        bundle = work / "bundle"
        bundle.mkdir()
        manifest = describe(runners[-1], bundle, _positions(model))
        torch.save({"args": list(args), "kwargs": dict(kwargs)}, bundle / EXAMPLE_INPUTS)
        files = {p.name: file_digest(p) for p in sorted(bundle.iterdir())}
        manifest = dataclasses.replace(manifest, files=files, serving=serving)
        mf.parse(json.loads(json.dumps(manifest.to_json())))   # the loader's checks, before anything is moved
        (bundle / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1))
        _move_into_place(bundle, out, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def describe(runner, bundle: Path, positions: Optional[Dict[str, int]] = None) -> mf.Manifest:
    """The manifest of ``runner``'s program; copies each segment's ONNX file into ``bundle``.
    ``positions``: the forward's parameter positions, so named inputs may be passed positionally."""
    positions = positions or {}
    program = runner.program
    graph_inputs = runner.graph_inputs
    inputs: Dict[str, mf.InputDecl] = {}
    placeholders = []
    for gi in graph_inputs:
        if gi.kind == "input":
            if gi.dtype is None:
                raise BundleError(f"export: call argument {gi.key!r} ({gi.source}) is not a tensor; bundles "
                                  "take tensor inputs only (pass numbers as tensors)")
            position = int(gi.key) if gi.key.isdigit() else positions.get(gi.key)
            inputs[gi.key] = mf.InputDecl(gi.key, str(gi.dtype).replace("torch.", ""), gi.shape, position)
            placeholders.append(mf.PlaceholderDecl(gi.name, "input", key=gi.key))
        elif gi.kind == "dim":
            placeholders.append(mf.PlaceholderDecl(gi.name, "dim", key=gi.key, axis=gi.axis))
        else:
            if gi.name in program.user_inputs and gi.number is None:
                raise BundleError(f"export: graph input {gi.source} is neither a call argument nor module "
                                  "state; bundles cannot feed it")
            placeholders.append(mf.PlaceholderDecl(gi.name, "module", value=gi.number))
    for p in placeholders:   # a dim's axis is dynamic in its input
        if p.kind == "dim" and p.key in inputs:
            d = inputs[p.key]
            inputs[p.key] = dataclasses.replace(d, shape=tuple(None if i == p.axis else s
                                                                for i, s in enumerate(d.shape)))
    runs = list(program.full_path)
    subset = program.verify_tokens is not None
    if runner.speculating:   # what a check runs: the verify block, or its token subset
        runs.insert(1, program.verify_tokens if subset else program.units[runner.verify_unit])
    segments = tuple(_segment(i, seg, runner.engines[seg.name], bundle) for i, seg in enumerate(runs))
    outputs = _output_names(program.output)
    tensor_names = {seg.outputs[i] for seg in segments for i in seg.tensor_outputs}
    tensor_names |= {p.name for p in placeholders if p.kind == "input"}
    # scalars entering the first block (sizes, module constants) are baked into its engine;
    # everything the runtime itself handles (outputs, cached features) must be a tensor
    handled = program.stack.outputs if program.stack is not None else [n for c in program.cuts[1:] for n in c]
    for name in outputs + tuple(handled):
        if name not in tensor_names:
            raise BundleError(f"export: {name!r} (an output or cut value) is not a tensor an engine computes")
    settings = {k: getattr(runner.options, k) for k in mf.SETTINGS + tuple(mf.LATER_SETTINGS)}
    return mf.Manifest(tuple(inputs.values()), tuple(placeholders), segments, program.cuts,
                       tuple(program.plan.units), program.stack.name if program.stack is not None else None,
                       outputs, runner.timestep_index,
                       None if runner.batch_inputs is None else tuple(runner.batch_inputs),
                       program.batch_size if isinstance(program.batch_size, int) else None,
                       runner.reason, settings, {}, _versions(),
                       side_values=program.side_values,
                       verify_tokens=tuple(program.verify_token_strides) if subset and runner.speculating else None)


def _segment(index: int, segment, engine, bundle: Path) -> mf.SegmentDecl:
    variants = getattr(engine, "variants", None)
    if variants is None:
        raise BundleError(f"export: segment {segment.name!r} has no ONNX Runtime engine "
                          f"({type(engine).__name__})")
    if len(variants) != 1:
        raise BundleError(f"export: segment {segment.name!r} has {len(variants)} engine variants (it bakes "
                          "in scalar inputs that changed between calls); bundles hold one per segment")
    variant = next(iter(variants.values()))
    verdict = getattr(variant, "verdict", None)
    if verdict is None or not verdict.passed:   # the loader has no eager segment to check against
        raise BundleError(f"export: the engine of segment {segment.name!r} "
                          + ("was never checked against eager" if verdict is None else
                             f"disagrees with eager ({verdict.reason or f'rel L2 {verdict.error:.2e}'}, "
                             f"bound {verdict.bound:.0e})")
                          + "; a bundle holds checked engines only")
    file = f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', segment.name)}.onnx"
    # the cache is the export's own (removed at the end): its files may be linked, not copied
    data = copy_onnx(engine.info["file"], bundle / file, link=True)
    return mf.SegmentDecl(segment.name, file, tuple(segment.inputs), tuple(segment.outputs),
                          tuple(variant.io.tensor_inputs), tuple(variant.input_names),
                          tuple(variant.io.tensor_outputs), data.name if data is not None else None,
                          {"rel_error": float(verdict.error), "bound": float(verdict.bound),
                           "source": verdict.source})


def _serving_section(serving: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``serving`` as JSON values (tensors as nested lists), or BundleError naming the field."""
    if serving is None:
        return None
    if not isinstance(serving, Mapping):
        raise BundleError(f"export: serving must be a dict, got {type(serving).__name__}")
    out = dict(serving)
    if out.get("negative_inputs") is not None:
        out["negative_inputs"] = {k: v.tolist() if isinstance(v, torch.Tensor) else v
                                  for k, v in dict(out["negative_inputs"]).items()}
    try:
        json.dumps(out)
    except TypeError as exc:
        raise BundleError(f"export: serving is not JSON-serialisable ({exc})") from None
    return out


def _output_names(tree) -> Tuple[str, ...]:
    leaves = tree if isinstance(tree, (tuple, list)) else (tree,)
    if not all(isinstance(leaf, ValueRef) for leaf in leaves):
        raise BundleError("export: the model's graph returns something other than a flat tuple of tensors "
                          "(call it with return_dict=False)")
    return tuple(leaf.name for leaf in leaves)


def _positions(model) -> Dict[str, int]:
    """Positions of ``model.forward``'s parameters that can be passed positionally."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {name: i for i, name in enumerate(names)}


def _split(example_inputs) -> Tuple[Sequence, Dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise BundleError(f"example_inputs must be a dict of keyword arguments, a tuple or a tensor, "
                      f"got {type(example_inputs).__name__}")


def _move_into_place(bundle: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise BundleError(f"{out} appeared during the export; not replaced (overwrite=False)")
        old = bundle.parent / "replaced"
        out.rename(old)
    bundle.rename(out)


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime

    return {"speca_compile": speca_compile.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
