"""The ``speca serve`` request/response contract (speca_compile.serve.protocol), without a server."""

import base64
import io
import json
import random

import numpy as np
import pytest
import torch

from speca_compile.serve.protocol import (
    GenerateRequest, Limits, RequestError, decode_npy, decode_value, encode_npy, encode_png,
    error_body, load_body, parse_generate, response_body)
from speca_compile.serve.spec import ConditionSpec, ImageLayout, ServingSpec

DIT = ServingSpec(
    latent="hidden_states", latent_shape=(1, 16, 16), latent_dtype=torch.float32,
    timestep="timestep", timestep_dtype=torch.float32,
    conditions=(ConditionSpec("class_labels", torch.int64, ()),),
    fixed={}, sampler="ddim", negative={"class_labels": torch.tensor(10)},
    image=ImageLayout("chw", 1, 16, 16))

FLUX = ServingSpec(
    latent="hidden_states", latent_shape=(64, 4), latent_dtype=torch.float32,
    timestep="timestep", timestep_dtype=torch.float32,
    conditions=(ConditionSpec("encoder_hidden_states", torch.float32, (4, 32)),
                ConditionSpec("pooled_projections", torch.float32, (32,))),
    fixed={}, sampler="flow", negative=None,
    image=ImageLayout("packed", 1, 16, 16, patch=2))


def npy(array) -> dict:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return {"npy": base64.b64encode(buf.getvalue()).decode("ascii")}


def dit_body(**over):
    body = {"inputs": {"class_labels": 3}, "seed": 0, "steps": 20}
    body.update(over)
    return body


def flux_inputs(seed=0):
    g = np.random.default_rng(seed)
    return {"encoder_hidden_states": g.standard_normal((4, 32)).astype(np.float32),
            "pooled_projections": g.standard_normal(32).astype(np.float32)}


def flux_body(**over):
    arrays = flux_inputs()
    body = {"inputs": {k: npy(v) for k, v in arrays.items()}, "seed": 7, "steps": 4}
    body.update(over)
    return body


def error_of(body, spec=DIT, limits=Limits()) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_generate(body, spec, limits)
    return info.value


def assert_names(err: RequestError, field: str, *words: str):
    assert isinstance(err, RequestError) and isinstance(err, ValueError)
    assert err.field == field, (err.field, str(err))
    assert field in str(err)
    for word in words:
        assert word in str(err), (word, str(err))
    assert err.status == 400


# ---------------------------------------------------------------------------
# valid requests


def test_dit_request_scalar_list_and_npy_forms():
    for value in (3, npy(np.int64(3)), npy(np.array(3, dtype=np.int32))):
        req = parse_generate(dit_body(inputs={"class_labels": value}), DIT)
        assert isinstance(req, GenerateRequest)
        t = req.inputs["class_labels"]
        assert t.dtype == torch.int64 and t.shape == () and int(t) == 3 and t.is_contiguous()
        assert (req.seed, req.steps, req.guidance_scale, req.options) == (0, 20, 1.0, {})
        assert req.negative_inputs is None and req.rows == 1


