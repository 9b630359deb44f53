"""``speca loadtest``: open-loop load on a served bundle, so the batching modes can be compared.

Why open-loop: a closed-loop client (send the next request when one returns)
slows down with the server and hides queueing; real traffic does not wait.
Requests are sent at Poisson arrival times (seeded, so a replay sends the same
schedule), or all at once for ``max`` (saturation), and each one is measured
from its scheduled arrival to its answer, so queueing shows in the latency.

Why everything is bounded: the request count is fixed, each request has a
client timeout, and the run as a whole waits at most until the last arrival
plus that timeout (and a grace period).  A request that fails, is rejected
(503), times out or never comes back is an ``Outcome`` with its kind and error
text -- counted, never dropped -- so ``ok + failed == N`` always holds.  No
request is retried: a 503 is the server's admission control, which is what is
measured.

Why loopback only: this is a benchmark of our own server, not a tool to point
at other hosts; a URL whose host is not 127.0.0.1, localhost or ::1 is refused.

Two kinds of target:

* a URL of a running ``speca serve`` -- one configuration, labelled ``server``;
* a bundle directory -- the configurations ``single``, ``request``,
  ``step-full`` and ``step-spec`` (see ``CONFIGS``), each served in-process
  through ``speca_compile.serve.local.local_server`` (or an injected
  ``server_factory``), all with the same request bodies and seeds.  Then the
  result also has quality (PSNR of each configuration's latents against
  ``step-full``'s for the same seed) and the ratio of step-spec's to
  step-full's saturation throughput.

The request bodies come from the first server's ``GET /example?index=i``, with
``seed=i``, ``steps`` and ``guidance_scale`` set here; the same bodies are
reused for every configuration and rate.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.client
import io
import json
import math
import random
import socket
import statistics
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from speca_compile.errors import SpecaError

Rate = Union[float, str]          # requests/s, or "max"
MAX = "max"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SERVER_LABEL = "server"
# label -> local_server(mode=..., speculate=...); the order is the order they run in.
CONFIGS: Dict[str, Dict[str, Any]] = {
    "single": {"mode": "single", "speculate": True},
    "request": {"mode": "request", "speculate": True},
    "step-full": {"mode": "step", "speculate": False},
    "step-spec": {"mode": "step", "speculate": True},
}
DEFAULT_CONFIGS = tuple(CONFIGS)
REFERENCE_CONFIG = "step-full"    # quality is measured against it (full compute)
GRACE_S = 2.0                     # past a request's timeout before it is declared hung

ServerFactory = Callable[..., ContextManager[str]]


class LoadTestError(SpecaError, ValueError):
    """The load test cannot run as asked (bad target, non-loopback host, bad rate, no /example)."""


# --------------------------------------------------------------------------- schedule

def parse_rate(text: Union[str, float, int]) -> Rate:
    """``"max"`` or a positive number of requests/s."""
    if isinstance(text, str) and text.strip().lower() == MAX:
        return MAX
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LoadTestError(f"a rate is a number of requests/s or 'max', got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise LoadTestError(f"a rate must be a positive finite number of requests/s or 'max', got {text!r}")
    return value


def parse_rates(text: str) -> List[Rate]:
    """``"1,2.5,max"`` -> ``[1.0, 2.5, "max"]``."""
    rates = [parse_rate(part) for part in str(text).split(",") if part.strip()]
    if not rates:
        raise LoadTestError(f"--rate needs at least one rate, got {text!r}")
    return rates


def poisson_arrivals(rate: Rate, n: int, seed: int = 0) -> List[float]:
    """Arrival offsets (s) of ``n`` requests of a Poisson process of ``rate`` requests/s.

    Seeded so a replay sends the same schedule.  The first request arrives at
    0.0 (waiting for it would only lengthen the run) and the gaps between
    arrivals are exponential with mean ``1/rate``.  ``"max"``: all at 0.0, the
    whole load at once (saturation)."""
    if n < 0:
        raise LoadTestError(f"the request count must be >= 0, got {n}")
    rate = parse_rate(rate)
    if rate == MAX:
        return [0.0] * n
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for i in range(n):
        if i:
            t += rng.expovariate(rate)
        arrivals.append(t)
    return arrivals


# --------------------------------------------------------------------------- target and HTTP

def check_loopback(url: str) -> Tuple[str, int, str]:
    """``(host, port, base path)`` of an ``http://`` URL on a loopback host; anything else is refused."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise LoadTestError(f"the target URL must be http://HOST:PORT on a loopback host, got {url!r}")
    host = parts.hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise LoadTestError(f"refusing to load-test host {host!r} ({url}): only loopback hosts "
                            f"({', '.join(LOOPBACK_HOSTS)}) are allowed")
    try:
        port = parts.port or 80
    except ValueError:
        raise LoadTestError(f"the target URL has an invalid port: {url!r}") from None
    return host, port, parts.path.rstrip("/")


