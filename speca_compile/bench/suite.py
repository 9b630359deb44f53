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
* Precision (``precision``): "fp32", or "bf16": eager, the torch.compile rows
  and the peers run a bfloat16 copy of the model (float inputs cast at each
  call, the sampler in float32), the speca rows pass ``precision="bf16"`` to
  the backend (lowerings that take no bf16 are left out, with the reason, see
  ``methods.plan_rows``).  Quality is then against bf16 eager, the full
  compute of the same precision; each row's relative L2 against float32 eager
  of the same seeds (one extra, untimed generation) is ``rel_l2_fp32``.
* Schedulers (``schedulers``): every speca row's settings again, sampled with
  each of diffusers' schedulers that fits the model (``speca_compile.schedulers``),
  one row per scheduler and setting: full fraction, quality against eager with the
  same scheduler, seeds and noise, and speed against it (interleaved rounds per
  scheduler).  The compiled modules of the speca rows are reused: each sampling
  run is its own generation.  No FLOP count (the meter runs only the main rows).
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
    taus: Sequence = ()                        # numbers or "auto"; empty: each policy's own list
    lowerings: Sequence[str] = ("eager", "auto")
    # speca rows for each: "budget" (the default policy) and "step" (SpeCa's per-step rule with
    # its former settings; bench/methods.py STEP_POLICY)
    acceptances: Sequence[str] = ("budget", "step")
    forecasters: Sequence[str] = (Options.forecaster,)        # rows for each; default: the default
    orders: Sequence[int] = (Options.order,)
    max_speculatives: Sequence[int] = ()       # empty: each policy's own
    verify_strides: Sequence[int] = ()         # rows for each token stride of the check; empty: the default
    inductor: bool = True                      # the torch.compile rows (one per compile mode)
    compile_modes: Sequence[str] = ("default",)    # torch.compile modes, a row each (methods.compile_modes())
    precision: str = "fp32"                    # or "bf16" (methods.BENCH_PRECISIONS)
    peers: bool = True
    seed: int = 0
    device: str = "cpu"
    schedulers: Sequence[str] = ()             # diffusers schedulers, rows for each (schedulers.NAMES)
    scheduler_steps: Optional[int] = None      # None: each scheduler's usual inference steps


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
    scheduler: Optional[str] = None     # the diffusers scheduler of a scheduler row (None: our own loop)
    model_calls: Optional[int] = None   # model calls per image of a scheduler row
    tau0_used: Optional[float] = None   # the threshold scale a speca row ran with (what tau0="auto" chose)
    precision: str = "fp32"             # the bench's precision (quality is against eager at it)
    rel_l2_fp32: Optional[float] = None  # bf16 benches: relative L2 against float32 eager, same seeds


def load_model(name: str):
    if name in REFERENCE:
        from speca_compile.reference import store
        return store.load(name)
    return zoo.build(name)


def model_kind(name: str) -> str:
    """"ddim" (epsilon prediction) or "flow", without loading the weights of a reference model."""
    return {"dit_digits": "ddim", "flux_digits": "flow"}.get(name) or zoo.build(name).kind


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
        self.chunks, self._labels, self.seeds = [], [], []
        for start in range(0, config.images, config.batch):
            size = min(config.batch, config.images - start)
            seed = config.seed + start
            self.seeds.append(seed + 20_000)     # a stochastic scheduler's generator
            noise = torch.randn(ref.latent_shape(size), generator=torch.Generator().manual_seed(seed))
            extra = ref.make_inputs(size, seed + 10_000)
            self._labels.append(extra.get("labels"))
            self.chunks.append((noise.to(config.device), zoo.to_device(extra, config.device)))

    def generate(self, method, steps: int, meter=None) -> torch.Tensor:
        """The whole image set on the CPU; the copy also waits for a GPU to finish (timing)."""
        return torch.cat([method.sample(self.ref, noise, extra, steps, meter).cpu()
                          for noise, extra in self.chunks])

    def generate_with(self, method, scheduler: str, steps: int) -> torch.Tensor:
        """The whole image set sampled with diffusers' ``scheduler`` (one generation per chunk)."""
        return torch.cat([method.sample_with(self.ref, scheduler, noise, extra, steps, seed).cpu()
                          for (noise, extra), seed in zip(self.chunks, self.seeds)])

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
    fp32 = None
    if config.precision != "fp32":     # float32 full compute of the same seeds: bf16's own error
        fp32 = images.generate(methods_mod.Eager("eager fp32", ref.model), config.steps)
        tick("eager fp32 reference")
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
    rows = _rows(ref, config, methods, images, results, compile_s, meters, summaries, medians, fp32)
    return rows + _scheduler_rows(ref, config, methods, images, tick, on_methods)