def test_list_form_for_vector_inputs():
    spec = ServingSpec("x", (2,), torch.float32, "t", torch.float32,
                       (ConditionSpec("labels", torch.int32, (2, 3)), ConditionSpec("mask", torch.bool, (2,))),
                       {}, "flow", None, None)
    req = parse_generate({"inputs": {"labels": [[1, 2, 3], [4, 5, 6]], "mask": [True, False]},
                          "seed": 1, "steps": 2}, spec)
    assert req.inputs["labels"].dtype == torch.int32
    assert req.inputs["labels"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert req.inputs["mask"].tolist() == [True, False]


def test_flux_request_with_npy_and_list():
    arrays = flux_inputs()
    req = parse_generate(flux_body(options={"tau0": 0.5, "speculate": False}), FLUX)
    for key, array in arrays.items():
        assert req.inputs[key].dtype == torch.float32
        assert torch.equal(req.inputs[key], torch.from_numpy(array))
    assert req.options == {"tau0": 0.5, "speculate": False}
    # the same values as nested lists (float64 npy is cast to float32 as well)
    body = flux_body(inputs={"encoder_hidden_states": arrays["encoder_hidden_states"].tolist(),
                             "pooled_projections": npy(arrays["pooled_projections"].astype(np.float64))})
    req2 = parse_generate(body, FLUX)
    for key in arrays:
        assert req2.inputs[key].dtype == torch.float32
        assert torch.equal(req2.inputs[key], req.inputs[key])
    assert parse_generate(flux_body(options={"tau0": "auto"}), FLUX).options == {"tau0": "auto"}


def test_guidance_uses_default_negative_or_explicit_one():
    req = parse_generate(dit_body(guidance_scale=4.0), DIT)
    assert req.guided and req.rows == 2
    assert int(req.negative_inputs["class_labels"]) == 10
    req = parse_generate(dit_body(guidance_scale=4, negative_inputs={"class_labels": 7}), DIT)
    assert int(req.negative_inputs["class_labels"]) == 7 and req.guidance_scale == 4.0
    # negative inputs sent without guidance are checked, then unused
    req = parse_generate(dit_body(guidance_scale=1, negative_inputs={"class_labels": 7}), DIT)
    assert req.negative_inputs is None and req.rows == 1
    assert_names(error_of(dit_body(negative_inputs={"class_labels": 2.5})), "negative_inputs.class_labels")


def test_flux_guidance_without_negative():
    assert_names(error_of(flux_body(guidance_scale=3.5), FLUX), "negative_inputs", "guidance_scale")
    neg = {k: npy(np.zeros_like(v)) for k, v in flux_inputs().items()}
    req = parse_generate(flux_body(guidance_scale=3.5, negative_inputs=neg), FLUX)
    assert req.rows == 2 and float(req.negative_inputs["pooled_projections"].abs().sum()) == 0
    assert_names(error_of(flux_body(guidance_scale=3.5, negative_inputs={"pooled_projections": neg["pooled_projections"]}),
                          FLUX), "negative_inputs.encoder_hidden_states", "missing")


def test_null_optional_fields_mean_absent():
    req = parse_generate(dit_body(guidance_scale=None, negative_inputs=None, options=None), DIT)
    assert (req.guidance_scale, req.negative_inputs, req.options) == (1.0, None, {})


# ---------------------------------------------------------------------------
# bad requests: each names its field


@pytest.mark.parametrize("body, field, words", [
    (dit_body(prompt="a cat"), "prompt", ("unknown field", "inputs", "seed", "steps", "guidance_scale")),
    (dit_body(inputs={"class_labels": 3, "labels": 1}), "inputs.labels", ("unknown input", "class_labels")),
    (dit_body(inputs={}), "inputs.class_labels", ("missing",)),
    (dit_body(inputs={"class_labels": 3, "hidden_states": [0.0]}), "inputs.hidden_states", ("latent", "seed")),
    (dit_body(inputs={"class_labels": 3, "timestep": 5}), "inputs.timestep", ("sets the timestep",)),
    (dit_body(inputs=[3]), "inputs", ("object",)),
    ({"seed": 0, "steps": 3}, "inputs", ("missing",)),
    ({"inputs": {"class_labels": 3}, "steps": 3}, "seed", ("missing",)),
    ({"inputs": {"class_labels": 3}, "seed": 3}, "steps", ("missing",)),
    (dit_body(steps=0), "steps", ("1000",)),
    (dit_body(steps=1001), "steps", ("1000",)),
    (dit_body(steps="3"), "steps", ("'3'",)),
    (dit_body(steps=True), "steps", ("true",)),
    (dit_body(steps=3.0), "steps", ()),
    (dit_body(seed=-1), "seed", ("-1",)),
    (dit_body(seed=1.5), "seed", ()),
    (dit_body(seed=2 ** 63), "seed", ()),
    (dit_body(seed=False), "seed", ()),
    (dit_body(guidance_scale=float("nan")), "guidance_scale", ("finite",)),
    (dit_body(guidance_scale="NaN"), "guidance_scale", ("'NaN'",)),
    (dit_body(guidance_scale=float("inf")), "guidance_scale", ()),
    (dit_body(guidance_scale=True), "guidance_scale", ()),
    (dit_body(guidance_scale=-1), "guidance_scale", ()),
    (dit_body(guidance_scale=101), "guidance_scale", ("100",)),
    (dit_body(guidance_scale=10 ** 400), "guidance_scale", ()),
    (dit_body(inputs={"class_labels": [3]}), "inputs.class_labels", ("(1,)", "()")),
    (dit_body(inputs={"class_labels": 3.5}), "inputs.class_labels", ("integer", "3.5")),
    (dit_body(inputs={"class_labels": 3.0}), "inputs.class_labels", ("integer",)),
    (dit_body(inputs={"class_labels": True}), "inputs.class_labels", ("integer",)),
    (dit_body(inputs={"class_labels": "3"}), "inputs.class_labels", ()),
    (dit_body(inputs={"class_labels": None}), "inputs.class_labels", ()),
    (dit_body(inputs={"class_labels": 2 ** 64}), "inputs.class_labels", ("out of range",)),
    (dit_body(inputs={"class_labels": npy(np.float32(3))}), "inputs.class_labels", ("float32",)),
    (dit_body(inputs={"class_labels": npy(np.array([3]))}), "inputs.class_labels", ("(1,)",)),
    (dit_body(inputs={"class_labels": {"npy": "%%%not base64"}}), "inputs.class_labels", ("base64",)),
    (dit_body(inputs={"class_labels": {"npy": base64.b64encode(b"hello").decode()}}),
     "inputs.class_labels", (".npy",)),
    (dit_body(inputs={"class_labels": {"npy": 3}}), "inputs.class_labels", ("base64",)),
    (dit_body(inputs={"class_labels": {"npz": "AAAA"}}), "inputs.class_labels", ("npy",)),
    (dit_body(inputs={"class_labels": {**npy(np.int64(3)), "dtype": "int64"}}),
     "inputs.class_labels", ("dtype",)),
    (dit_body(options={"tau": 1.0}), "options.tau", ("tau0", "speculate")),
    (dit_body(options={"tau0": -1.0}), "options.tau0", ("> 0",)),
    (dit_body(options={"tau0": 0}), "options.tau0", ()),
    (dit_body(options={"tau0": float("nan")}), "options.tau0", ()),
    (dit_body(options={"tau0": "fast"}), "options.tau0", ("auto",)),
    (dit_body(options={"speculate": 1}), "options.speculate", ()),
    (dit_body(options=[]), "options", ("object",)),
    (dit_body(negative_inputs=[]), "negative_inputs", ("object",)),
])
def test_bad_dit_requests_name_the_field(body, field, words):
    assert_names(error_of(body), field, *words)


@pytest.mark.parametrize("inputs, field, words", [
    ({"pooled_projections": [0.0] * 32}, "inputs.encoder_hidden_states", ("missing",)),
    ({"encoder_hidden_states": [[0.0] * 32] * 4, "pooled_projections": [0.0] * 31},
     "inputs.pooled_projections", ("(31,)", "(32,)")),
    ({"encoder_hidden_states": [[0.0] * 32] * 3 + [[0.0] * 31], "pooled_projections": [0.0] * 32},
     "inputs.encoder_hidden_states", ("ragged",)),
    ({"encoder_hidden_states": [[0.0] * 32] * 3 + [1.0], "pooled_projections": [0.0] * 32},
     "inputs.encoder_hidden_states", ("ragged",)),
    ({"encoder_hidden_states": [[[0.0]] * 32] + [[0.0] * 32] * 3, "pooled_projections": [0.0] * 32},
     "inputs.encoder_hidden_states", ("ragged",)),
    ({"encoder_hidden_states": npy(np.zeros((1, 4, 32), np.float32)), "pooled_projections": [0.0] * 32},
     "inputs.encoder_hidden_states", ("(1, 4, 32)", "(4, 32)")),
    ({"encoder_hidden_states": [[0.0] * 32] * 4, "pooled_projections": [float("nan")] + [0.0] * 31},
     "inputs.pooled_projections", ("finite",)),
    ({"encoder_hidden_states": [[0.0] * 32] * 4, "pooled_projections": npy(np.full(32, np.inf, np.float32))},
     "inputs.pooled_projections", ("finite",)),
    ({"encoder_hidden_states": [[0.0] * 32] * 4, "pooled_projections": npy(np.full(32, 1e300))},
     "inputs.pooled_projections", ("overflow",)),
    ({"encoder_hidden_states": [[0.0] * 32] * 4, "pooled_projections": npy(np.ones(32, bool))},
     "inputs.pooled_projections", ("bool",)),
    ({"encoder_hidden_states": [[0.0] * 32] * 4, "pooled_projections": ["x"] * 32},
     "inputs.pooled_projections", ("numbers",)),
])
def test_bad_flux_inputs_name_the_input(inputs, field, words):
    assert_names(error_of(flux_body(inputs=inputs), FLUX), field, *words)


def test_fixed_input_is_refused():
    spec = ServingSpec(**{**FLUX.__dict__, "fixed": {"img_ids": torch.zeros(64, 3)}})
    body = flux_body()
    body["inputs"]["img_ids"] = [[0.0] * 3] * 64
    assert_names(error_of(body, spec), "inputs.img_ids", "fixed")


def test_npy_header_claiming_a_huge_shape_is_refused_before_reading():
    # build a well-formed header for a (10**10,) float32 array with no data behind it
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 10,)})
    forged = base64.b64encode(buf.getvalue()).decode()
    body = flux_body()
    body["inputs"]["pooled_projections"] = {"npy": forged}
    assert_names(error_of(body, FLUX), "inputs.pooled_projections", "10000000000")
    # a correct header with truncated data
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (32,)})
    body["inputs"]["pooled_projections"] = {"npy": base64.b64encode(buf.getvalue() + b"\0" * 8).decode()}
    assert_names(error_of(body, FLUX), "inputs.pooled_projections", "npy")


