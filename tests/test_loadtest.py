"""``speca loadtest`` against a fake in-process server: no model, a fixed sleep per request.

The fake implements the serving contract (POST /generate, GET /example, /health,
/stats), rejects with 503 + Retry-After past K requests in flight, and can hang
chosen seeds past the client timeout, so every way a request can end is
exercised and shown to be counted."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from speca_compile.serve import loadtest as lt
from speca_compile.serve import loadtest_report as report


class FakeServer:
    """A stand-in for ``speca serve``: sleeps ``delay`` s per request, answers seeded latents."""

    def __init__(self, delay=0.02, max_inflight=1000, hang_seeds=(), hang_s=10.0, noise=0.0, speculate=True):
        self.delay, self.max_inflight, self.hang_seeds, self.hang_s = delay, max_inflight, set(hang_seeds), hang_s
        self.noise, self.speculate = noise, speculate
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inflight = 0
        self.posts = []          # request bodies received (accepted or not)
        self.examples = []       # /example indices served
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, payload, headers=()):
                data = json.dumps(payload).encode()
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                if parts.path == "/example":
                    i = int(urllib.parse.parse_qs(parts.query)["index"][0])
                    fake.examples.append(i)
                    self._json(200, {"inputs": {"class_label": [i]}, "seed": 123, "steps": 1,
                                     "guidance_scale": 1.0})
                elif parts.path == "/health":
                    self._json(200, {"ok": True})
                elif parts.path == "/stats":
                    self._json(200, {"served": len(fake.posts)})
                else:
                    self._json(404, {"error": "no such endpoint"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.posts.append(body)
                    busy = fake.inflight >= fake.max_inflight
                    if not busy:
                        fake.inflight += 1
                if busy:
                    self._json(503, {"error": "queue full"}, [("Retry-After", "1")])
                    return
                try:
                    if body["seed"] in fake.hang_seeds:
                        fake.release.wait(fake.hang_s)
                    time.sleep(fake.delay)
                    latents = np.random.default_rng(body["seed"]).standard_normal((2, 4, 4)).astype(np.float32)
                    if fake.noise:
                        latents += fake.noise * np.random.default_rng(1000 + body["seed"]).standard_normal(
                            latents.shape).astype(np.float32)
                    buf = io.BytesIO()
                    np.save(buf, latents)
                    steps = int(body["steps"])
                    full = steps - steps // 2 if fake.speculate else steps
                    stats = {"full": full, "speculative": steps - full, "rejected": 0, "steps": steps,
                             "queue_s": 0.001, "compute_s": fake.delay}
                    self._json(200, {"latents": {"npy": base64.b64encode(buf.getvalue()).decode()}, "stats": stats})
                finally:
                    with fake.lock:
                        fake.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _body(i, steps=4):
    return {"inputs": {"class_label": [i]}, "seed": i, "steps": steps, "guidance_scale": 4.0}


def _outcome(i, latency, arrival=0.0, kind="ok", stats=None):
    return lt.Outcome(index=i, kind=kind, status=200 if kind == "ok" else 0, arrival=arrival,
                      completed=arrival + latency, latency=latency, stats=stats)


# --------------------------------------------------------------------------- schedule

def test_arrivals_are_seeded_reproducible_and_have_the_right_mean():
    a = lt.poisson_arrivals(10.0, 2001, seed=7)
    assert a == lt.poisson_arrivals(10.0, 2001, seed=7)
    assert a != lt.poisson_arrivals(10.0, 2001, seed=8)
    assert a[0] == 0.0 and all(y >= x for x, y in zip(a, a[1:]))
    gaps = np.diff(a)
    assert abs(gaps.mean() - 0.1) < 0.01                      # mean 1/rate (s.e. ~0.0022)
    assert abs(gaps.std() - 0.1) < 0.015                      # exponential: std == mean
    assert lt.poisson_arrivals("max", 5) == [0.0] * 5
    assert lt.parse_rates("1, 2.5,max") == [1.0, 2.5, "max"]
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(lt.LoadTestError):
            lt.parse_rate(bad)


# --------------------------------------------------------------------------- client

def test_503_rejections_are_counted_with_retry_after():
    with FakeServer(delay=0.5, max_inflight=2) as fake:
        outcomes = lt.run_load(fake.url, [_body(i) for i in range(6)], [0.0] * 6, timeout=5.0)
    s = lt.summarize(outcomes, rate="max")
    assert [o.index for o in outcomes] == list(range(6))
    assert s["ok"] + s["failed"] == 6
    assert s["ok"] == 2 and s["kinds"] == {"ok": 2, "busy": 4}
    assert s["errors"] == 4 and s["timeouts"] == 0
    busy = [o for o in outcomes if o.kind == "busy"]
    assert all(o.status == 503 and o.retry_after == "1" and "queue full" in o.error for o in busy)
    ok = [o for o in outcomes if o.ok]
    assert all(o.latents.shape == (2, 4, 4) and o.stats["steps"] == 4 for o in ok)
    np.testing.assert_array_equal(ok[0].latents,
                                  np.random.default_rng(ok[0].index).standard_normal((2, 4, 4)).astype(np.float32))


def test_a_hung_request_times_out_and_is_counted():
    with FakeServer(delay=0.02, hang_seeds={2}) as fake:
        t0 = time.perf_counter()
        outcomes = lt.run_load(fake.url, [_body(i) for i in range(5)], lt.poisson_arrivals(200.0, 5), timeout=0.5)
        elapsed = time.perf_counter() - t0
    s = lt.summarize(outcomes)
    assert s["ok"] + s["failed"] == 5
    assert s["kinds"] == {"ok": 4, "timeout": 1} and s["timeouts"] == 1 and s["errors"] == 0
    assert outcomes[2].kind == "timeout" and outcomes[2].timed_out and "0.5 s" in outcomes[2].error
    assert outcomes[2].latency >= 0.45
    assert elapsed < 3.0


def test_a_client_thread_that_never_returns_is_recorded_as_hung(monkeypatch):
    stuck = threading.Event()
    real_send = lt._send

    def send(url, index, *args):
        if index == 1:
            stuck.wait(5.0)
        return real_send(url, index, *args)

    monkeypatch.setattr(lt, "_send", send)
    try:
        with FakeServer(delay=0.01) as fake:
            t0 = time.perf_counter()
            outcomes = lt.run_load(fake.url, [_body(i) for i in range(3)], [0.0] * 3, timeout=0.3, grace=0.1)
            elapsed = time.perf_counter() - t0
    finally:
        stuck.set()
    assert [o.kind for o in outcomes] == ["ok", "hung", "ok"]
    assert elapsed < 2.0
    assert lt.summarize(outcomes)["timeouts"] == 1


def test_connection_refused_is_a_counted_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcomes = lt.run_load(f"http://127.0.0.1:{port}", [_body(0), _body(1)], [0.0, 0.0], timeout=2.0)
    assert [o.kind for o in outcomes] == ["connection", "connection"]
    assert lt.summarize(outcomes)["failed"] == 2


# --------------------------------------------------------------------------- summary

def test_percentiles_and_summary_on_known_latencies():
    values = list(range(1, 101))
    assert lt.percentile(values, 50) == pytest.approx(50.5)
    assert lt.percentile(values, 95) == pytest.approx(95.05)
    assert lt.percentile(values, 99) == pytest.approx(99.01)
    rng = np.random.default_rng(0)
    xs = rng.exponential(size=37).tolist()
    for q in (0, 10, 50, 95, 99, 100):
        assert lt.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert lt.percentile([], 50) is None

    stats = {"full": 3, "speculative": 1, "rejected": 0, "steps": 4, "queue_s": 0.5, "compute_s": 1.5}
    outcomes = [_outcome(i, float(i + 1), arrival=0.1 * i, stats=stats) for i in range(10)]
    outcomes.append(lt.Outcome(index=10, kind="timeout", status=0, arrival=0.2, completed=9.0, latency=8.8,
                               error="no answer"))
    s = lt.summarize(outcomes, rate=2.0)
    assert s["requests"] == 11 and s["ok"] == 10 and s["failed"] == 1 and s["timeouts"] == 1
    assert s["latency_p50"] == pytest.approx(5.5)            # the timeout's 8.8 s is not a latency
    assert s["latency_p95"] == pytest.approx(np.percentile(np.arange(1, 11), 95))
    assert s["latency_p99"] == pytest.approx(np.percentile(np.arange(1, 11), 99))
    # last ok completion: arrival 0.9 + latency 10 = 10.9; first arrival 0.0
    assert s["throughput"] == pytest.approx(10 / 10.9)
    assert s["queue_s_mean"] == pytest.approx(0.5) and s["compute_s_mean"] == pytest.approx(1.5)
    assert s["full_fraction"] == pytest.approx(0.75)
    assert s["error_samples"] == ["no answer"]
    nothing = lt.summarize([lt.Outcome(0, "busy", 503, 0.0, 0.1, 0.1, error="queue full")])
    assert nothing["throughput"] == 0.0 and nothing["latency_p50"] is None and nothing["full_fraction"] is None


# --------------------------------------------------------------------------- target checks

def test_non_loopback_urls_are_refused_naming_the_host(capsys):
    with pytest.raises(lt.LoadTestError, match="example.com"):
        lt.loadtest("http://example.com:8000", ["max"], 2)
    with pytest.raises(lt.LoadTestError, match="10.0.0.5"):
        lt.run_load("http://10.0.0.5:80", [_body(0)], [0.0], 1.0)
    with pytest.raises(lt.LoadTestError, match="http://"):
        lt.check_loopback("https://127.0.0.1:8443")
    assert lt.check_loopback("http://localhost:8000/") == ("localhost", 8000, "")
    assert lt.check_loopback("http://[::1]:9000") == ("::1", 9000, "")

    parser = argparse.ArgumentParser()
    lt.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["loadtest", "http://192.168.1.20:8000", "--quiet"])
    assert args.func(args) == 2
    assert "192.168.1.20" in capsys.readouterr().err


def test_bad_targets_and_configs(tmp_path):
    with pytest.raises(lt.LoadTestError, match="neither"):
        lt.loadtest(str(tmp_path / "missing"), ["max"], 2)
    with pytest.raises(lt.LoadTestError, match="unknown configuration"):
        lt.loadtest(str(tmp_path), ["max"], 2, configs=["step-full", "bogus"], server_factory=lambda *a, **k: None)


# --------------------------------------------------------------------------- report

def _strict_json(text):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_report_files_json_and_png(tmp_path):
    with FakeServer(delay=0.01) as fake:
        result = lt.loadtest(fake.url, [50.0, "max"], 4, steps=3, guidance=2.0, timeout=5.0, progress=False,
                             rounds=1)
    assert [(r["config"], r["rate"]) for r in result["runs"]] == [("server", 50.0), ("server", "max")]
    assert fake.examples == [0, 1, 2, 3]
    measured = fake.posts[1:]                                  # the first POST is the warm-up
    assert len(fake.posts) == 1 + 2 * 4
    assert sorted(b["seed"] for b in measured) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(b["steps"] == 3 and b["guidance_scale"] == 2.0 for b in fake.posts)
    assert result["warmup"]["server"][0]["kind"] == "ok"
    assert result["runs"][1]["server_stats"]["served"] >= 5

    paths = report.write_report(result, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"loadtest.md", "loadtest.json", "loadtest.png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["loadtest.json", "loadtest.md", "loadtest.png"]
    payload = _strict_json(paths["json"].read_text())
    assert payload["runs"][0]["ok"] == 4 and payload["plot"] == "loadtest.png"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| config | rate |" in md and "| server | max | 4/4 |" in md and "| server | 50/s |" in md


def test_rounds_repeat_every_run_and_report_the_median_round():
    with FakeServer(delay=0.01) as fake:
        result = lt.loadtest(fake.url, ["max"], 3, steps=2, guidance=None, timeout=5.0, progress=False, rounds=3)
    assert len(fake.posts) == 1 + 3 * 3                          # warm-up, then 3 rounds of 3
    (run,) = result["runs"]
    assert len(run["throughput_rounds"]) == 3 and run["ok"] == 3
    assert run["throughput"] == sorted(run["throughput_rounds"])[1]
    assert result["settings"]["rounds"] == 3
    assert "3 round(s)" in report.markdown(result) and "images/s of every round" in report.markdown(result)
    with pytest.raises(lt.LoadTestError, match="--rounds"):
        lt.loadtest(fake.url, ["max"], 3, rounds=0, progress=False)


def test_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    outcomes = [_outcome(i, 0.1 * (i + 1), stats={"full": 1, "speculative": 1}) for i in range(3)]
    result = {"target": "http://127.0.0.1:1", "kind": "url", "configs": ["server"],
              "settings": {"rates": ["max"], "requests": 3, "steps": 2, "guidance": 4.0, "max_batch": 8,
                           "timeout": 1.0, "seed": 0, "warmup": 0},
              "runs": [{"config": "server", **lt.summarize(outcomes, rate="max"), "psnr_min": math.inf}],
              "saturation": {"server": 1.0}}
    (tmp_path / "loadtest.png").write_bytes(b"stale")
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib -> ImportError
    paths = report.write_report(result, tmp_path)
    assert "plot" not in paths and not (tmp_path / "loadtest.png").exists()
    assert "matplotlib is not installed" in paths["markdown"].read_text()
    payload = _strict_json(paths["json"].read_text())
    assert "matplotlib" in payload["plot"] and payload["runs"][0]["psnr_min"] == "inf"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- CLI

def test_register_wires_the_cli_end_to_end(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="speca")
    sub = parser.add_subparsers(dest="command", required=True)
    lt.register(sub)
    with FakeServer(delay=0.01) as fake:
        args = parser.parse_args(["loadtest", fake.url, "--rate", "100,max", "--requests", "3", "--steps", "2",
                                  "--timeout", "5", "--out", str(tmp_path / "res")])
        assert args.func is lt.loadtest_command
        assert (args.max_batch, args.guidance, args.seed, args.configs) == (8, 1.5, 0, "single,request,step-full,step-spec")
        assert args.func(args) == 0
    out = capsys.readouterr()
    assert "| server | max | 3/3 |" in out.out
    assert "server @ max" in out.err                            # progress on stderr
    payload = _strict_json((tmp_path / "res" / "loadtest.json").read_text())
    assert payload["settings"]["rates"] == [100.0, "max"] and payload["kind"] == "url"
    assert (tmp_path / "res" / "loadtest.png").read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- bundle targets

def test_bundle_target_runs_the_four_configurations_in_order(tmp_path):
    calls, servers = [], []
    delays = {("single", True): 0.03, ("request", True): 0.03, ("step", False): 0.12, ("step", True): 0.02}

    @contextlib.contextmanager
    def factory(bundle, *, mode, speculate, max_batch, max_queue):
        calls.append((bundle, mode, speculate, max_batch, max_queue))
        noise = 0.0 if not speculate else 1e-3
        with FakeServer(delay=delays[(mode, speculate)], noise=noise, speculate=speculate) as fake:
            servers.append(fake)
            yield fake.url

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    result = lt.loadtest(str(bundle), [100.0, "max"], 4, steps=4, max_batch=3, timeout=5.0, warmup=0,
                         server_factory=factory, progress=False)
    assert [c[1:3] for c in calls] == [("single", True), ("request", True), ("step", False), ("step", True)]
    assert all(c[0] == str(bundle) and c[3] == 3 and c[4] == 256 for c in calls)
    assert result["configs"] == ["single", "request", "step-full", "step-spec"]
    assert [(r["config"], r["rate"]) for r in result["runs"]] == [
        (c, r) for c in result["configs"] for r in (100.0, "max")]
    assert all(r["ok"] == 4 for r in result["runs"])
    # bodies come from the first server only and every configuration got the same ones
    assert servers[0].examples == [0, 1, 2, 3] and all(not s.examples for s in servers[1:])
    first = sorted(json.dumps(b, sort_keys=True) for b in servers[0].posts)
    assert all(sorted(json.dumps(b, sort_keys=True) for b in s.posts) == first for s in servers[1:])

    q = result["quality"]
    assert set(q) == {"single", "request", "step-full", "step-spec"}
    assert q["step-full"]["compared"] == 8 and q["step-full"]["psnr_min"] == math.inf
    for config in ("single", "request", "step-spec"):
        assert q[config]["compared"] == 8
        assert 40.0 < q[config]["psnr_min"] <= q[config]["psnr_median"] < 100.0
    assert all(r["psnr_min"] is not None and r["psnr_median"] is not None for r in result["runs"])
    full_fraction = {r["config"]: r["full_fraction"] for r in result["runs"]}
    assert full_fraction["step-full"] == 1.0 and full_fraction["step-spec"] == 0.5

    sat = result["saturation"]
    assert result["spec_vs_full_saturation"] == pytest.approx(sat["step-spec"] / sat["step-full"])
    assert result["spec_vs_full_saturation"] > 1.0

    paths = report.write_report(result, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "step-spec / step-full saturation throughput" in md and "| step-full | 8 | inf | inf |" in md
    payload = _strict_json(paths["json"].read_text())
    assert payload["quality"]["step-full"]["psnr_min"] == "inf"