def _scheduler_rows(ref, config: BenchConfig, methods, images, tick, on_methods=None) -> List[Row]:
    """Per scheduler that fits ``ref``: eager and every speca row's module sample with it; one row
    per speca setting, against eager with the same scheduler (quality and speed)."""
    from speca_compile import schedulers as schedulers_mod

    names = [n for n in config.schedulers if n in schedulers_mod.names_for(ref.kind)]
    eager = methods[0]
    specas = [m for m in methods if isinstance(m, methods_mod.Speca) and m.options.get("speculate", True)]
    if not names or not specas:
        return []
    if on_methods:
        on_methods(len(names) * (1 + len(specas)))
    quality = _Quality(ref, images)
    rows: List[Row] = []
    for name in names:
        steps = config.scheduler_steps or schedulers_mod.usual_steps(name)
        calls = schedulers_mod.model_calls(schedulers_mod.make_scheduler(name, ref.kind), steps)
        label = f"{name}/{steps}"
        runs = {m.name: m for m in [eager] + specas}
        results, first_s, summaries = {}, {}, {}
        for run_name, m in runs.items():
            start = time.perf_counter()
            results[run_name] = images.generate_with(m, name, steps)
            first_s[run_name] = time.perf_counter() - start
            if m is not eager:
                summaries[run_name] = _generation_summary(m, len(images.chunks), f"{label} {run_name}")
            tick(f"warm {label} {run_name}")
            tick(f"summary {label} {run_name}")
        medians = interleaved_medians(
            {run_name: (lambda m=m: images.generate_with(m, name, steps)) for run_name, m in runs.items()},
            config.repeats, on_tick=lambda run_name: tick(f"{label} {run_name}"))
        for m in specas:
            suffix = m.family[len(f"speca[{m.options['lowering']}]"):]
            rows.append(Row(
                model=ref.name, method=f"{label} {m.name}", family=f"{name} speca[{m.options['lowering']}]{suffix}",
                seconds_per_image=medians[m.name] / config.images,
                speedup=medians[eager.name] / medians[m.name],
                full_fraction=summaries[m.name]["full_fraction"], flops_fraction=None, verify_fraction=None,
                **quality(results[m.name], results[eager.name]),
                peak_memory_mb=None, cache_bytes=summaries[m.name]["cache_bytes"],
                compile_seconds=max(0.0, first_s[m.name] - medians[m.name]),
                options=dict(m.options), scheduler=name, model_calls=calls, precision=config.precision,
            ))
    return rows


