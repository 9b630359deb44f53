"""``speca serve``: the bundle behind HTTP on Ray Serve, each replica with its own step loop.

Ray Serve gives the scale-out: replicas on every node of a cluster, restarts
of a replica that died, health checks, one HTTP entry (its proxy) in front.
Each replica is a ``Service`` (``service.py``) with its own step loop; Ray's
router spreads requests over replicas, and within a replica the step loop
batches whatever requests it holds, step by step.  A replica takes up to
``max_queue + max_batch`` requests at once (``max_ongoing_requests``): the
step loop, not Ray, decides what waits.

``check_health`` is Ray's health check: a replica whose loop died reports the
reason, and Ray Serve replaces it.  A replica whose bundle failed to load (a
checksum mismatch names the file) fails the check Ray runs before it counts
a replica as started: after three tries the deployment is DEPLOY_FAILED and
``serve.status()`` carries the reason (measured with Ray 2.60); ``speca
serve`` checks the bundle before deploying, so the command says it first.

When a replica dies mid-request, Ray's proxy answers its requests 500 with a
plain-text body (not this contract's JSON); requests it retries elsewhere
whose body was lost get 408 here (``BODY_TIMEOUT_S``), and the proxy's own
``request_timeout_s`` bounds anything else: nothing waits forever.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
(``Request``) at run time, through Ray's wrappers.

Needs the ``serve`` extra (``pip install speca-compile[serve]``: ``ray[serve]``,
which brings FastAPI and uvicorn).
"""


import asyncio
from typing import Optional

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve
except ImportError as exc:   # the base install: say what to install
    raise ImportError("speca serve needs Ray Serve: pip install 'speca-compile[serve]' "
                      f"(missing: {exc.name})") from exc

from speca_compile.serve.service import Reply, ServeConfig, Service

APP_NAME = "speca"
BODY_TIMEOUT_S = 30.0   # a request body not received by then: 408 (measured: a retry after a replica was killed)
app = FastAPI(title="speca serve")


def _response(reply: Reply) -> JSONResponse:
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


@serve.deployment(name="speca", health_check_period_s=2, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class SpecaReplica:
    """One replica: a ``Service`` over the bundle, endpoints as ``service.py`` defines them."""

    def __init__(self, bundle: str, config: ServeConfig):
        self.service = Service(bundle, config)

    @app.post("/generate")
    async def generate(self, request: Request) -> JSONResponse:
        try:   # Ray Serve can retry a request here after a dead replica consumed its body: never wait forever
            raw = await asyncio.wait_for(request.body(), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"body: not received within {BODY_TIMEOUT_S} s"}, status_code=408)
        submitted = self.service.submit(raw)
        if isinstance(submitted, Reply):
            return _response(submitted)
        timeout = self.service.config.request_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(submitted)), timeout)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"no result within {timeout} s"}, status_code=504)
        except Exception:
            pass   # reply() names the error
        return _response(self.service.reply(submitted))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        return _response(self.service.health())

    @app.get("/stats")
    async def stats(self) -> JSONResponse:
        return _response(self.service.stats())

    @app.get("/example")
    async def example(self, index: int = 0) -> JSONResponse:
        return _response(self.service.example(index))

    def check_health(self) -> None:
        reply = self.service.health()
        if reply.status != 200:
            raise RuntimeError(reply.body.get("error", "unhealthy"))

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def application(bundle, config: ServeConfig = ServeConfig(), replicas: int = 1):
    """The bound Ray Serve application: ``serve.run(application(...))`` deploys it."""
    return SpecaReplica.options(
        num_replicas=replicas, max_ongoing_requests=config.max_queue + config.max_batch,
        # beyond what the replicas hold, Ray's router queues this many and answers 503 past them
        max_queued_requests=config.max_queue * replicas,
        ray_actor_options={"num_cpus": 0}).bind(str(bundle), config)


def deploy(bundle, config: ServeConfig = ServeConfig(), replicas: int = 1, host: str = "127.0.0.1",
           port: int = 8000, address: Optional[str] = None):
    """Start (or join, ``address``) Ray, start Serve's HTTP proxy on ``host:port`` and deploy;
    returns once every replica is up (Serve's handle to the application)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    # (a Serve instance already running keeps its own host and port: Ray logs so)
    serve.start(http_options={"host": host, "port": port,
                              "request_timeout_s": config.request_timeout_s + 60})
    return serve.run(application(bundle, config, replicas), name=APP_NAME, route_prefix="/")


def serve_command(args) -> int:
    from pathlib import Path

    from speca_compile.bundle.load import read_manifest, verify_files
    from speca_compile.errors import SpecaError

    try:   # fail here, with the reason, rather than in a replica restart loop
        verify_files(args.bundle, read_manifest(args.bundle))
    except SpecaError as exc:
        raise SystemExit(f"speca serve: {exc}") from None
    for name, value in (("--replicas", args.replicas), ("--max-batch", args.max_batch),
                        ("--max-queue", args.max_queue)):
        if value < 1:
            raise SystemExit(f"speca serve: {name} must be >= 1, got {value}")
    config = ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue, speculate=not args.no_speculate)
    deploy(Path(args.bundle).resolve(), config, args.replicas, args.host, args.port, args.address)
    print(f"serving {args.bundle} on http://{args.host}:{args.port} ({args.replicas} replica(s)); "
          "POST /generate, GET /health, GET /stats; Ctrl-C stops", flush=True)
    try:
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
