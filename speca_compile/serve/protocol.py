"""The HTTP contract of ``speca serve``, as pure functions over decoded JSON.

Why this module exists: the request and response bodies are a contract that
clients are written against, and a bad request must come back as a 4xx JSON
error naming the field at fault, never as a 500 from deep inside the step
loop.  Keeping the contract here -- no HTTP server, no web framework, no model
run, only torch, numpy and the standard library -- lets it be tested alone
and lets any server (or a client) reuse it.

The contract::

    POST /generate
    {"inputs": {NAME: VALUE, ...},         # spec.conditions, ONE sample each (no batch axis)
     "seed": int,                          # the latent noise comes from it
     "steps": int,
     "guidance_scale": float,              # optional, default 1; > 1 means classifier-free guidance
     "negative_inputs": {NAME: VALUE},     # optional; else spec.negative when guided
     "options": {"tau0": ..., "speculate": ...}}   # optional

    VALUE: a JSON number or (rectangular) nested list, or {"npy": BASE64 of a .npy file}

    200: {"latents": {"npy": BASE64},
          "image_png": BASE64,             # only when the bundle has an image layout
          "stats": {"full": int, "speculative": int, "rejected": int, "steps": int,
                    "queue_s": float, "compute_s": float}}
    4xx: {"error": "FIELD: what is wrong"}

Status codes: every ``RequestError`` raised here has ``status`` 400 -- malformed
JSON, wrong types, values out of range, wrong shapes alike.  One code for "the
request does not follow the contract" keeps clients simple; the message and
``field`` say what to fix.  (``status`` is an attribute so a server can raise
other codes, such as 413 or 503, through the same error type.)

JSON ``null`` for an optional field (``guidance_scale``, ``negative_inputs``,
``options``) means the field is absent.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import numbers
import struct
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from speca_compile.errors import SpecaError
from speca_compile.serve.spec import ConditionSpec, ServingSpec

FIELDS = ("inputs", "seed", "steps", "guidance_scale", "negative_inputs", "options")
REQUIRED_FIELDS = ("inputs", "seed", "steps")
STATS_INT_KEYS = ("full", "speculative", "rejected", "steps")
STATS_FLOAT_KEYS = ("queue_s", "compute_s")
STATS_KEYS = STATS_INT_KEYS + STATS_FLOAT_KEYS
MAX_SEED = 2 ** 63 - 1
_MAX_DIMS = 32          # deepest nested list looked at (numpy's own limit is 64)


class RequestError(SpecaError, ValueError):
    """A request that does not follow the contract.

    ``field`` is the offending field path ("steps", "inputs.class_labels",
    "options.tau0", "body" for the body as a whole); ``str(err)`` is
    ``"FIELD: detail"``, so it always names the field; ``status`` is the HTTP
    status to answer with (400 for everything this module raises)."""

    def __init__(self, field: str, detail: str, status: int = 400):
        self.field = field
        self.detail = detail
        self.status = status
        super().__init__(f"{field}: {detail}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a server accepts beyond the bundle's own shapes."""

    max_steps: int = 1000
    option_keys: tuple = ("tau0", "speculate")
    max_guidance: float = 100.0


@dataclasses.dataclass
class GenerateRequest:
    """A validated ``POST /generate``: one sample's inputs, shaped and typed as the spec says."""

    inputs: Dict[str, torch.Tensor]
    negative_inputs: Optional[Dict[str, torch.Tensor]]   # set exactly when guided
    seed: int
    steps: int
    guidance_scale: float
    options: Dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance is on (``guidance_scale > 1``)."""
        return self.guidance_scale > 1

    @property
    def rows(self) -> int:
        """Rows this request takes in a batched call: 2 when guided (cond + uncond), else 1."""
        return 2 if self.guided else 1


# ---------------------------------------------------------------------------
# small helpers


def _describe(value) -> str:
    """A short description of a JSON value for an error message (never the whole value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text}" if len(text) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _names(keys) -> str:
    """Comma-separated names for "valid ones are ..." messages."""
    keys = list(keys)
    return ", ".join(keys) if keys else "(none)"


def _is_int(value) -> bool:
    """A JSON integer (Python ``bool`` is an ``int`` but not a JSON integer)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A JSON number (int or float, not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_float(value) -> Optional[float]:
    """``float(value)`` for a finite JSON number, else None (bools, strings, NaN, inf, huge ints)."""
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _kind(dtype: torch.dtype) -> str:
    """"bool", "int", "float" or "complex": which JSON values an input of ``dtype`` takes."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "int"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------
