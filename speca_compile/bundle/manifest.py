"""The bundle manifest: what a bundle holds, written as JSON and checked field by field on load.

``parse`` is the only way a manifest comes in: any JSON value, however
malformed, gives a ``Manifest`` or a ``BundleError`` naming the field and what
was expected (the loader is fuzzed with that promise).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from speca_compile.errors import BundleError
from speca_compile.passes.partition import unit_segment_name
# the segment of the verify block on a token subset (named by the pass that makes it)
from speca_compile.passes.token_subset import SEGMENT_NAME as VERIFY_TOKENS

FORMAT = "speca-bundle"
SCHEMA_VERSION = 2   # 2: only the segments the runtime runs, and the fused block stack
# (a segment's optional ``data``, its external weights, came within version 2: older readers load
# such bundles too, the data file being listed in ``files`` and read by ONNX Runtime beside its graph)
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")
PLACEHOLDER_KINDS = ("input", "dim", "module")
SETTINGS = ("speculate", "forecaster", "order", "hermite_sigma", "tau0", "beta", "warmup", "min_speculative",
            "max_speculative", "verify_block", "error_metric", "on_reject", "timestep_input")
# settings added after schema 2, with the value a bundle written before them ran with
LATER_SETTINGS = {"acceptance": "step", "check_margin": 0.5, "max_check_gap": 5, "verify_stride": 1,
                  "align_full_steps": 2}


@dataclasses.dataclass(frozen=True)
class InputDecl:
    key: str                                  # "0", "1", ... positional; else the keyword
    dtype: str
    shape: Tuple[Optional[int], ...]          # None: any size (a dynamic axis)
    position: Optional[int] = None            # where it may be passed positionally


@dataclasses.dataclass(frozen=True)
class PlaceholderDecl:
    name: str
    kind: str                                 # input | dim | module
    key: Optional[str] = None                 # input, dim: which call input
    axis: Optional[int] = None                # dim: which axis of it
    value: Any = None                         # module: a number, or None (a weight inside the engines)


@dataclasses.dataclass(frozen=True)
class SegmentDecl:
    name: str
    file: str
    inputs: Tuple[str, ...]                   # program value names, in the segment's order
    outputs: Tuple[str, ...]
    tensor_inputs: Tuple[int, ...]            # positions of ``inputs`` the ONNX graph takes
    onnx_inputs: Tuple[str, ...]              # their names in the ONNX graph
    tensor_outputs: Tuple[int, ...]           # positions of ``outputs`` the ONNX graph gives
    data: Optional[str] = None                # the ONNX file's external data (weights over 1.5 GiB), beside it
    # the engine's first-call check at export: {"rel_error", "bound", "source"} (absent in older bundles)
    check: Optional[Dict[str, Any]] = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    inputs: Tuple[InputDecl, ...]
    placeholders: Tuple[PlaceholderDecl, ...]
    segments: Tuple[SegmentDecl, ...]        # prologue, the verify block, epilogue, the block stack
    cuts: Tuple[Tuple[str, ...], ...]
    units: Tuple[str, ...]
    stack: Optional[str]                      # the segment running all blocks (full steps), if any
    outputs: Tuple[str, ...]
    timestep_index: Optional[int]
    batch_inputs: Optional[Tuple[int, ...]]
    batch_size: Optional[int]
    reason: Optional[str]
    settings: Dict[str, Any]
    files: Dict[str, str]                     # file name -> sha256
    created_with: Dict[str, str]
    # how ``speca serve`` drives it (``serve/spec.py``): sampler, latent input, default negative
    # inputs, image layout; optional (added within schema 2: older readers ignore it)
    serving: Optional[Dict[str, Any]] = None
    # the prologue's side values ((name, "row" | "shared" | "count"), ...) (passes/side_values): a
    # mixed step runs one prologue and epilogue over all rows; optional (added within schema 2)
    side_values: Optional[Tuple[Tuple[str, str], ...]] = None
    # the token stride of the check per verify-block output when the bundle holds the verify block
    # on a token subset (segment ``verify_tokens``, option verify_stride > 1) instead of the whole
    # block; optional (added within schema 2: None, every token checked by the whole block)
    verify_tokens: Optional[Tuple[int, ...]] = None

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, **out}


def parse(data: Any) -> Manifest:
    """A checked ``Manifest`` from decoded JSON, or ``BundleError`` naming what is wrong."""
    obj = _dict(data, "manifest")
    if obj.get("format") != FORMAT:
        raise BundleError(f"manifest.json: 'format' is {obj.get('format')!r}, expected {FORMAT!r}")
    if obj.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"manifest.json: schema_version {obj.get('schema_version')!r} is not supported; "
                          f"this speca-compile reads version {SCHEMA_VERSION} (re-export the bundle)")
    inputs = tuple(_input(v, f"inputs[{i}]") for i, v in enumerate(_list(obj, "inputs")))
    keys = [d.key for d in inputs]
    if len(set(keys)) != len(keys):
        raise BundleError("manifest.json: 'inputs' has a repeated key")
    placeholders = tuple(_placeholder(v, f"placeholders[{i}]", set(keys), inputs)
                         for i, v in enumerate(_list(obj, "placeholders")))
    files = {k: _str(v, f"files[{k!r}]") for k, v in _dict(obj.get("files"), "files").items()}
    segments = tuple(_segment(v, f"segments[{i}]", files) for i, v in enumerate(_list(obj, "segments")))
    if not segments:
        raise BundleError("manifest.json: 'segments' is empty")
    cuts = tuple(tuple(_str(n, f"cuts[{i}]") for n in _list_of(c, f"cuts[{i}]"))
                 for i, c in enumerate(_list(obj, "cuts")))
    units = tuple(_str(n, "units") for n in _list(obj, "units"))
    if cuts and len(units) != len(cuts) - 1:
        raise BundleError(f"manifest.json: {len(cuts)} cuts need {len(cuts) - 1} units, found {len(units)}")
    names = [d.name for d in segments]
    if len(set(names)) != len(names):
        raise BundleError("manifest.json: 'segments' has a repeated name")
    stack = obj.get("stack")
    if stack is not None and stack not in names:
        raise BundleError(f"manifest.json: 'stack' is {stack!r}, expected null or a segment name")
    outputs = tuple(_str(n, "outputs") for n in _list(obj, "outputs"))
    count = len(placeholders)
    timestep_index = _opt_index(obj.get("timestep_index"), "timestep_index", count)
    batch = obj.get("batch_inputs")
    batch_inputs = None if batch is None else tuple(_index(v, "batch_inputs", count)
                                                    for v in _list_of(batch, "batch_inputs"))
    batch_size = obj.get("batch_size")
    if batch_size is not None and not _is_int(batch_size):
        raise BundleError(f"manifest.json: 'batch_size' must be an integer or null, got {batch_size!r}")
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BundleError(f"manifest.json: 'reason' must be a string or null, got {reason!r}")
    settings = _dict(obj.get("settings"), "settings")
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise BundleError(f"manifest.json: 'settings' lacks {', '.join(missing)}")
    created = {str(k): str(v) for k, v in _dict(obj.get("created_with", {}), "created_with").items()}
    manifest = Manifest(inputs, placeholders, segments, cuts, units, stack, outputs, timestep_index,
                        batch_inputs, batch_size, reason,
                        {**{k: settings[k] for k in SETTINGS},
                         **{k: settings.get(k, default) for k, default in LATER_SETTINGS.items()}}, files, created,
                        _serving(obj.get("serving"), set(keys)), _side_values(obj.get("side_values")),
                        _verify_tokens(obj.get("verify_tokens"), segments))
    absent = [n for n in needed_segments(manifest) if n not in names]
    if absent:
        raise BundleError(f"manifest.json: 'segments' lacks {', '.join(absent)}, which the runtime runs")
    return manifest


def needed_segments(manifest: Manifest) -> List[str]:
    """The segments the runtime runs: the full path, and the verify block (or its token subset)
    when it speculates."""
    if not manifest.cuts:
        return [d.name for d in manifest.segments[:1]]
    units = [unit_segment_name(i, u) for i, u in enumerate(manifest.units)]
    names = ["prologue"] + ([manifest.stack] if manifest.stack is not None else units) + ["epilogue"]
    verify = manifest.settings.get("verify_block")
    if manifest.reason is None:
        if not (_is_int(verify) and -len(units) <= verify < len(units)):
            raise BundleError(f"manifest.json: settings.verify_block is {verify!r}, expected an index "
                              f"into the {len(units)} units")
        names.append(VERIFY_TOKENS if manifest.verify_tokens is not None else units[verify])
    return names


def _verify_tokens(value, segments) -> Optional[Tuple[int, ...]]:
    """The optional ``verify_tokens`` strides: one integer >= 1 per output of the segment."""
    if value is None:
        return None
    strides = _list_of(value, "verify_tokens")
    if not strides or not all(_is_int(k) and k >= 1 for k in strides):
        raise BundleError(f"manifest.json: 'verify_tokens' is {strides!r}, expected a non-empty list of "
                          "token strides >= 1")
    segment = next((d for d in segments if d.name == VERIFY_TOKENS), None)
    if segment is not None and len(segment.outputs) != len(strides):
        raise BundleError(f"manifest.json: 'verify_tokens' holds {len(strides)} stride(s) for the "
                          f"{len(segment.outputs)} output(s) of segment {VERIFY_TOKENS!r}")
    return tuple(strides)


SIDE_KINDS = ("row", "shared", "count")


def _side_values(value) -> Optional[Tuple[Tuple[str, str], ...]]:
    """The optional ``side_values`` list of ``[name, kind]`` pairs, checked."""
    if value is None:
        return None
    pairs = []
    for i, item in enumerate(_list_of(value, "side_values")):
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str)
                or item[1] not in SIDE_KINDS):
            raise BundleError(f"manifest.json: side_values[{i}] is {item!r}, expected [name, kind] with kind "
                              f"one of {list(SIDE_KINDS)}")
        pairs.append((item[0], item[1]))
    return tuple(pairs)


SERVING_KEYS = ("sampler", "latent", "negative_inputs", "image")
IMAGE_KEYS = ("layout", "channels", "height", "width", "patch", "value_range")


def _serving(value, keys) -> Optional[Dict[str, Any]]:
    """The optional ``serving`` section, checked (its use: ``serve/spec.py``)."""
    if value is None:
        return None
    obj = _dict(value, "serving")
    unknown = sorted(set(obj) - set(SERVING_KEYS))
    if unknown:
        raise BundleError(f"manifest.json: 'serving' has unknown field(s) {unknown}; valid: {list(SERVING_KEYS)}")
    if obj.get("sampler") is not None and obj["sampler"] not in ("ddim", "flow"):
        raise BundleError(f"manifest.json: serving.sampler is {obj['sampler']!r}, expected 'ddim' or 'flow'")
    if obj.get("latent") is not None and obj["latent"] not in keys:
        raise BundleError(f"manifest.json: serving.latent {obj['latent']!r} is not one of the inputs {sorted(keys)}")
    negative = obj.get("negative_inputs")
    if negative is not None:
        for k in _dict(negative, "serving.negative_inputs"):
            if k not in keys:
                raise BundleError(f"manifest.json: serving.negative_inputs names {k!r}, not an input")
    image = obj.get("image")
    if image is not None:
        image = _dict(image, "serving.image")
        bad = sorted(set(image) - set(IMAGE_KEYS))
        if bad or image.get("layout") not in ("chw", "packed"):
            raise BundleError(f"manifest.json: serving.image must have layout 'chw' or 'packed' and only "
                              f"{list(IMAGE_KEYS)}, got {image!r}")
        for k in ("channels", "height", "width", "patch"):
            if k in image and not (_is_int(image[k]) and image[k] > 0):
                raise BundleError(f"manifest.json: serving.image.{k} must be a positive integer, got {image[k]!r}")
    return dict(obj)


# ---------------------------------------------------------------- field checks
def _dict(value, where: str) -> Dict:
    if not isinstance(value, dict):
        raise BundleError(f"manifest.json: {where!r} must be an object, got {type(value).__name__}")
    return value


def _list(obj: Dict, key: str) -> List:
    if key not in obj:
        raise BundleError(f"manifest.json: missing field {key!r}")
    return _list_of(obj[key], key)


def _list_of(value, where: str) -> List:
    if not isinstance(value, list):
        raise BundleError(f"manifest.json: {where!r} must be a list, got {type(value).__name__}")
    return value


def _str(value, where: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"manifest.json: {where!r} must be a string, got {value!r}")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index(value, where: str, size: int) -> int:
    if not _is_int(value) or not 0 <= value < size:
        raise BundleError(f"manifest.json: {where!r} holds {value!r}, expected an index in [0, {size})")
    return value


def _opt_index(value, where: str, size: int) -> Optional[int]:
    return None if value is None else _index(value, where, size)


def _input(value, where: str) -> InputDecl:
    obj = _dict(value, where)
    dtype = obj.get("dtype")
    if dtype not in DTYPES:
        raise BundleError(f"manifest.json: {where}.dtype is {dtype!r}, expected one of {', '.join(DTYPES)}")
    shape = tuple(_list_of(obj.get("shape"), f"{where}.shape"))
    if any(d is not None and (not _is_int(d) or d < 0) for d in shape):
        raise BundleError(f"manifest.json: {where}.shape must hold sizes >= 0 or null, got {list(shape)}")
    position = obj.get("position")
    if position is not None and (not _is_int(position) or position < 0):
        raise BundleError(f"manifest.json: {where}.position must be an integer >= 0 or null, got {position!r}")
    return InputDecl(_str(obj.get("key"), f"{where}.key"), dtype, shape, position)


def _placeholder(value, where: str, keys, inputs) -> PlaceholderDecl:
    obj = _dict(value, where)
    kind = obj.get("kind")
    if kind not in PLACEHOLDER_KINDS:
        raise BundleError(f"manifest.json: {where}.kind is {kind!r}, expected one of {PLACEHOLDER_KINDS}")
    name = _str(obj.get("name"), f"{where}.name")
    if kind == "module":
        number = obj.get("value")
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            raise BundleError(f"manifest.json: {where}.value must be a number or null, got {number!r}")
        return PlaceholderDecl(name, kind, value=number)
    key = _str(obj.get("key"), f"{where}.key")
    if key not in keys:
        raise BundleError(f"manifest.json: {where}.key {key!r} is not one of the inputs {sorted(keys)}")
    if kind == "input":
        return PlaceholderDecl(name, kind, key=key)
    rank = len(next(d for d in inputs if d.key == key).shape)
    return PlaceholderDecl(name, kind, key=key, axis=_index(obj.get("axis"), f"{where}.axis", rank))


def _segment(value, where: str, files) -> SegmentDecl:
    obj = _dict(value, where)
    file = _str(obj.get("file"), f"{where}.file")
    if file not in files:
        raise BundleError(f"manifest.json: {where}.file {file!r} has no checksum in 'files'")
    inputs = tuple(_str(v, f"{where}.inputs") for v in _list_of(obj.get("inputs"), f"{where}.inputs"))
    outputs = tuple(_str(v, f"{where}.outputs") for v in _list_of(obj.get("outputs"), f"{where}.outputs"))
    tin = tuple(_index(v, f"{where}.tensor_inputs", len(inputs))
                for v in _list_of(obj.get("tensor_inputs"), f"{where}.tensor_inputs"))
    names = tuple(_str(v, f"{where}.onnx_inputs") for v in _list_of(obj.get("onnx_inputs"), f"{where}.onnx_inputs"))
    if len(names) != len(tin):
        raise BundleError(f"manifest.json: {where} names {len(names)} ONNX inputs for {len(tin)} tensor inputs")
    tout = tuple(_index(v, f"{where}.tensor_outputs", len(outputs))
                 for v in _list_of(obj.get("tensor_outputs"), f"{where}.tensor_outputs"))
    data = obj.get("data")   # absent in bundles without external data, and in older ones
    if data is not None:
        data = _str(data, f"{where}.data")
        if data not in files:
            raise BundleError(f"manifest.json: {where}.data {data!r} has no checksum in 'files'")
        if data == file:
            raise BundleError(f"manifest.json: {where}.data is its ONNX file {file!r}")
    check = obj.get("check")
    if check is not None:
        check = _dict(check, f"{where}.check")
        error, bound = check.get("rel_error"), check.get("bound")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (error, bound)) or not error <= bound:
            raise BundleError(f"manifest.json: {where}.check must record a rel_error within its bound, "
                              f"got {check!r}")
    return SegmentDecl(_str(obj.get("name"), f"{where}.name"), file, inputs, outputs, tin, names, tout, data, check)
