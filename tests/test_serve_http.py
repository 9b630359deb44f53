"""The HTTP contract over a real server (the stdlib front end; the Ray one shares ``Service``):
good requests answered with latents, image and counts; every bad one a 4xx naming the field,
the server serving on; a full queue a 503 with a retry hint; a broken bundle a failed health
check with the reason."""

import base64
import io
import json
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from speca_compile.serve.local import local_server

TIMEOUT = 120


def _call(url, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


@pytest.fixture(scope="module")
def dit_bundle(reference_bundles):
    return reference_bundles.get("dit_digits")[1]


@pytest.fixture(scope="module")
def server(dit_bundle):
    with local_server(dit_bundle, max_batch=4, max_queue=8) as url:
        yield url


def _good(url, **changes):
    status, body, _ = _call(url, "/example?index=2")
    assert status == 200
    body.update({"steps": 8, "guidance_scale": 1.5, **changes})
    return body


def test_a_good_request_gets_latents_image_and_counts(server):
    status, answer, _ = _call(server, "/generate", _good(server))
    assert status == 200, answer
    latent = np.load(io.BytesIO(base64.b64decode(answer["latents"]["npy"])), allow_pickle=False)
    assert latent.shape == (1, 16, 16) and np.isfinite(latent).all()
    assert base64.b64decode(answer["image_png"]).startswith(b"\x89PNG")
    stats = answer["stats"]
    assert set(stats) == {"full", "speculative", "rejected", "steps", "queue_s", "compute_s"}
    assert stats["steps"] == 8 and stats["full"] + stats["speculative"] == 16   # two CFG rows
    again = _call(server, "/generate", _good(server))[1]
    assert again["latents"] == answer["latents"]   # same seed, same answer


@pytest.mark.parametrize("change, field", [
    ({"steps": 0}, "steps"), ({"steps": 10 ** 6}, "steps"), ({"steps": "8"}, "steps"),
    ({"seed": -1}, "seed"), ({"guidance_scale": "NaN"}, "guidance_scale"),
    ({"inputs": {"class_labels": [1, 2]}}, "class_labels"), ({"inputs": {"class_labels": 2.5}}, "class_labels"),
    ({"inputs": {"class_labels": 1, "prompt": 3}}, "prompt"), ({"inputs": {}}, "class_labels"),
    ({"inputs": {"class_labels": 1, "hidden_states": 0}}, "hidden_states"), ({"colour": "red"}, "colour"),
    ({"options": {"warmup": 1}}, "warmup"), ({"options": {"tau0": -2}}, "tau0"),
])
def test_a_bad_request_is_a_4xx_naming_the_field_and_the_server_serves_on(server, change, field):
    status, answer, _ = _call(server, "/generate", _good(server, **change))
    assert 400 <= status < 500 and field in answer["error"], (status, answer)
    assert _call(server, "/health")[0] == 200


def test_malformed_bodies_and_unknown_endpoints(server):
    for raw in (b"{not json", b"[1, 2]", b"null", "\u00e9".encode("latin-1")):
        status, answer, _ = _call(server, "/generate", raw=raw)
        assert status == 400 and "error" in answer, raw
    assert _call(server, "/nowhere")[0] == 404
    nan = json.dumps(_good(server)).replace('"guidance_scale": 1.5', '"guidance_scale": NaN').encode()
    status, answer, _ = _call(server, "/generate", raw=nan)
    assert status == 400 and "guidance_scale" in answer["error"]


def test_stats_count_what_was_served(server):
    status, counters, _ = _call(server, "/stats")
    assert status == 200
    for key in ("served", "rejected", "in_flight", "queue_length", "mean_batch_requests", "full_fraction"):
        assert key in counters
    assert counters["served"] >= 2 and counters["in_flight"] == 0


def test_a_full_queue_answers_503_with_a_retry_hint(dit_bundle):
    with local_server(dit_bundle, max_batch=1, max_queue=1) as url:
        body = _good(url, steps=200)
        replies = []

        def send():
            replies.append(_call(url, "/generate", body))
        threads = [threading.Thread(target=send) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        statuses = sorted(r[0] for r in replies)
        assert len(replies) == 5 and statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
        busy = next(r for r in replies if r[0] == 503)
        assert "queue is full" in busy[1]["error"] and int(busy[2]["Retry-After"]) >= 1
        assert set(statuses) <= {200, 503}


def test_a_bundle_that_fails_its_checksum_fails_health_with_the_reason(dit_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dit_bundle, broken)
    onnx = sorted(broken.glob("*.onnx"))[0]
    data = bytearray(onnx.read_bytes())
    data[-10:] = bytes(10)
    onnx.write_bytes(bytes(data))
    with local_server(broken) as url:
        status, answer, _ = _call(url, "/health")
        assert status == 503 and onnx.name in answer["error"] and "sha256" in answer["error"]
        status, answer, _ = _call(url, "/generate", {"inputs": {}, "seed": 0, "steps": 1})
        assert status == 503 and "sha256" in answer["error"]


def test_speca_serve_refuses_a_broken_bundle_or_bad_sizes_before_starting_ray(dit_bundle, tmp_path):
    from speca_compile.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(dit_bundle, broken)
    (broken / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match="speca serve: .*format"):
        main(["serve", str(broken)])
    with pytest.raises(SystemExit, match="--replicas must be >= 1"):
        main(["serve", str(dit_bundle), "--replicas", "0"])


def test_a_bundle_with_a_fixed_batch_fails_health_naming_the_input(dit_bundle, tmp_path):
    """A bundle exported with a static batch (Dynamo tied the batch to an equal axis) cannot
    batch requests: said at load, not as a 500 at the first request."""
    fixed = tmp_path / "fixed"
    shutil.copytree(dit_bundle, fixed)
    manifest = json.loads((fixed / "manifest.json").read_text())
    for decl in manifest["inputs"]:
        decl["shape"][0] = 6
    (fixed / "manifest.json").write_text(json.dumps(manifest))
    with local_server(fixed) as url:
        status, answer, _ = _call(url, "/health")
        assert status == 503 and "fixed batch of 6" in answer["error"], answer
