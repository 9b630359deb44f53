"""How long the first call of a compiled reference model takes with an empty engine cache
(ONNX export + session build) and with the engines already on disk (a second process, or
a second compile in this one).

    python examples/engine_cache_times.py [--batch 50] [--models dit_digits,flux_digits]

Each compile is timed from ``torch.compile`` to the end of the first call (Dynamo's trace
included), on a fresh temporary cache; the per-engine cache events are printed beside it.
"""

import argparse
import tempfile
import time

import torch

import speca_compile
from speca_compile.reference import store


def first_call_seconds(ref, cache_dir: str, batch: int):
    """(seconds, cache events) for compile + first call with ``cache_dir``."""
    torch._dynamo.reset()
    noise = torch.randn(ref.latent_shape(batch), generator=torch.Generator().manual_seed(0))
    extra = ref.make_inputs(batch, 0)
    t = 500.0 if ref.kind == "ddim" else 0.5
    start = time.perf_counter()
    compiled = torch.compile(ref.model, backend="speca", options={"lowering": "onnxruntime", "cache_dir": cache_dir})
    with torch.no_grad():
        ref.call(compiled, noise, t, extra)
    seconds = time.perf_counter() - start
    events = [e["cache"] for e in speca_compile.stats(compiled)["per_graph"][-1]["engines"]]
    return seconds, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--models", default="dit_digits,flux_digits")
    args = parser.parse_args()
    print("| model | empty cache (export) s | engines | cached s | engines |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        ref = store.load(name)
        with tempfile.TemporaryDirectory() as cache_dir:
            cold, cold_events = first_call_seconds(ref, cache_dir, args.batch)
            warm, warm_events = first_call_seconds(ref, cache_dir, args.batch)
        print(f"| {name} | {cold:.1f} | {', '.join(cold_events)} | {warm:.1f} | {', '.join(warm_events)} |")


if __name__ == "__main__":
    main()
