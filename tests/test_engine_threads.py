"""Engines called from several threads at once: built once, outputs right, nobody's output lost.

The segments and their inputs are recorded from a compiled reference DiT (eager lowering),
then fresh ONNX Runtime engines of those segments are called from several threads released
together, each engine for the first time.
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch

from speca_compile.options import Options
from speca_compile.registry import runners_for
from speca_compile.runtime import onnx_export, onnxruntime_engine
from speca_compile.runtime.eager_engine import EagerEngine
from speca_compile.runtime.engine import Engine
from speca_compile.runtime.engine_cache import EngineCache
from tests import helpers

pytest.importorskip("onnxruntime")

THREADS = 4


class _Recorder(Engine):
    """Stands in for an engine of the runner and keeps a copy of the inputs it is called with."""

    def __init__(self, inner: Engine, name: str, store: dict):
        self.inner, self.key, self.store = inner, name, store
        self.info = getattr(inner, "info", {})

    def run(self, inputs):
        self.store[self.key] = [v.clone() if isinstance(v, torch.Tensor) else v for v in inputs]
        return self.inner.run(inputs)


@pytest.fixture(scope="module")
def recorded():
    """[(segment, inputs)] of one full step of the reference DiT, in call order."""
    torch._dynamo.reset()
    z = helpers.build("reference_dit")
    compiled = torch.compile(z.model, backend="speca", options={"lowering": "eager", "speculate": False})
    helpers.trajectory(z, compiled, 2, 1)
    (runner,) = runners_for(compiled)
    store: dict = {}
    runner.engines = {name: _Recorder(engine, name, store) for name, engine in runner.engines.items()}
    helpers.trajectory(z, compiled, 2, 1)
    segments = {s.name: s for s in runner.program.all_segments}
    torch._dynamo.reset()
    assert len(store) == 3   # prologue, block stack, epilogue
    return [(segments[name], inputs) for name, inputs in store.items()]


@pytest.fixture
def exports(monkeypatch):
    """The ONNX exports made (one per file written)."""
    made = []
    real = onnxruntime_engine.export_segment

    def counted(segment, *args, **kwargs):
        made.append(segment.name)
        return real(segment, *args, **kwargs)

    monkeypatch.setattr(onnxruntime_engine, "export_segment", counted)
    return made


def engines_for(recorded, cache_dir):
    options = Options.parse({"lowering": "onnxruntime", "cache_dir": str(cache_dir)})
    cache = EngineCache(str(cache_dir))
    return cache, [onnxruntime_engine.OnnxRuntimeEngine(segment, options, cache) for segment, _ in recorded]


def all_at_once(jobs):
    """Run the callables in threads released together; their results, or the first error."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def worker(i):
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return results


def assert_matches_eager(segment, inputs, outputs):
    expected = EagerEngine(segment).run(inputs)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        if isinstance(want, torch.Tensor):
            assert helpers.rel_err(got, want) < 1e-4
        else:
            assert got == want


def test_threads_calling_one_engine_first_build_it_once(recorded, exports, tmp_path):
    segment, inputs = recorded[1]   # the block stack, the largest export
    cache, (_, engine, _) = engines_for(recorded, tmp_path)
    outputs = all_at_once([lambda: engine.run(inputs)] * THREADS)
    assert engine.info["builds"] == 1 and exports == [segment.name]
    assert [e for e, _ in cache.events] == ["miss"]   # the others waited for the build, not the cache
    for out in outputs:
        assert_matches_eager(segment, inputs, out)


def test_threads_calling_every_engine_in_different_orders_build_each_once(recorded, exports, tmp_path):
    """Engines of different segments build at the same time in different threads (their
    exports queue on one lock: torch.onnx.export is not thread-safe)."""
    cache, engines = engines_for(recorded, tmp_path)
    pairs = list(zip(engines, recorded))

    def job(i):
        order = pairs[i % len(pairs):] + pairs[:i % len(pairs)]
        return [(segment, inputs, engine.run(inputs)) for engine, (segment, inputs) in order]

    for results in all_at_once([lambda i=i: job(i) for i in range(2 * len(pairs))]):
        for segment, inputs, out in results:
            assert_matches_eager(segment, inputs, out)
    assert [e.info["builds"] for e in engines] == [1, 1, 1]
    assert sorted(exports) == sorted(s.name for s, _ in recorded)
    assert sorted(e for e, _ in cache.events) == ["miss", "miss", "miss"]


def test_other_threads_output_and_warnings_are_not_swallowed_during_an_export(recorded, tmp_path, capfd):
    """The exporter's quieting touches nothing process-wide that other threads write to:
    stdout is not redirected, and only the exporter's own warnings are filtered."""
    segment, inputs = recorded[2]   # the epilogue: a short export
    _, (_, _, engine) = engines_for(recorded, tmp_path)
    filters_before = list(warnings.filters)
    stop, printed = threading.Event(), []

    def chatter():
        while not stop.is_set():
            if onnx_export._EXPORT_LOCK.locked():   # an export is running
                print(f"from another thread {len(printed)}", flush=True)
                if not printed:
                    warnings.warn("a warning from another thread", UserWarning)
                printed.append(True)
            time.sleep(0.005)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        talker = threading.Thread(target=chatter)
        talker.start()
        try:
            engine.run(inputs)
        finally:
            stop.set()
            talker.join(10)
    assert printed, "the export ended before the other thread printed"
    out = capfd.readouterr().out
    assert "from another thread 0" in out and out.count("from another thread") == len(printed)
    assert [str(w.message) for w in caught if w.category is UserWarning] == ["a warning from another thread"]
    assert list(warnings.filters) == filters_before   # the exporter's filters are gone again
