"""The benchmark: every method samples the same seeds; speed, compute and quality per row.

* Speed: wall seconds to generate the whole image set, interleaved rounds,
  median; speedup is the ratio to eager's median in the same run.
* Compute: FLOPs counted by ``OpMeter`` in one extra metered run of each row
  whose work PyTorch executes op by op; a compiled row (ONNX Runtime and
  Inductor engines, torch.compile) takes the count of its eager twin: the
  eager-lowering row with the same settings when their decisions match, or
  eager itself for full compute.
* Quality against the full-compute (eager) images of the same seeds: PSNR,
  SSIM, relative L2; against the data (trained reference models only): the
  judge's accuracy on the class-conditional samples and digits-FD.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from speca_compile import zoo
from speca_compile.bench.allocator import pin_malloc_thresholds
from speca_compile.bench import methods as methods_mod
from speca_compile.bench.meter import OpMeter
from speca_compile.bench.quality import image_psnr, psnr, relative_l2, ssim
from speca_compile.bench.timing import interleaved_medians
from speca_compile.options import Options
from speca_compile.reference.digits import to_unit

REFERENCE = ("dit_digits", "flux_digits")


@dataclasses.dataclass
class BenchConfig:
    models: Sequence[str] = REFERENCE
    steps: int = 50
    images: int = 50
    batch: int = 25
    repeats: int = 3
    taus: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4)
    lowerings: Sequence[str] = ("eager", "onnxruntime")
    forecasters: Sequence[str] = (Options.forecaster,)        # rows for each; default: the default
    orders: Sequence[int] = (Options.order,)
    max_speculatives: Sequence[int] = (Options.max_speculative,)
    inductor: bool = True
    peers: bool = True
    seed: int = 0
    device: str = "cpu"


@dataclasses.dataclass
class Row:
    model: str
    method: str
    family: str
    seconds_per_image: float
    speedup: float
    full_fraction: Optional[float]
    flops_fraction: Optional[float]
    verify_fraction: Optional[float]
    psnr_db: float
    ssim: Optional[float]
    rel_l2: float
    accuracy: Optional[float]
    digits_fd: Optional[float]
    peak_memory_mb: Optional[float]
    cache_bytes: Optional[int]
    compile_seconds: float
    options: Optional[Dict] = None      # the speca options of the row (None for other methods)


def load_model(name: str):
    if name in REFERENCE:
        from speca_compile.reference import store
        return store.load(name)
    return zoo.build(name)


def run_suite(config: BenchConfig, progress: Optional[Callable[[str], None]] = None,
              on_methods: Optional[Callable[[int], None]] = None,
              on_rows: Optional[Callable[[List[Row]], None]] = None) -> List[Row]:
    """Every model in turn; ``on_rows`` sees the rows so far after each model (partial reports)."""
    pin_malloc_thresholds()   # see bench/allocator.py: steady eager timings
    rows: List[Row] = []
    for name in config.models:
        rows.extend(bench_model(load_model(name), config, progress, on_methods))
        if on_rows:
            on_rows(rows)
    return rows


class _ImageSet:
    """The seeds of one bench: ``images`` samples in chunks of ``batch``, same for every method."""

    def __init__(self, ref, config: BenchConfig):
        self.ref = ref
        self.chunks, self._labels = [], []
        for start in range(0, config.images, config.batch):
            size = min(config.batch, config.images - start)
            seed = config.seed + start
            noise = torch.randn(ref.latent_shape(size), generator=torch.Generator().manual_seed(seed))
            extra = ref.make_inputs(size, seed + 10_000)
            self._labels.append(extra.get("labels"))
            self.chunks.append((noise.to(config.device), zoo.to_device(extra, config.device)))

    def generate(self, method, steps: int, meter=None) -> torch.Tensor:
        """The whole image set on the CPU; the copy also waits for a GPU to finish (timing)."""
        return torch.cat([method.sample(self.ref, noise, extra, steps, meter).cpu()
                          for noise, extra in self.chunks])

    def labels(self) -> Optional[torch.Tensor]:
        return None if self._labels[0] is None else torch.cat(self._labels)


# Every row compiles the same forward (one Dynamo cache entry per backend and options);
# Dynamo's default of 8 entries per code object would run later rows eagerly
RECOMPILE_LIMIT = 64


def bench_model(ref, config: BenchConfig, progress=None, on_methods=None) -> List[Row]:
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _bench_model(ref, config, progress, on_methods)


def _bench_model(ref, config: BenchConfig, progress=None, on_methods=None) -> List[Row]:
    def tick(label):
        if progress:
            progress(f"{ref.name}: {label}")

    torch._dynamo.reset()
    ref.model.to(config.device)
    images = _ImageSet(ref, config)
    methods = methods_mod.build_methods(ref, config, *images.chunks[0])
    if on_methods:
        on_methods(len(methods))
    results, compile_s, meters, summaries = {}, {}, {}, {}
    for m in methods:
        start = time.perf_counter()
        results[m.name] = images.generate(m, config.steps)     # compiles; decisions are deterministic
        compile_s[m.name] = time.perf_counter() - start
        summaries[m.name] = _summary(m, len(images.chunks))
        tick(f"warm {m.name}")
        if m.meterable:
            meters[m.name] = OpMeter()
            images.generate(m, config.steps, meters[m.name])
        tick(f"metered {m.name}")
    medians = interleaved_medians({m.name: (lambda m=m: images.generate(m, config.steps)) for m in methods},
                                  config.repeats, on_tick=lambda name: tick(name))
    return _rows(ref, config, methods, images, results, compile_s, meters, summaries, medians)


def _summary(method, chunks: int) -> Dict:
    if not isinstance(method, methods_mod.Speca):
        return {}
    import speca_compile

    trajectories = speca_compile.stats(method.module)["trajectories"][-chunks:]
    if len(trajectories) < chunks:
        raise RuntimeError(f"bench row {method.name!r}: the speca runtime saw {len(trajectories)} of {chunks} "
                           "trajectories; Dynamo ran the model without the backend (recompile limit?)")
    full = sum(t["full"] for t in trajectories)
    total = sum(t["steps"] * t["batch_size"] for t in trajectories)
    return {"full_fraction": full / total, "cache_bytes": max(t["cache_bytes"] for t in trajectories),
            "decisions": [t["decisions"] for t in trajectories]}


def _rows(ref, config, methods, images, results, compile_s, meters, summaries, medians) -> List[Row]:
    from speca_compile.reference import judge as judge_mod

    decode = getattr(ref, "decode", None)
    labels = images.labels()
    judge = held_out = None
    if decode is not None and labels is not None:
        from speca_compile.reference import digits, store
        judge, held_out = store.load_judge(), digits.split("held_out")[0]
    reference = results["eager"]
    picture_ref = None if decode is None else to_unit(decode(reference))
    eager_flops = meters["eager"].flops
    rows = []
    for m in methods:
        out = results[m.name]
        decoded = None if decode is None else decode(out)
        picture = None if decoded is None else to_unit(decoded)
        counted = _counted(m, meters, summaries)
        rows.append(Row(
            model=ref.name, method=m.name, family=m.family,
            seconds_per_image=medians[m.name] / config.images,
            speedup=medians["eager"] / medians[m.name],
            full_fraction=summaries[m.name].get("full_fraction", 1.0 if m.full_compute else None),
            flops_fraction=None if counted is None else counted.flops / eager_flops,
            verify_fraction=None if counted is None or not counted.flops
            else counted.section_flops.get("verify", 0) / counted.flops,
            psnr_db=image_psnr(picture, picture_ref) if picture is not None else psnr(out, reference),
            ssim=ssim(picture, picture_ref) if picture is not None else None,
            rel_l2=relative_l2(out, reference),
            accuracy=judge_mod.accuracy(judge, decoded, labels) if judge is not None else None,
            digits_fd=judge_mod.frechet_distance(judge, decoded, held_out) if judge is not None else None,
            peak_memory_mb=meters[m.name].peak_bytes / 2**20 if m.name in meters else None,
            cache_bytes=summaries[m.name].get("cache_bytes"),
            compile_seconds=max(0.0, compile_s[m.name] - medians[m.name]),
            options=dict(m.options) if isinstance(m, methods_mod.Speca) else None,
        ))
    return rows


def _counted(method, meters, summaries):
    """The meter that saw this method's work, or None when nothing in PyTorch did."""
    if method.name in meters:
        return meters[method.name]
    if method.full_compute:
        return meters["eager"]   # the same ops as eager
    lowering = method.options["lowering"]
    twin = method.name.replace(f"speca[{lowering}]", "speca[eager]")
    if twin in meters and summaries.get(twin, {}).get("decisions") == summaries[method.name].get("decisions"):
        return meters[twin]
    return None