def test_npy_with_whitespace_big_endian_and_fortran_order():
    text = npy(np.arange(32, dtype=">f8"))["npy"]
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    cond = ConditionSpec("p", torch.float32, (32,))
    assert torch.equal(decode_value({"npy": wrapped}, cond, "inputs.p"), torch.arange(32, dtype=torch.float32))
    fortran = np.asfortranarray(np.arange(128, dtype=np.float32).reshape(4, 32))
    t = decode_value(npy(fortran), ConditionSpec("e", torch.float32, (4, 32)), "inputs.e")
    assert t.is_contiguous() and torch.equal(t, torch.arange(128, dtype=torch.float32).reshape(4, 32))


def test_decode_value_kinds():
    f16 = ConditionSpec("x", torch.float16, (2,))
    t = decode_value([1, 0.5], f16, "inputs.x")
    assert t.dtype == torch.float16 and t.tolist() == [1.0, 0.5]
    with pytest.raises(RequestError, match="inputs.x.*overflow"):
        decode_value([1e6, 0.0], f16, "inputs.x")
    bf = ConditionSpec("x", torch.bfloat16, ())
    assert decode_value(npy(np.float32(2.0)), bf, "inputs.x").dtype == torch.bfloat16
    i32 = ConditionSpec("x", torch.int32, ())
    assert decode_value(npy(np.uint8(200)), i32, "inputs.x").item() == 200
    with pytest.raises(RequestError, match="inputs.x.*out of range"):
        decode_value(2 ** 40, i32, "inputs.x")
    with pytest.raises(RequestError, match="inputs.x.*out of range"):
        decode_value(npy(np.int64(2 ** 40)), i32, "inputs.x")
    b = ConditionSpec("x", torch.bool, ())
    assert decode_value(True, b, "inputs.x").item() is True
    with pytest.raises(RequestError, match="inputs.x"):
        decode_value(1, b, "inputs.x")
    empty = ConditionSpec("x", torch.float32, (0,))
    assert decode_value([], empty, "inputs.x").shape == (0,)
    with pytest.raises(RequestError, match="inputs.x.*deep"):
        deep = 0
        for _ in range(100):
            deep = [deep]
        decode_value(deep, empty, "inputs.x")