def decode_npy(text: str) -> np.ndarray:
    """A base64-encoded ``.npy`` (the contract's ``latents.npy``) as an array; no pickles."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def _connect(url: str, timeout: float) -> Tuple[http.client.HTTPConnection, str]:
    """A connection to ``url``'s host (http.client, so no proxy settings apply) and its base path."""
    host, port, base = check_loopback(url)
    return http.client.HTTPConnection(host, port, timeout=timeout), base


def _get_json(url: str, path: str, timeout: float) -> Tuple[int, Any]:
    conn, base = _connect(url, timeout)
    try:
        conn.request("GET", base + path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw.decode("utf-8"))
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")


def fetch_bodies(url: str, n: int, *, steps: int, guidance: Optional[float], timeout: float = 60.0) -> List[dict]:
    """The ``n`` POST /generate bodies: ``GET /example?index=i`` with ``seed=i``, ``steps`` and
    ``guidance_scale`` set (left out when ``guidance`` is None), so every configuration
    generates the same images."""
    bodies = []
    for i in range(n):
        try:
            status, payload = _get_json(url, f"/example?index={i}", timeout)
        except OSError as exc:
            raise LoadTestError(f"cannot reach {url} for GET /example?index={i}: {exc}") from exc
        if status != 200 or not isinstance(payload, dict):
            detail = payload.get("error") if isinstance(payload, dict) else str(payload)[:200]
            raise LoadTestError(f"{url} GET /example?index={i} answered HTTP {status}: {detail}")
        body = dict(payload)
        body["seed"] = i
        body["steps"] = int(steps)
        if guidance is None:
            body.pop("guidance_scale", None)
        else:
            body["guidance_scale"] = float(guidance)
        bodies.append(body)
    return bodies


# --------------------------------------------------------------------------- client

@dataclasses.dataclass
class Outcome:
    """What became of one request.  ``kind``: ``ok``; ``busy`` (503, queue full); ``http``
    (another non-200); ``invalid`` (200 without usable latents); ``timeout`` (no answer
    within the client timeout); ``connection`` (refused/reset); ``hung`` (the client
    thread itself did not finish by timeout + grace).  ``status`` is 0 without an HTTP
    answer.  Times are seconds from the run's start: ``latency = completed - arrival``,
    with ``arrival`` the scheduled time, so client-side lag counts against the server."""

    index: int
    kind: str
    status: int
    arrival: float
    completed: Optional[float] = None
    latency: Optional[float] = None
    stats: Optional[Dict[str, Any]] = None
    latents: Optional[np.ndarray] = None
    error: Optional[str] = None
    retry_after: Optional[str] = None
    has_image: bool = False

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def timed_out(self) -> bool:
        return self.kind in ("timeout", "hung")


def _error_text(raw: bytes) -> str:
    try:
        payload = json.loads(raw.decode("utf-8"))
        if isinstance(payload, dict) and "error" in payload:
            return str(payload["error"])
    except ValueError:
        pass
    return raw.decode("utf-8", "replace")[:300]