# .npy payloads


def _npy_bytes(text, field: str) -> bytes:
    """The bytes of a base64 string (ASCII whitespace allowed, as line-wrapping encoders add)."""
    if not isinstance(text, str):
        raise RequestError(field, f"npy must be a base64 string, got {_describe(text)}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(field, f"npy is not valid base64 ({exc})") from None


def _npy_header(raw: bytes, field: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, read before the data so a small payload
    claiming a huge shape is refused without allocating it."""
    fp = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except Exception as exc:  # numpy raises ValueError, EOFError, SyntaxError, ... on junk
        raise RequestError(field, f"npy does not hold a .npy file ({exc})") from None
    return tuple(int(s) for s in shape), dtype


def _npy_array(raw: bytes, field: str) -> np.ndarray:
    """The array of a .npy file's bytes (``allow_pickle=False``: no object arrays)."""
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:
        raise RequestError(field, f"npy does not hold a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise RequestError(field, "npy must hold a .npy file, not an .npz archive")
    return array


def encode_npy(tensor) -> str:
    """Base64 text of a .npy file holding ``tensor`` (a tensor or numpy array).

    Dtypes numpy lacks (bfloat16, float8) are written as float32."""
    if isinstance(tensor, np.ndarray):
        array = tensor
    else:
        t = torch.as_tensor(tensor).detach().cpu().resolve_conj().resolve_neg()
        try:
            array = t.numpy()
        except TypeError:
            array = t.to(torch.float32).numpy()
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_npy(text: str) -> np.ndarray:
    """The inverse of ``encode_npy``: the array of a base64 .npy text (for clients and tests).

    Raises ``RequestError`` (a ``ValueError``, field "npy") on bad base64 or a bad file."""
    raw = _npy_bytes(text, "npy")
    _npy_header(raw, "npy")
    return _npy_array(raw, "npy")


# ---------------------------------------------------------------------------
# one input value


def _nested(value, field: str) -> Tuple[Tuple[int, ...], List[object]]:
    """Shape and row-major leaves of a JSON number or rectangular nested list."""
    shape: List[int] = []
    probe = value
    while isinstance(probe, (list, tuple)):
        if len(shape) >= _MAX_DIMS:
            raise RequestError(field, f"nested more than {_MAX_DIMS} lists deep")
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    leaves: List[object] = []

    def walk(item, index: Tuple[int, ...]):
        depth = len(index)
        if depth == len(shape):
            if isinstance(item, (list, tuple)):
                raise RequestError(field, f"ragged nested list: element {list(index)} is {_describe(item)}, "
                                          f"but element {[0] * depth} is not a list")
            leaves.append(item)
            return
        if not isinstance(item, (list, tuple)) or len(item) != shape[depth]:
            where = f"element {list(index)}" if index else "the value"
            raise RequestError(field, f"ragged nested list: {where} is {_describe(item)}, "
                                      f"expected a list of {shape[depth]}")
        for i, sub in enumerate(item):
            walk(sub, index + (i,))

    walk(value, ())
    return tuple(shape), leaves


def _check_shape(got, cond: ConditionSpec, field: str) -> None:
    """The exact one-sample shape the spec declares (no batch axis)."""
    if tuple(got) != tuple(cond.shape):
        scalar = " (a scalar)" if tuple(cond.shape) == () else ""
        raise RequestError(field, f"got shape {tuple(got)}, expected shape {tuple(cond.shape)}{scalar}: "
                                  "one sample, no batch axis")


def _from_leaves(shape, leaves, cond: ConditionSpec, field: str) -> torch.Tensor:
    """A tensor of ``cond.dtype`` from JSON leaves, each checked against the input's kind."""
    kind = _kind(cond.dtype)
    for i, leaf in enumerate(leaves):
        where = f" (element {i} in row-major order)" if shape else ""
        if kind == "bool":
            if not isinstance(leaf, bool):
                raise RequestError(field, f"a {_dtype_name(cond.dtype)} input takes true/false, "
                                          f"got {_describe(leaf)}{where}")
        elif kind == "int":
            if not _is_int(leaf):
                raise RequestError(field, f"an integer ({_dtype_name(cond.dtype)}) input takes JSON integers, "
                                          f"got {_describe(leaf)}{where}")
            info = torch.iinfo(cond.dtype)
            if not info.min <= leaf <= info.max:
                raise RequestError(field, f"{_describe(leaf)}{where} is out of range for "
                                          f"{_dtype_name(cond.dtype)} [{info.min}, {info.max}]")
        else:
            if not _is_number(leaf):
                raise RequestError(field, f"a {_dtype_name(cond.dtype)} input takes numbers, "
                                          f"got {_describe(leaf)}{where}")
            if _finite_float(leaf) is None:
                raise RequestError(field, f"non-finite or too large value {_describe(leaf)}{where}")
    if kind == "bool":
        tensor = torch.tensor(leaves, dtype=torch.bool)
    elif kind == "int":
        tensor = torch.tensor(leaves, dtype=torch.int64).to(cond.dtype)
    else:
        wide = torch.complex128 if kind == "complex" else torch.float64
        tensor = torch.tensor([float(x) for x in leaves], dtype=wide).to(cond.dtype)
    return tensor.reshape(cond.shape)


def _from_npy(array: np.ndarray, cond: ConditionSpec, field: str) -> torch.Tensor:
    """A tensor of ``cond.dtype`` from a decoded .npy array of an allowed numpy dtype."""
    kind, np_kind = _kind(cond.dtype), array.dtype.kind
    allowed = {"bool": "b", "int": "iu", "float": "iuf", "complex": "iufc"}[kind]
    if np_kind not in allowed or array.dtype.fields is not None:
        wants = {"bool": "a bool array", "int": "an integer array",
                 "float": "a numeric (integer or float) array",
                 "complex": "a numeric array"}[kind]
        raise RequestError(field, f"a {_dtype_name(cond.dtype)} input takes {wants}, "
                                  f"got an npy of dtype {array.dtype}")
    if kind == "bool":
        return torch.from_numpy(array.astype(np.bool_, order="C"))
    if kind == "int":
        info = torch.iinfo(cond.dtype)
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise RequestError(field, f"values in [{int(array.min())}, {int(array.max())}] are out of range "
                                      f"for {_dtype_name(cond.dtype)} [{info.min}, {info.max}]")
        return torch.from_numpy(array.astype(np.int64, order="C")).to(cond.dtype).contiguous()
    if np_kind in "fc" and not bool(np.isfinite(array).all()):
        raise RequestError(field, "the npy holds non-finite values (NaN or infinity)")
    wide = np.complex128 if kind == "complex" else np.float64
    return torch.from_numpy(array.astype(wide, order="C")).to(cond.dtype).contiguous()


def decode_value(value, cond: ConditionSpec, field: str) -> torch.Tensor:
    """One sample's value of input ``cond`` from JSON: a number, a nested list, or ``{"npy": BASE64}``.

    The shape must be ``cond.shape`` exactly (a scalar for shape ``()``).  An integer input
    takes JSON integers or an integer-dtype npy (3.5, 3.0 and float npys are refused); a bool
    input takes true/false or a bool npy; a float input takes numbers or a numeric npy, cast to
    ``cond.dtype``; non-finite values are refused.  Returns a contiguous tensor of
    ``cond.dtype``; any problem is a ``RequestError`` naming ``field``."""
    if isinstance(value, dict):
        extra = sorted(str(k) for k in value if k != "npy")
        if "npy" not in value or extra:
            raise RequestError(field, "an object value must be {\"npy\": BASE64} and nothing else"
                                      + (f"; unexpected key(s): {_names(extra)}" if extra else ""))
        raw = _npy_bytes(value["npy"], field)
        shape, _ = _npy_header(raw, field)
        _check_shape(shape, cond, field)
        tensor = _from_npy(_npy_array(raw, field), cond, field)
    elif isinstance(value, (list, tuple)) or _is_number(value) or isinstance(value, bool):
        shape, leaves = _nested(value, field)
        _check_shape(shape, cond, field)
        tensor = _from_leaves(shape, leaves, cond, field)
    else:
        raise RequestError(field, f"expected a number, a nested list or {{\"npy\": BASE64}}, "
                                  f"got {_describe(value)}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        if not bool(torch.isfinite(tensor).all()):
            raise RequestError(field, f"values overflow {_dtype_name(cond.dtype)}")
    return tensor.contiguous()


# ---------------------------------------------------------------------------
# the request


def load_body(raw) -> object:
    """The decoded JSON of a raw request body (bytes or str); ``RequestError`` (field "body")
    when it is not UTF-8 JSON.  A server may use it before ``parse_generate``."""
    try:
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw).decode("utf-8")
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise RequestError("body", f"the request body is not valid JSON ({exc})") from None


def _parse_seed(value) -> int:
    """``seed``: a JSON integer in [0, 2**63 - 1]."""
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise RequestError("seed", f"must be an integer in [0, 2**63 - 1], got {_describe(value)}")
    return int(value)


def _parse_steps(value, limits: Limits) -> int:
    """``steps``: a JSON integer in [1, limits.max_steps]."""
    if not _is_int(value) or not 1 <= value <= limits.max_steps:
        raise RequestError("steps", f"must be an integer in [1, {limits.max_steps}], got {_describe(value)}")
    return int(value)


def _parse_guidance(value, limits: Limits) -> float:
    """``guidance_scale``: a finite JSON number in [0, limits.max_guidance]; absent or null is 1."""
    if value is None:
        return 1.0
    number = _finite_float(value)
    if number is None or not 0 <= number <= limits.max_guidance:
        raise RequestError("guidance_scale", f"must be a finite number in [0, {limits.max_guidance:g}], "
                                             f"got {_describe(value)}")
    return number


def _parse_options(value, limits: Limits) -> Dict[str, object]:
    """``options``: an object with only ``limits.option_keys``.

    ``tau0`` is a finite number > 0 or "auto"; ``speculate`` a bool; any other allowed key
    passes through as given, for the server to check."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError("options", f"must be an object, got {_describe(value)}")
    options: Dict[str, object] = {}
    for key, item in value.items():
        field = f"options.{key}"
        if key not in limits.option_keys:
            raise RequestError(field, f"unknown option; valid options are {_names(limits.option_keys)}")
        if key == "tau0":
            number = _finite_float(item)
            if isinstance(item, str) and item == "auto":
                options[key] = "auto"
            elif number is not None and number > 0:
                options[key] = number
            else:
                raise RequestError(field, f"must be a finite number > 0 or \"auto\", got {_describe(item)}")
        elif key == "speculate":
            if not isinstance(item, bool):
                raise RequestError(field, f"must be true or false, got {_describe(item)}")
            options[key] = item
        else:
            options[key] = item
    return options


def _parse_inputs(value, spec: ServingSpec, name: str) -> Dict[str, torch.Tensor]:
    """``inputs`` / ``negative_inputs``: every condition of the spec, nothing else, each decoded."""
    if not isinstance(value, dict):
        raise RequestError(name, f"must be an object mapping input names to values, got {_describe(value)}")
    valid = spec.condition_keys
    for key in value:
        field = f"{name}.{key}"
        if key == spec.latent:
            raise RequestError(field, f"{key!r} is the latent: the server draws the latent from seed; "
                                      f"send \"seed\" instead; valid inputs are {_names(valid)}")
        if key == spec.timestep:
            raise RequestError(field, f"{key!r} is the timestep: the server sets the timestep from "
                                      f"\"steps\" and the sampler; valid inputs are {_names(valid)}")
        if key in spec.fixed:
            raise RequestError(field, f"{key!r} is fixed by the bundle (shared by every row); "
                                      f"valid inputs are {_names(valid)}")
        if key not in valid:
            raise RequestError(field, f"unknown input {str(key)!r}; valid inputs are {_names(valid)}")
    missing = [k for k in valid if k not in value]
    if missing:
        raise RequestError(f"{name}.{missing[0]}", f"missing input {missing[0]!r}; "
                                                   f"{name} must name all of {_names(valid)}")
    return {c.key: decode_value(value[c.key], c, f"{name}.{c.key}") for c in spec.conditions}


def parse_generate(body, spec: ServingSpec, limits: Limits = Limits()) -> GenerateRequest:
    """A validated ``GenerateRequest`` from a decoded ``POST /generate`` body.

    ``body`` may be any decoded JSON value; anything off-contract raises ``RequestError``
    naming the field (and never another exception).  When ``guidance_scale > 1`` the
    unconditional inputs are the request's ``negative_inputs``, else the bundle's
    ``spec.negative``, else it is an error naming ``negative_inputs``; otherwise
    ``negative_inputs`` is still validated when sent, and the request's is None."""
    if not isinstance(body, dict):
        raise RequestError("body", f"the request body must be a JSON object, got {_describe(body)}")
    for key in body:
        if key not in FIELDS:
            raise RequestError(str(key), f"unknown field {str(key)!r}; valid fields are {_names(FIELDS)}")
    for key in REQUIRED_FIELDS:
        if key not in body:
            raise RequestError(key, f"required field {key!r} is missing")
    seed = _parse_seed(body["seed"])
    steps = _parse_steps(body["steps"], limits)
    guidance = _parse_guidance(body.get("guidance_scale"), limits)
    options = _parse_options(body.get("options"), limits)
    inputs = _parse_inputs(body["inputs"], spec, "inputs")
    negative = None
    if body.get("negative_inputs") is not None:
        negative = _parse_inputs(body["negative_inputs"], spec, "negative_inputs")
    if guidance > 1:
        if negative is None and spec.negative is not None:
            negative = {k: v.detach().clone().contiguous() for k, v in spec.negative.items()}
        if negative is None:
            raise RequestError("negative_inputs", f"guidance_scale {guidance:g} > 1 needs the unconditional "
                                                  f"inputs: send negative_inputs (all of "
                                                  f"{_names(spec.condition_keys)}); this bundle records "
                                                  "no default")
    else:
        negative = None
    return GenerateRequest(inputs=inputs, negative_inputs=negative, seed=seed, steps=steps,
                           guidance_scale=guidance, options=options)


# ---------------------------------------------------------------------------
# the response


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: torch.Tensor, value_range=(-1.0, 1.0)) -> str:
    """Base64 of an 8-bit PNG of a (C, H, W) float image, C = 1 (grayscale) or 3 (RGB).

    ``value_range[0]`` maps to 0 and ``value_range[1]`` to 255, rounding to nearest
    (halves up); values outside are clamped, NaN becomes 0.  Written with zlib and struct,
    so serving needs no Pillow."""
    image = torch.as_tensor(image).detach().cpu()
    if image.dim() != 3 or image.shape[0] not in (1, 3) or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"encode_png takes a (C, H, W) image with C in (1, 3), got shape {tuple(image.shape)}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"encode_png: value_range must be finite with low < high, got {value_range!r}")
    scaled = (image.to(torch.float64) - lo) * (255.0 / (hi - lo))
    scaled = torch.nan_to_num(scaled, nan=0.0).clamp(0.0, 255.0)
    pixels = torch.floor(scaled + 0.5).clamp(0, 255).to(torch.uint8)
    channels, height, width = (int(s) for s in pixels.shape)
    rows = pixels.permute(1, 2, 0).reshape(height, width * channels).numpy()
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
           + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b""))
    return base64.b64encode(png).decode("ascii")