def test_limits_are_honoured():
    limits = Limits(max_steps=10, option_keys=("tau0",), max_guidance=5.0)
    assert parse_generate(dit_body(steps=10), DIT, limits).steps == 10
    assert_names(error_of(dit_body(steps=11), limits=limits), "steps", "10")
    assert_names(error_of(dit_body(steps=10, guidance_scale=6), limits=limits), "guidance_scale", "5")
    assert_names(error_of(dit_body(steps=10, options={"speculate": True}), limits=limits), "options.speculate", "tau0")


def _junk(rng, depth=0):
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 3, 2 ** 70, 10 ** 400])
    if pick == 3:
        return rng.choice([0.5, float("nan"), float("inf"), -0.0, 1e308])
    if pick == 4:
        return rng.choice(["", "x", "NaN", "auto", "AAAA", "%%"])
    if pick == 5:
        return rng.choice([[], {}])
    if pick == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["inputs", "seed", "steps", "guidance_scale", "negative_inputs", "options", "npy",
            "class_labels", "hidden_states", "tau0", "speculate", "x"]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_odd_bodies_only_raise_request_error():
    odd = [None, [], "x", 3, 3.5, True, {}, {"inputs": []}, {"inputs": None}, {"inputs": {"class_labels": {}}},
           {"inputs": {"class_labels": [[[]]]}, "seed": 0, "steps": 1},
           {"inputs": {"class_labels": {"npy": None}}, "seed": 0, "steps": 1},
           {"inputs": {"class_labels": {"npy": ""}}, "seed": 0, "steps": 1},
           {"inputs": {"class_labels": {"npy": "ÿÿ"}}, "seed": 0, "steps": 1},
           {"inputs": {"class_labels": 1}, "seed": 0, "steps": 1, "options": {"tau0": [1]}},
           {1: 2}, {"inputs": {1: 2}, "seed": 0, "steps": 1}, {"seed": {"a": [None]}}]
    rng = random.Random(0)
    odd += [_junk(rng) for _ in range(400)]
    base = dit_body()
    for _ in range(400):   # valid bodies with one field replaced by junk
        body = dict(base)
        body[rng.choice(list(base) + ["guidance_scale", "negative_inputs", "options"])] = _junk(rng)
        odd.append(body)
    for spec in (DIT, FLUX):
        for body in odd:
            try:
                parse_generate(body, spec)
            except RequestError as err:
                assert err.field and err.field in str(err) and err.status == 400
    for raw in (b"", b"{", b"\xff\xfe", b"[" * 100000, "{\"a\": NaN}"):
        try:
            load_body(raw)
        except RequestError as err:
            assert err.field == "body"
    assert load_body(json.dumps(dit_body()).encode()) == dit_body()


