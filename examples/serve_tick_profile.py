"""Where a serving tick's time goes: per engine call and in Python, full compute vs speculation.

    python examples/serve_tick_profile.py BUNDLE [--max-batch 8] [--requests 48] [--rounds 2]

Drives the step loop tick by tick (no HTTP, no threads) with ``--max-batch`` requests active at
every tick (a finished request is replaced by the next), for step-level full compute and
step-level speculation in turn, ``--rounds`` times interleaved, and prints per configuration the
time per tick, each engine's calls, ms per call and rows per call, and what is left for Python
(routing, policy, forecasts, cache updates, the sampler step).  The engines are timed by
wrapping the loaded bundle's own engine objects, never the model.  Used for the README's
Serving section; ``speca loadtest`` measures the served throughput itself.
"""

from __future__ import annotations

import argparse
import collections
import time

import speca_compile
from speca_compile.serve.protocol import parse_generate
from speca_compile.serve.service import ServeConfig, Service
from speca_compile.serve.step_loop import StepLoop


class EngineTimer:
    """Wraps a runner's engines' ``run`` to add up seconds, calls and rows per engine."""

    def __init__(self, runner):
        self.seconds = collections.Counter()
        self.calls = collections.Counter()
        self.rows = collections.Counter()
        for name, engine in runner.engines.items():
            engine.run = self._timed(name, engine.run)

    def _timed(self, name, run):
        def timed(inputs):
            start = time.perf_counter()
            out = run(inputs)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            first = next((v for v in inputs if hasattr(v, "dim") and v.dim()), None)
            self.rows[name] += int(first.shape[0]) if first is not None else 0
            return out
        return timed

    def clear(self):
        self.seconds.clear(), self.calls.clear(), self.rows.clear()


def drive(model, bodies, max_batch: int, speculate: bool, requests: int):
    """Keep ``max_batch`` requests active until ``requests`` are answered; (wall s, ticks, full share)."""
    loop = StepLoop(model, max_batch=max_batch, max_queue=requests, speculate=speculate)
    futures, submitted, ticks = [], 0, 0
    start = time.perf_counter()
    while submitted < requests or not all(f.done() for f in futures):
        while submitted < requests and len(loop.active) + len(loop.queue) < max_batch:
            futures.append(loop.submit(parse_generate(bodies[submitted % len(bodies)], loop.spec)))
            submitted += 1
        loop.tick()
        ticks += 1
    wall = time.perf_counter() - start
    results = [f.result() for f in futures]
    full = sum(r.stats["full"] for r in results)
    return wall, ticks, full / max(1, full + sum(r.stats["speculative"] for r in results))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=1.5)
    args = parser.parse_args(argv)
    model = speca_compile.load(args.bundle)
    service = Service(args.bundle, ServeConfig(), model=model)
    bodies = [dict(service.example(i).body, guidance_scale=args.guidance) for i in range(args.requests)]
    service.close()
    timer = EngineTimer(model.runner)
    drive(model, bodies, args.max_batch, True, args.max_batch)     # warm every engine once
    per_tick = collections.defaultdict(list)
    for _ in range(args.rounds):
        for speculate in (False, True):
            timer.clear()
            wall, ticks, full = drive(model, bodies, args.max_batch, speculate, args.requests)
            label = "step-spec" if speculate else "step-full"
            per_tick[label].append(1000 * wall / ticks)
            engines = sum(timer.seconds.values())
            print(f"{label}: {1000 * wall / ticks:.2f} ms/tick over {ticks} ticks, full steps {full:.0%}; "
                  f"engines {1000 * engines / ticks:.2f} ms/tick, Python {1000 * (wall - engines) / ticks:.2f} ms/tick")
            for name in sorted(timer.seconds, key=lambda n: -timer.seconds[n]):
                calls = timer.calls[name]
                print(f"    {name:40s} {calls:5d} calls  {1000 * timer.seconds[name] / calls:7.3f} ms/call  "
                      f"{timer.rows[name] / calls:5.1f} rows/call")
    ratios = [f / s for f, s in zip(per_tick["step-full"], per_tick["step-spec"])]
    print("full / speculative ms per tick, per round: " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