def _stats(stats: Dict) -> Dict[str, object]:
    """The six stats keys as JSON ints / finite floats; ``ValueError`` (a server bug) otherwise."""
    if not isinstance(stats, dict) or set(stats) != set(STATS_KEYS):
        got = sorted(map(str, stats)) if isinstance(stats, dict) else type(stats).__name__
        raise ValueError(f"response stats must have exactly the keys {list(STATS_KEYS)}, got {got}")
    out: Dict[str, object] = {}
    for key in STATS_INT_KEYS:
        value = stats[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"response stats[{key!r}] must be an int >= 0, got {value!r}")
        out[key] = int(value)
    for key in STATS_FLOAT_KEYS:
        value = stats[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ValueError(f"response stats[{key!r}] must be a finite float, got {value!r}")
        out[key] = float(value)
    return out


def response_body(latent: torch.Tensor, stats: Dict, image_layout) -> Dict:
    """The 200 JSON of ``POST /generate`` for one sample's final ``latent``.

    ``image_png`` is present only when ``image_layout`` (an ``ImageLayout``) is not None:
    ``image_layout.to_image(latent)`` encoded with its ``value_range``."""
    latent = torch.as_tensor(latent).detach().cpu()
    body: Dict[str, object] = {"latents": {"npy": encode_npy(latent)}}
    if image_layout is not None:
        image = image_layout.to_image(latent.to(torch.float32))
        body["image_png"] = encode_png(image, image_layout.value_range)
    body["stats"] = _stats(stats)
    return body


def error_body(message: str) -> Dict:
    """The 4xx JSON: ``{"error": message}``."""
    return {"error": str(message)}