# ---------------------------------------------------------------------------
# npy, PNG, response


def test_npy_round_trip():
    for tensor in (torch.randn(3, 4), torch.arange(6, dtype=torch.int64).reshape(2, 3), torch.tensor(True)):
        array = decode_npy(encode_npy(tensor))
        assert array.dtype == tensor.numpy().dtype and np.array_equal(array, tensor.numpy())
    bf = torch.randn(5, 2).to(torch.bfloat16)
    array = decode_npy(encode_npy(bf))
    assert array.dtype == np.float32 and np.array_equal(array, bf.float().numpy())
    assert np.array_equal(decode_npy(encode_npy(np.arange(3))), np.arange(3))
    assert decode_npy(encode_npy(torch.randn(3, requires_grad=True))).shape == (3,)
    with pytest.raises(ValueError):
        decode_npy("not base64!")


def _expected_pixels(image, lo=-1.0, hi=1.0):
    x = (image.double().numpy() - lo) / (hi - lo) * 255.0
    return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def test_png_decodes_with_pillow():
    Image = pytest.importorskip("PIL.Image")
    gray = torch.linspace(-1.5, 1.5, 5 * 7).reshape(1, 5, 7)
    img = Image.open(io.BytesIO(base64.b64decode(encode_png(gray))))
    assert img.mode == "L" and img.size == (7, 5)
    assert np.array_equal(np.asarray(img), _expected_pixels(gray)[0])
    rgb = torch.rand(3, 4, 6)
    img = Image.open(io.BytesIO(base64.b64decode(encode_png(rgb, value_range=(0.0, 1.0)))))
    assert img.mode == "RGB" and img.size == (6, 4)
    assert np.array_equal(np.asarray(img), _expected_pixels(rgb, 0.0, 1.0).transpose(1, 2, 0))
    ends = torch.tensor([-1.0, 0.0, 1.0, float("nan")]).reshape(1, 1, 4)
    img = Image.open(io.BytesIO(base64.b64decode(encode_png(ends))))
    assert np.asarray(img).tolist() == [[0, 128, 255, 0]]
    for bad in (torch.zeros(2, 4, 4), torch.zeros(4, 4), torch.zeros(1, 0, 4)):
        with pytest.raises(ValueError):
            encode_png(bad)