def _send(url: str, index: int, payload: bytes, arrival: float, start: float, timeout: float,
          register_conn: Callable[[http.client.HTTPConnection], None]) -> Outcome:
    """POST one body and classify the answer; never raises (every failure is an Outcome)."""
    def done(kind: str, status: int = 0, **fields) -> Outcome:
        now = time.perf_counter() - start
        return Outcome(index=index, kind=kind, status=status, arrival=arrival, completed=now,
                       latency=now - arrival, **fields)

    try:
        conn, base = _connect(url, timeout)
    except LoadTestError as exc:
        return done("connection", error=str(exc))
    register_conn(conn)
    try:
        conn.request("POST", base + "/generate", body=payload,
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except TimeoutError:
        return done("timeout", error=f"no answer within the client timeout of {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return done("connection", error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    if resp.status != 200:
        kind = "busy" if resp.status == 503 else "http"
        return done(kind, resp.status, error=f"HTTP {resp.status}: {_error_text(raw)}",
                    retry_after=resp.getheader("Retry-After"))
    try:
        answer = json.loads(raw.decode("utf-8"))
        latents = decode_npy(answer["latents"]["npy"])
        stats = dict(answer.get("stats") or {})
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return done("invalid", resp.status, error=f"HTTP 200 without usable latents: {type(exc).__name__}: {exc}")
    return done("ok", 200, stats=stats, latents=latents, has_image=bool(answer.get("image_png")))


def run_load(url: str, bodies: Sequence[dict], arrivals: Sequence[float], timeout: float, *,
             progress: Optional[Callable[[Outcome], None]] = None, grace: float = GRACE_S) -> List[Outcome]:
    """Send ``bodies[i]`` at ``arrivals[i]`` s (a thread per request, so a slow answer never
    delays the next arrival) and return one ``Outcome`` per body, in order.

    Bounded: it returns by ``last arrival + timeout + grace`` at the latest.  A request
    whose thread has not finished by its own ``arrival + timeout + grace`` gets its
    connection closed and is recorded as ``hung``; a late answer after that is ignored.
    ``progress`` is called once per outcome, from the thread that made it."""
    if len(bodies) != len(arrivals):
        raise LoadTestError(f"{len(bodies)} bodies but {len(arrivals)} arrival times")
    check_loopback(url)
    payloads = [json.dumps(b).encode("utf-8") for b in bodies]
    results: List[Optional[Outcome]] = [None] * len(bodies)
    conns: List[Optional[http.client.HTTPConnection]] = [None] * len(bodies)
    lock = threading.Lock()

    def settle(i: int, outcome: Outcome) -> None:
        with lock:
            if results[i] is not None:
                return
            results[i] = outcome
        if progress is not None:
            progress(outcome)

    def worker(i: int) -> None:
        def register(conn):
            conns[i] = conn
        try:
            outcome = _send(url, i, payloads[i], arrivals[i], start, timeout, register)
        except BaseException as exc:   # a client bug must still leave an outcome
            now = time.perf_counter() - start
            outcome = Outcome(i, "connection", 0, arrivals[i], now, now - arrivals[i],
                              error=f"client error: {type(exc).__name__}: {exc}")
        settle(i, outcome)

    order = sorted(range(len(bodies)), key=lambda i: arrivals[i])
    threads: Dict[int, threading.Thread] = {}
    start = time.perf_counter()
    for i in order:
        wait = arrivals[i] - (time.perf_counter() - start)
        if wait > 0:
            time.sleep(wait)
        thread = threading.Thread(target=worker, args=(i,), name=f"loadtest-{i}", daemon=True)
        threads[i] = thread
        thread.start()
    for i in order:
        deadline = start + arrivals[i] + timeout + grace
        threads[i].join(max(0.0, deadline - time.perf_counter()))
        if threads[i].is_alive():
            conn = conns[i]
            if conn is not None:   # shutdown wakes a thread blocked in recv; close alone may not
                with contextlib.suppress(Exception):
                    conn.sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(Exception):
                    conn.close()
            now = time.perf_counter() - start
            settle(i, Outcome(i, "hung", 0, arrivals[i], now, now - arrivals[i],
                              error=f"no outcome within the client timeout of {timeout:g} s "
                                    f"(+{grace:g} s grace); the request was abandoned"))
    return _fill(results, arrivals)


def _fill(results: List[Optional[Outcome]], arrivals: Sequence[float]) -> List[Outcome]:
    """The outcomes in order; defensively, a slot still empty (cannot happen after the joins)
    becomes a counted failure rather than a missing request."""
    return [r if r is not None else Outcome(i, "hung", 0, arrivals[i], error="no outcome recorded")
            for i, r in enumerate(results)]


# --------------------------------------------------------------------------- summary

def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default method); None for no values."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    pos = (len(xs) - 1) * (q / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(sum(values) / len(values)) if values else None


def summarize(outcomes: Sequence[Outcome], *, rate: Optional[Rate] = None) -> Dict[str, Any]:
    """Per-run numbers: counts by kind, throughput, latency percentiles, queue/compute means,
    full-step fraction.

    * throughput (images/s) = successful requests / (last successful completion - first
      arrival of any request): the rate the server actually delivered;
    * latency p50/p95/p99 (s) over successful requests only (failures are counted
      separately; a timeout has no latency worth averaging);
    * queue_s / compute_s: means of the server's own ``stats``;
    * full_fraction = sum(full) / sum(full + speculative) over successful requests."""
    ok = [o for o in outcomes if o.ok]
    kinds: Dict[str, int] = {}
    for o in outcomes:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
    latencies = [o.latency for o in ok if o.latency is not None]
    throughput = None
    if ok:
        span = max(o.completed for o in ok) - min(o.arrival for o in outcomes)
        throughput = len(ok) / span if span > 0 else None
    elif outcomes:
        throughput = 0.0

    def stat(key: str) -> List[float]:
        return [float(o.stats[key]) for o in ok if o.stats and isinstance(o.stats.get(key), (int, float))]

    full, speculative = sum(stat("full")), sum(stat("speculative"))
    errors: List[str] = []
    for o in outcomes:
        if not o.ok and o.error and o.error not in errors and len(errors) < 5:
            errors.append(o.error)
    timeouts = sum(1 for o in outcomes if o.timed_out)
    return {
        "rate": rate,
        "requests": len(outcomes),
        "ok": len(ok),
        "failed": len(outcomes) - len(ok),
        "timeouts": timeouts,
        "errors": len(outcomes) - len(ok) - timeouts,
        "kinds": kinds,
        "error_samples": errors,
        "throughput": throughput,
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "latency_p99": percentile(latencies, 99),
        "latency_mean": _mean(latencies),
        "latency_max": max(latencies) if latencies else None,
        "queue_s_mean": _mean(stat("queue_s")),
        "compute_s_mean": _mean(stat("compute_s")),
        "full_fraction": full / (full + speculative) if full + speculative > 0 else None,
        "rejected_steps": sum(stat("rejected")),
        "duration_s": (max(o.completed for o in outcomes if o.completed is not None)
                       - min(o.arrival for o in outcomes)) if outcomes else None,
    }


def quality(runs: Sequence[Dict[str, Any]], outcomes: Sequence[Sequence[Outcome]],
            reference: str = REFERENCE_CONFIG) -> Optional[Dict[str, Any]]:
    """PSNR (dB, ``bench.quality.psnr``: peak = the reference's value range) of every
    successful request's latents against the reference configuration's for the same
    request index (the same seed and body).  The reference per index is ``reference``'s
    first successful outcome over its rates, so ``step-full`` at other rates shows any
    batch-composition nondeterminism.  Fills ``psnr_min``/``psnr_median`` into each run
    and returns ``{config: {compared, psnr_min, psnr_median}}``; None without the
    reference configuration."""
    import torch

    from speca_compile.bench.quality import psnr

    ref: Dict[int, np.ndarray] = {}
    for run, outs in zip(runs, outcomes):
        if run["config"] == reference:
            for o in outs:
                if o.ok and o.latents is not None and o.index not in ref:
                    ref[o.index] = o.latents
    if not any(run["config"] == reference for run in runs):
        return None
    per_config: Dict[str, List[float]] = {}
    for run, outs in zip(runs, outcomes):
        values: List[float] = []
        for o in outs:
            if o.ok and o.latents is not None and o.index in ref:
                a, b = o.latents, ref[o.index]
                if a.shape != b.shape:
                    raise LoadTestError(f"{run['config']} request {o.index}: latents of shape {a.shape}, "
                                        f"{reference} gave {b.shape}")
                values.append(psnr(torch.from_numpy(np.array(a, dtype=np.float64)),
                                   torch.from_numpy(np.array(b, dtype=np.float64))))
        run["psnr_compared"] = len(values)
        run["psnr_min"] = min(values) if values else None
        run["psnr_median"] = statistics.median(values) if values else None
        per_config.setdefault(run["config"], []).extend(values)
    return {config: {"compared": len(values), "psnr_min": min(values) if values else None,
                     "psnr_median": statistics.median(values) if values else None}
            for config, values in per_config.items()}


def median_round(rounds: Sequence[Tuple[Dict[str, Any], List[Outcome]]]):
    """The (summary, outcomes) of the round with the median throughput (the lower middle one of
    an even count), its summary listing every round's throughput as ``throughput_rounds``."""
    ordered = sorted(rounds, key=lambda r: -1.0 if r[0]["throughput"] is None else r[0]["throughput"])
    summary, outcomes = ordered[(len(ordered) - 1) // 2]
    return {**summary, "throughput_rounds": [r[0]["throughput"] for r in rounds]}, outcomes


def saturation_throughput(runs: Sequence[Dict[str, Any]], config: str) -> Optional[float]:
    """A configuration's throughput at rate ``max`` (the most it delivered at once), or,
    without a ``max`` run, its highest throughput over the rates tried."""
    mine = [r for r in runs if r["config"] == config and r.get("throughput") is not None]
    at_max = [r["throughput"] for r in mine if r["rate"] == MAX]
    if at_max:
        return max(at_max)
    return max((r["throughput"] for r in mine), default=None)


# --------------------------------------------------------------------------- the whole run

def _default_server_factory(bundle: str, **kwargs) -> ContextManager[str]:
    from speca_compile.serve.local import local_server   # lazy: the server side is heavy

    return local_server(bundle, **kwargs)


class _Progress:
    """tqdm on stderr when available, else a line per ~10% to stderr."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.done, self.bar = label, total, 0, None
        self.enabled = enabled
        self.lock = threading.Lock()
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, unit="req", file=sys.stderr, leave=True)
        except ImportError:
            print(f"{label}: 0/{total}", file=sys.stderr, flush=True)

    def __call__(self, outcome: Outcome) -> None:
        with self.lock:
            self.done += 1
            if not self.enabled:
                return
            if self.bar is not None:
                self.bar.update(1)
            elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
                print(f"{self.label}: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _rate_label(rate: Rate) -> str:
    return MAX if rate == MAX else f"{rate:g}/s"


def _warmup(url: str, body: dict, timeout: float, count: int) -> List[Dict[str, Any]]:
    """``count`` sequential requests before measuring (lazy engine builds, first-call
    allocations); their outcomes are reported, not counted in any run."""
    out = []
    for _ in range(count):
        o = run_load(url, [body], [0.0], timeout)[0]
        out.append({"kind": o.kind, "status": o.status, "latency": o.latency, "error": o.error})
    return out


def _server_stats(url: str) -> Optional[Any]:
    with contextlib.suppress(Exception):
        status, payload = _get_json(url, "/stats", 10.0)
        if status == 200:
            return payload
    return None


def loadtest(target: str, rates: Sequence[Rate] = (MAX,), requests: int = 32, *, steps: int = 50,
             guidance: Optional[float] = 1.5, max_batch: int = 8, max_queue: int = 256,
             timeout: float = 300.0, configs: Sequence[str] = DEFAULT_CONFIGS, seed: int = 0,
             warmup: int = 1, server_factory: Optional[ServerFactory] = None,
             progress: bool = True, rounds: int = 3) -> Dict[str, Any]:
    """Run the whole load test and return its result (what ``loadtest_report`` writes).

    ``target``: a loopback URL (one configuration, ``server``) or a bundle directory (each of
    ``configs`` through ``server_factory(bundle, mode=, speculate=, max_batch=, max_queue=)``,
    default ``local_server``; injectable so tests need no model).  Per configuration, every
    rate runs against one server, after ``warmup`` unmeasured requests; ``rounds`` times, the
    configurations interleaved, each run reported from its median round by throughput (its
    ``throughput_rounds`` lists them all).  The arrival schedule of rate ``rates[k]`` uses seed
    ``seed + k``, the same for every configuration and round.

    Result keys: ``target``, ``kind`` (url/bundle), ``settings``, ``configs``, ``runs`` (one
    summary per configuration and rate, in run order, with ``config``, ``rate``,
    ``server_stats``), ``saturation`` ({config: images/s}), and for bundles ``quality``
    ({config: compared, psnr_min, psnr_median}) and ``spec_vs_full_saturation``
    (step-spec / step-full saturation throughput)."""
    if requests < 1:
        raise LoadTestError(f"--requests must be >= 1, got {requests}")
    if steps < 1:
        raise LoadTestError(f"--steps must be >= 1, got {steps}")
    if not (timeout > 0):
        raise LoadTestError(f"--timeout must be > 0 s, got {timeout}")
    if max_batch < 1:
        raise LoadTestError(f"--max-batch must be >= 1, got {max_batch}")
    rates = [parse_rate(r) for r in rates]
    if not rates:
        raise LoadTestError("at least one rate is needed")
    target = str(target)
    if "://" in target:
        check_loopback(target)
        kind, labels = "url", [SERVER_LABEL]
    elif Path(target).is_dir():
        kind, labels = "bundle", list(configs)
        unknown = [c for c in labels if c not in CONFIGS]
        if unknown or not labels:
            raise LoadTestError(f"unknown configuration(s) {unknown or list(configs)}; valid: {', '.join(CONFIGS)}")
        if len(set(labels)) != len(labels):
            raise LoadTestError(f"a configuration is listed twice: {labels}")
    else:
        raise LoadTestError(f"the target {target!r} is neither an http:// URL nor a bundle directory")
    factory = server_factory or _default_server_factory
    schedules = [poisson_arrivals(r, requests, seed + k) for k, r in enumerate(rates)]

    if rounds < 1:
        raise LoadTestError(f"--rounds must be >= 1, got {rounds}")
    bodies: Optional[List[dict]] = None
    warmups: Dict[str, Any] = {}
    measured: Dict[Tuple[str, int], List[Tuple[Dict[str, Any], List[Outcome]]]] = {}
    with contextlib.ExitStack() as open_servers:
        urls: Dict[str, str] = {}
        for label in labels:   # every configuration's server is up for the whole run
            if kind == "url":
                url = target
            else:
                url = open_servers.enter_context(
                    factory(target, max_batch=max_batch, max_queue=max_queue, **CONFIGS[label]))
            check_loopback(url)
            urls[label] = url
            if bodies is None:
                bodies = fetch_bodies(url, requests, steps=steps, guidance=guidance, timeout=min(timeout, 60.0))
            if warmup:
                warmups[label] = _warmup(url, bodies[0], timeout, warmup)
        # rounds interleave the configurations, so a machine that speeds up or slows down
        # during the run moves every configuration's figures alike; each keeps its median round
        for round_ in range(rounds):
            for label in labels:
                for k, (rate, arrivals) in enumerate(zip(rates, schedules)):
                    tag = f"{label} @ {_rate_label(rate)}" + (f" (round {round_ + 1}/{rounds})" if rounds > 1 else "")
                    bar = _Progress(tag, requests, progress)
                    try:
                        outcomes = run_load(urls[label], bodies, arrivals, timeout, progress=bar)
                    finally:
                        bar.close()
                    summary = {"config": label, **summarize(outcomes, rate=rate),
                               "server_stats": _server_stats(urls[label])}
                    measured.setdefault((label, k), []).append((summary, outcomes))
                    if progress:
                        print(_one_line(summary), file=sys.stderr, flush=True)
    runs: List[Dict[str, Any]] = []
    run_outcomes: List[List[Outcome]] = []
    for label in labels:
        for k in range(len(rates)):
            summary, outcomes = median_round(measured[(label, k)])
            runs.append(summary)
            run_outcomes.append(outcomes)
    result: Dict[str, Any] = {
        "target": target,
        "kind": kind,
        "settings": {"rates": rates, "requests": requests, "steps": steps, "guidance": guidance,
                     "max_batch": max_batch, "max_queue": max_queue, "timeout": timeout, "seed": seed,
                     "warmup": warmup, "rounds": rounds},
        "configs": labels,
        "warmup": warmups,
        "runs": runs,
        "saturation": {label: saturation_throughput(runs, label) for label in labels},
    }
    if kind == "bundle":
        result["quality"] = quality(runs, run_outcomes)
        full, spec = result["saturation"].get("step-full"), result["saturation"].get("step-spec")
        result["spec_vs_full_saturation"] = spec / full if full and spec is not None else None
    return result


def _one_line(s: Dict[str, Any]) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    return (f"{s['config']} @ {_rate_label(s['rate'])}: {s['ok']}/{s['requests']} ok "
            f"({s['timeouts']} timeouts, {s['errors']} errors), {f(s['throughput'], '.3f')} images/s, "
            f"p50 {f(s['latency_p50'], '.3f')} s, p95 {f(s['latency_p95'], '.3f')} s")


# --------------------------------------------------------------------------- CLI

def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``loadtest`` subcommand to ``subparsers``; its parsed args carry
    ``func=loadtest_command`` (dispatch with ``return args.func(args)``)."""
    p = subparsers.add_parser(
        "loadtest", help="Poisson load on a served bundle: throughput, latency percentiles, quality",
        description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="a running server's loopback URL (http://127.0.0.1:PORT) or a bundle "
                                  "directory (then each of --configs is served in-process and compared)")
    p.add_argument("--rate", default=MAX,
                   help="comma-separated arrival rates in requests/s, or 'max' (all requests at once: "
                        "saturation); default: max")
    p.add_argument("--requests", type=int, default=32, help="requests per rate (default 32)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps per request (default 50)")
    p.add_argument("--guidance", type=float, default=1.5,
                   help="guidance_scale of every request (default 1.5, the reference models' own)")
    p.add_argument("--max-batch", type=int, default=8, help="server batch size, bundle targets (default 8)")
    p.add_argument("--max-queue", type=int, default=256, help="server queue bound, bundle targets (default 256)")
    p.add_argument("--timeout", type=float, default=300.0, help="client timeout per request in s (default 300)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated configurations for a bundle target, run in this order, from: "
                        f"{', '.join(CONFIGS)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival schedules (default 0)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests per server first (default 1)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of every configuration, interleaved; each reports its median round (default 3)")
    p.add_argument("--out", default="loadtest_results",
                   help="directory for loadtest.md, loadtest.json and loadtest.png (default loadtest_results)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=loadtest_command)
    return p


def loadtest_command(args: argparse.Namespace) -> int:
    """``speca loadtest``: run, write the report, print its Markdown; 2 (and a message on
    stderr) when the test cannot run as asked."""
    from speca_compile.serve import loadtest_report

    try:
        rates = parse_rates(args.rate)
        configs = [c.strip() for c in str(args.configs).split(",") if c.strip()]
        result = loadtest(args.target, rates, args.requests, steps=args.steps, guidance=args.guidance,
                          max_batch=args.max_batch, max_queue=args.max_queue, timeout=args.timeout,
                          configs=configs, seed=args.seed, warmup=max(0, args.warmup),
                          progress=not args.quiet, rounds=args.rounds)
    except SpecaError as exc:   # LoadTestError, or a BundleError from serving the bundle
        print(f"speca loadtest: {exc}", file=sys.stderr)
        return 2
    paths = loadtest_report.write_report(result, Path(args.out))
    print(paths["markdown"].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
