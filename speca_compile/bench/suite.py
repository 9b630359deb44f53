"""The benchmark rows: eager, the compiled full path, and speca at several tau0.

Every row samples the same seeds; quality is measured against the eager
(full-compute) samples, speed as the ratio of interleaved medians to eager.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

import speca_compile
from speca_compile import sampling, zoo
from speca_compile.bench.quality import psnr, relative_l2
from speca_compile.bench.timing import interleaved_medians


@dataclasses.dataclass
class BenchConfig:
    models: Sequence[str] = ("dit", "flux")
    steps: int = 50
    batch: int = 2
    repeats: int = 3
    taus: Sequence[float] = (0.05, 0.1, 0.2)
    lowerings: Sequence[str] = ("eager", "onnxruntime")
    seed: int = 0


@dataclasses.dataclass
class Row:
    model: str
    method: str
    seconds_per_image: float
    speedup: float
    full_fraction: float
    rel_l2: float
    psnr_db: float
    compile_seconds: float
    cache_bytes: int


def run_suite(config: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> List[Row]:
    rows: List[Row] = []
    for name in config.models:
        rows.extend(bench_model(zoo.build(name), config, progress))
    return rows


def _methods(config: BenchConfig) -> Dict[str, Optional[dict]]:
    methods: Dict[str, Optional[dict]] = {"eager": None}
    for lowering in config.lowerings:
        methods[f"speca[{lowering}] full (speculate=False)"] = {"speculate": False, "lowering": lowering}
        for tau in config.taus:
            methods[f"speca[{lowering}] tau0={tau:g}"] = {"tau0": tau, "lowering": lowering}
    return methods


def bench_model(z: zoo.ZooModel, config: BenchConfig, progress=None) -> List[Row]:
    extra = z.make_inputs(config.batch, config.seed + 1)
    noise = torch.randn(z.latent_shape(config.batch), generator=torch.Generator().manual_seed(config.seed))

    def sampler(model) -> Callable[[], torch.Tensor]:
        def sample():
            with torch.no_grad():
                return sampling.denoise(lambda x, t: z.call(model, x, t, extra), noise, config.steps, z.kind)
        return sample

    torch._dynamo.reset()
    samplers, models, compile_s, results = {}, {}, {}, {}
    for method, options in _methods(config).items():
        model = z.model if options is None else torch.compile(z.model, backend="speca", options=options)
        models[method], samplers[method] = model, sampler(model)
        start = time.perf_counter()
        # first run: compiles, excluded from timing; its result is the row's result,
        # since a trajectory's decisions and output are the same on every run
        results[method] = samplers[method]()
        compile_s[method] = time.perf_counter() - start
        if progress:
            progress(f"{z.name}: warm {method}")
    reference = results["eager"]
    medians = interleaved_medians(samplers, config.repeats,
                                  on_tick=(lambda m: progress(f"{z.name}: {m}")) if progress else None)
    rows = []
    for method, model in models.items():
        result = results[method]
        summary = _last_trajectory(model) if model is not z.model else None
        full_fraction = 1.0 if summary is None else summary["full"] / (summary["steps"] * summary["batch_size"])
        rows.append(Row(
            model=z.name, method=method,
            seconds_per_image=medians[method] / config.batch,
            speedup=medians["eager"] / medians[method],
            full_fraction=full_fraction,
            rel_l2=relative_l2(result, reference),
            psnr_db=psnr(result, reference),
            compile_seconds=0.0 if model is z.model else compile_s[method] - medians[method],
            cache_bytes=0 if summary is None else summary["cache_bytes"],
        ))
    return rows


def _last_trajectory(model) -> Optional[Dict]:
    trajectories = speca_compile.stats(model)["trajectories"]
    return trajectories[-1] if trajectories else None
