"""The endpoints of ``speca serve`` over one step loop, for any HTTP front end.

Both front ends (``local``'s stdlib server and ``ray_app``'s Ray Serve
deployment) are thin: they hand the method's inputs here and send back the
``Reply`` (status, JSON body, headers).  So the contract, its errors and its
status codes live in one place:

* ``POST /generate``: 200 with the result; 400 naming the bad field
  (``protocol``); 503 with ``Retry-After`` when the queue is full; 503 when
  the bundle is not loaded or the loop is not running; 500 naming the error
  when the model call failed (the other requests keep being served).
* ``GET /health``: 200 when the bundle is loaded and the loop runs, else 503
  with the reason (a bundle whose checksum does not match names the file).
* ``GET /stats``: the loop's counters.
* ``GET /example?index=I``: a valid ``/generate`` body from the bundle's
  example conditioning row I (clients and ``speca loadtest`` start from it).

A bundle that cannot be loaded does not raise here: the service records why,
and every endpoint says so (the stdlib front end answers 503 with the
reason; on Ray Serve the replica's health check raises it, see ``ray_app``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Dict, Optional

import torch

from speca_compile.serve import protocol
from speca_compile.serve.spec import spec_of
from speca_compile.serve.step_loop import LoopStopped, QueueFull, StepLoop


@dataclasses.dataclass
class Reply:
    status: int
    body: Dict
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How one replica serves its bundle."""

    max_batch: int = 8            # requests advanced per tick
    max_queue: int = 64           # requests waiting beyond that; more get 503
    mode: str = "step"            # step | request | single (step_loop.MODES)
    speculate: bool = True
    max_steps: int = 1000
    request_timeout_s: float = 600.0   # a request not answered by then gets 504


class Service:
    def __init__(self, bundle, config: ServeConfig = ServeConfig(), model=None):
        """Load ``bundle`` (a path; or pass a loaded ``model``) and start its step loop."""
        import speca_compile

        self.bundle = str(bundle)
        self.config = config
        self.limits = protocol.Limits(max_steps=config.max_steps)
        self.loop: Optional[StepLoop] = None
        self.failure: Optional[str] = None
        try:
            model = model if model is not None else speca_compile.load(bundle)
            self.loop = StepLoop(model, spec_of(model), max_batch=config.max_batch, max_queue=config.max_queue,
                                 mode=config.mode, speculate=config.speculate).start()
        except Exception as exc:   # said by every endpoint (health: 503 with this reason)
            self.failure = f"bundle {self.bundle} could not be served: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------ endpoints
    def submit(self, raw: bytes):
        """``POST /generate`` up to the queue: a ``Reply`` now (an error), or a future of one."""
        down = self._down()
        if down is not None:
            return Reply(503, protocol.error_body(down))
        try:
            request = protocol.parse_generate(protocol.load_body(raw), self.loop.spec, self.limits)
        except protocol.RequestError as exc:
            return Reply(exc.status, protocol.error_body(str(exc)))
        try:
            future = self.loop.submit(request)
        except QueueFull as exc:
            return Reply(503, protocol.error_body(str(exc)), {"Retry-After": str(int(exc.retry_after + 0.999))})
        except LoopStopped as exc:
            return Reply(503, protocol.error_body(str(exc)))
        return future

    def reply(self, future: concurrent.futures.Future) -> Reply:
        """The ``Reply`` of a finished ``/generate`` future."""
        try:
            result = future.result(timeout=0)
        except LoopStopped as exc:
            return Reply(503, protocol.error_body(str(exc)))
        except Exception as exc:
            return Reply(500, protocol.error_body(f"the model call failed: {type(exc).__name__}: {exc}"))
        return Reply(200, protocol.response_body(result.latent, result.stats, self.loop.spec.image))

    def generate(self, raw: bytes) -> Reply:
        """``POST /generate``, blocking until answered (threaded front ends)."""
        submitted = self.submit(raw)
        if isinstance(submitted, Reply):
            return submitted
        try:
            submitted.result(timeout=self.config.request_timeout_s)
        except concurrent.futures.TimeoutError:
            return Reply(504, protocol.error_body(f"no result within {self.config.request_timeout_s} s"))
        except Exception:
            pass   # reply() names it
        return self.reply(submitted)

    def health(self) -> Reply:
        down = self._down()
        if down is not None:
            return Reply(503, {"status": "unavailable", "error": down})
        return Reply(200, {"status": "ok", "bundle": self.bundle})

    def stats(self) -> Reply:
        if self.loop is None:
            return Reply(503, protocol.error_body(self.failure))
        return Reply(200, {"bundle": self.bundle, **self.loop.counters()})

    def example(self, index: int = 0) -> Reply:
        """A valid ``/generate`` body from the bundle's example conditioning row ``index``."""
        down = self._down()
        if down is not None:
            return Reply(503, protocol.error_body(down))
        model, spec = self.loop.model, self.loop.spec
        example = model.by_key(*model.example_inputs())
        rows = int(example[spec.latent].shape[0])
        if spec.negative is not None and rows % 2 == 0:
            rows //= 2    # exported with both CFG halves: the first is the conditional one
        row = index % rows
        inputs = {c.key: _json_value(example[c.key][row]) for c in spec.conditions}
        return Reply(200, {"inputs": inputs, "seed": int(index), "steps": 50, "guidance_scale": 1.0})

    def _down(self) -> Optional[str]:
        if self.failure is not None:
            return self.failure
        if self.loop.failure is not None:
            return self.loop.failure
        if not self.loop.running():
            return "the step loop is not running"
        return None

    def close(self) -> None:
        if self.loop is not None:
            self.loop.stop()


def _json_value(value: torch.Tensor):
    """A tensor as the contract's JSON value: a number or nested list up to 64 values, else npy."""
    if value.numel() <= 64:
        return value.tolist()
    return {"npy": protocol.encode_npy(value)}