STATS = {"full": 5, "speculative": 15, "rejected": 1, "steps": 20, "queue_s": 0.25, "compute_s": 1.5}


def test_response_body_dit():
    latent = torch.rand(1, 16, 16) * 2 - 1
    body = response_body(latent, STATS, DIT.image)
    assert set(body) == {"latents", "image_png", "stats"} and set(body["latents"]) == {"npy"}
    assert body["stats"] == STATS and all(type(body["stats"][k]) is int for k in ("full", "speculative",
                                                                                 "rejected", "steps"))
    assert np.array_equal(decode_npy(body["latents"]["npy"]), latent.numpy())
    json.dumps(body)
    body = response_body(latent, {**STATS, "queue_s": 0}, None)
    assert set(body) == {"latents", "stats"} and type(body["stats"]["queue_s"]) is float
    for bad in ({**STATS, "extra": 1}, {k: v for k, v in STATS.items() if k != "rejected"},
                {**STATS, "full": 1.5}, {**STATS, "full": True}, {**STATS, "compute_s": float("nan")},
                {**STATS, "queue_s": "0"}, None):
        with pytest.raises(ValueError):
            response_body(latent, bad, None)
    assert error_body("steps: bad") == {"error": "steps: bad"}


def test_packed_latent_becomes_the_right_image():
    layout = FLUX.image
    latent = torch.arange(64 * 4, dtype=torch.float32).reshape(64, 4)
    image = layout.to_image(latent)
    # explicit unpacking: token (i, j) on the 8x8 grid holds the 2x2 patch at rows 2i.., cols 2j..
    explicit = latent.reshape(8, 8, 1, 2, 2).permute(2, 0, 3, 1, 4).reshape(1, 16, 16)
    assert torch.equal(image, explicit)
    for y in range(16):
        for x in range(16):
            assert image[0, y, x] == latent[(y // 2) * 8 + x // 2, (y % 2) * 2 + x % 2]
    # it inverts diffusers' Flux _pack_latents
    picture = torch.randn(1, 1, 16, 16)
    packed = picture.view(1, 1, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 64, 4)
    assert torch.equal(layout.to_image(packed[0]), picture[0])
    Image = pytest.importorskip("PIL.Image")
    latent = torch.rand(64, 4) * 2 - 1
    body = response_body(latent, STATS, layout)
    img = Image.open(io.BytesIO(base64.b64decode(body["image_png"])))
    expected = latent.reshape(8, 8, 1, 2, 2).permute(2, 0, 3, 1, 4).reshape(1, 16, 16)
    assert img.mode == "L" and np.array_equal(np.asarray(img), _expected_pixels(expected)[0])