class _Quality:
    """PSNR, SSIM, relative L2 of a result against its reference images; the judge's accuracy and
    digits-FD where the model is a trained reference model.  One reference is decoded once."""

    def __init__(self, ref, images: _ImageSet):
        self._decoded_ref = (None, None)
        self.decode = getattr(ref, "decode", None)
        self.labels = images.labels()
        self.judge = self.held_out = None
        if self.decode is not None and self.labels is not None:
            from speca_compile.reference import digits, store
            self.judge, self.held_out = store.load_judge(), digits.split("held_out")[0]

    def __call__(self, out: torch.Tensor, reference: torch.Tensor) -> Dict:
        from speca_compile.reference import judge as judge_mod

        if self.decode is None:
            return {"psnr_db": psnr(out, reference), "ssim": None, "rel_l2": relative_l2(out, reference),
                    "accuracy": None, "digits_fd": None}
        if self._decoded_ref[0] is not reference:
            self._decoded_ref = (reference, to_unit(self.decode(reference)))
        decoded = self.decode(out)
        picture, picture_ref = to_unit(decoded), self._decoded_ref[1]
        judged = self.judge is not None
        return {"psnr_db": image_psnr(picture, picture_ref), "ssim": ssim(picture, picture_ref),
                "rel_l2": relative_l2(out, reference),
                "accuracy": judge_mod.accuracy(self.judge, decoded, self.labels) if judged else None,
                "digits_fd": judge_mod.frechet_distance(self.judge, decoded, self.held_out) if judged else None}


def _generation_summary(method, chunks: int, label: str) -> Dict:
    """Full fraction and cache bytes of the latest ``chunks`` generations of a speca method (one
    sampling run each, whatever the sampler did with its timesteps)."""
    import speca_compile

    trajectories = speca_compile.stats(method.module)["trajectories"]
    generations = sorted({t["generation"] for t in trajectories})[-chunks:]
    mine = [t for t in trajectories if t["generation"] in generations]
    if len(generations) < chunks:
        raise RuntimeError(f"bench row {label!r}: the speca runtime saw {len(generations)} of {chunks} "
                           "generations; Dynamo ran the model without the backend (recompile limit?)")
    return {**_fractions(mine), "trajectories": len(mine)}


def _summary(method, chunks: int) -> Dict:
    if not isinstance(method, methods_mod.Speca):
        return {}
    import speca_compile

    trajectories = speca_compile.stats(method.module)["trajectories"][-chunks:]
    if len(trajectories) < chunks:
        raise RuntimeError(f"bench row {method.name!r}: the speca runtime saw {len(trajectories)} of {chunks} "
                           "trajectories; Dynamo ran the model without the backend (recompile limit?)")
    return {**_fractions(trajectories), "decisions": [t["decisions"] for t in trajectories],
            "tau0_used": speca_compile.stats(method.module)["threshold"]["tau0"]}


def _fractions(trajectories) -> Dict:
    """Full sample-steps over all sample-steps, and the largest cache, of some trajectories."""
    full = sum(t["full"] for t in trajectories)
    total = sum(t["steps"] * t["batch_size"] for t in trajectories)
    return {"full_fraction": full / total, "cache_bytes": max(t["cache_bytes"] for t in trajectories)}


def _rows(ref, config, methods, images, results, compile_s, meters, summaries, medians, fp32=None) -> List[Row]:
    quality = _Quality(ref, images)
    reference = results["eager"]
    eager_flops = meters["eager"].flops
    rows = []
    for m in methods:
        counted = _counted(m, meters, summaries)
        rows.append(Row(
            model=ref.name, method=m.name, family=m.family,
            seconds_per_image=medians[m.name] / config.images,
            speedup=medians["eager"] / medians[m.name],
            full_fraction=summaries[m.name].get("full_fraction", 1.0 if m.full_compute else None),
            flops_fraction=None if counted is None else counted.flops / eager_flops,
            verify_fraction=None if counted is None or not counted.flops
            else counted.section_flops.get("verify", 0) / counted.flops,
            **quality(results[m.name], reference),
            peak_memory_mb=meters[m.name].peak_bytes / 2**20 if m.name in meters else None,
            cache_bytes=summaries[m.name].get("cache_bytes"),
            compile_seconds=max(0.0, compile_s[m.name] - medians[m.name]),
            options=dict(m.options) if isinstance(m, methods_mod.Speca) else None,
            tau0_used=summaries[m.name].get("tau0_used"),
            precision=config.precision,
            rel_l2_fp32=None if fp32 is None else relative_l2(results[m.name].float(), fp32),
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
