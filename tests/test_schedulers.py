"""Every sampler (issue 15): diffusers' own schedulers drive the trained reference models.

For each scheduler, on the reference model it fits (8 images, the step count it is
usually run with), speca with the default options computes fewer than half of the
sample-steps fully and stays within 30 dB PSNR of full compute (the same scheduler,
seed and noise, ``speculate=False``), and every sampling run is one trajectory, however
the scheduler repeats or interleaves its timesteps.

One compile per reference model and option set serves all of that model's schedulers
(each sampling run is its own ``speca_compile.generation``), so the whole module
compiles four times; asking for one scheduler (``-k heun``) samples all of its model's.
"""

import json
import math

import pytest
import torch

import speca_compile
from speca_compile import cli, sampling, schedulers
from speca_compile.bench.quality import image_psnr
from speca_compile.reference import store
from speca_compile.reference.digits import to_unit

BATCH = 8
SEED = 0
SPECULATIVE = {"lowering": "eager"}                     # plus the defaults
FULL = {"speculate": False, "lowering": "eager"}
MODEL = {"ddim": "dit_digits", "flow": "flux_digits"}
MIN_PSNR_DB = 30.0
MAX_FULL_FRACTION = 0.5

# Schedulers the default options do not serve (measured; see the reason for the figures).
# Not weakened: the assertion stands and the marker is strict, so a fix shows as XPASS.
KNOWN_FAILURES = {
    "euler_a": "EulerAncestral adds fresh noise at every step, which forecasts of the cached features "
               "cannot follow: the forecast eps is 60-120 % off (rel L2) from the first forecast step on, "
               "while the verify block's error stays 0.01-0.03 and is accepted; 30 steps: 34.6 % full at "
               "13.0 dB (50 steps: 30 % at 21.2 dB). No setting tried reaches both bars: "
               "min_speculative=1, max_speculative=1 gives 53 % at 34.2 dB, min_speculative=0 with "
               "tau0=0.05 73 % at 35.6 dB",
}


def _sample(ref, module, name: str, steps: int) -> torch.Tensor:
    extra = ref.make_inputs(BATCH, SEED + 1)
    noise = torch.randn(ref.latent_shape(BATCH), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        return schedulers.denoise_with(schedulers.make_scheduler(name, ref.kind),
                                       lambda x, t: ref.call(module, x, t, extra), noise, steps,
                                       torch.Generator().manual_seed(SEED + 2))


class _Runs:
    """Full compute and speculation with every scheduler of a model, sampled on first use."""

    def __init__(self):
        self.by_kind = {}

    def __getitem__(self, name: str):
        kind = schedulers.SCHEDULERS[name][1]
        if kind not in self.by_kind:
            self.by_kind[kind] = self._sample_all(kind)
        return self.by_kind[kind][name]

    @staticmethod
    def _sample_all(kind: str):
        ref = store.load(MODEL[kind])
        full = torch.compile(ref.model, backend="speca", options=FULL)
        spec = torch.compile(ref.model, backend="speca", options=SPECULATIVE)
        results = {}
        for name in schedulers.names_for(kind):
            steps = schedulers.usual_steps(name)
            reference = _sample(ref, full, name, steps)
            try:
                out, error = _sample(ref, spec, name, steps), None
            except Exception as exc:      # reported by that scheduler's test, the others still run
                out, error = None, exc
            stats = speca_compile.stats(spec)
            last = stats["last_call"]
            mine = [t for t in stats["trajectories"] if t["generation"] == last["generation"]]
            psnr = (None if out is None
                    else image_psnr(to_unit(ref.decode(out)), to_unit(ref.decode(reference))))
            results[name] = {"model": ref.name, "steps": steps, "error": error, "psnr": psnr, "last_call": last,
                             "trajectories": mine,
                             "calls": schedulers.model_calls(schedulers.make_scheduler(name, kind), steps)}
        return results


@pytest.fixture(scope="module")
def runs():
    return _Runs()


def _describe(name: str, run) -> str:
    last = run["last_call"]
    lines = [f"{name} on {run['model']}, {run['steps']} steps ({run['calls']} model calls): "
             f"{last['full']} of {last['sample_steps']} sample-steps full "
             f"({last['full'] / last['sample_steps']:.1%}), PSNR {run['psnr'] if run['psnr'] is None else round(run['psnr'], 2)} dB, "
             f"{len(run['trajectories'])} trajectories"]
    for traj in run["trajectories"]:
        lines.append(f"  trajectory {traj['trajectory']}: restarted {traj['restarted']}")
        for step, (t, d, e) in enumerate(zip(traj["timesteps"], traj["decisions"], traj["errors"])):
            checked = [x for x in e if x is not None]
            mean = f" mean error {sum(checked) / len(checked):.3f}" if checked else ""
            lines.append(f"  {step:3d} t={t:8.3f} {d}{mean}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[n])) if n in KNOWN_FAILURES else n
    for n in schedulers.NAMES])
def test_default_options_serve_every_scheduler(runs, name):
    run = runs[name]
    if run["error"] is not None:
        raise AssertionError(f"{name}: speculation failed: {run['error']!r}\n{_describe(name, run)}") from run["error"]
    last = run["last_call"]
    print("\n" + _describe(name, run).splitlines()[0])
    # every sampler is one trajectory: repeated (Heun) and interleaved (KDPM2, DPM2S) timesteps included
    assert last["trajectories"] == 1 and last["steps"] == run["calls"], _describe(name, run)
    assert run["trajectories"][0]["restarted"] == [], _describe(name, run)
    assert last["full"] / last["sample_steps"] < MAX_FULL_FRACTION, _describe(name, run)
    assert run["psnr"] >= MIN_PSNR_DB, _describe(name, run)


def test_diffusers_ddim_reproduces_our_ddim_loop():
    ref = store.load("dit_digits")
    extra = ref.make_inputs(2, 1)
    noise = torch.randn(ref.latent_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = sampling.denoise(lambda x, t: ref.call(ref.model, x, t, extra), noise, 10, "ddim")
        theirs = schedulers.denoise_with(schedulers.make_scheduler("ddim", "ddim"),
                                         lambda x, t: ref.call(ref.model, x, t, extra), noise, 10)
    assert float((theirs - ours).norm() / ours.norm()) < 1e-4


def test_flow_schedulers_give_the_model_sigma_and_epsilon_ones_the_training_timestep():
    for name in schedulers.names_for("flow"):
        s = schedulers.make_scheduler(name, "flow")
        s.set_timesteps(10)
        times = torch.tensor([schedulers.model_time(s, t) for t in s.timesteps])
        assert torch.allclose(times, s.sigmas[:len(times)].float(), atol=1e-5), name
        assert times.max() <= 1.0 and times.min() > 0.0
    dpm = schedulers.make_scheduler("dpm2m", "ddim")
    dpm.set_timesteps(30)
    assert schedulers.model_time(dpm, dpm.timesteps[0]) == float(dpm.timesteps[0]) <= 999
    # the epsilon schedulers share the training betas of sampling.alphas_cumprod
    assert torch.allclose(dpm.alphas_cumprod.double(), sampling.alphas_cumprod(), atol=1e-6)


def test_make_scheduler_names_what_is_valid():
    with pytest.raises(ValueError, match="valid: ddim, dpm2m"):
        schedulers.make_scheduler("euler", "ddim")
    with pytest.raises(ValueError, match="valid for 'flow': flow_euler, flow_heun"):
        schedulers.make_scheduler("heun", "flow")
    assert schedulers.model_calls(schedulers.make_scheduler("heun", "ddim"), 25) == 49


def test_bench_writes_one_row_per_scheduler(tmp_path):
    # tau0=1e30 never rejects, so the decisions are known: warmup 3, then forecasts (the cap, 20, is
    # beyond the run)
    code = cli.main(["bench", "--models", "dit_digits", "--schedulers", "ddim,heun", "--scheduler-steps", "6",
                     "--steps", "6", "--images", "2", "--batch", "2", "--repeats", "1", "--tau0", "1e30",
                     "--acceptance", "budget",
                     "--lowerings", "eager", "--no-inductor", "--no-peers", "--out", str(tmp_path)])
    assert code == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert payload["config"]["schedulers"] == ["ddim", "heun"]
    rows = {r["method"]: r for r in payload["rows"]}
    ddim, heun = rows["ddim/6 speca[eager] tau0=1e+30"], rows["heun/6 speca[eager] tau0=1e+30"]
    assert (ddim["scheduler"], ddim["model_calls"], heun["scheduler"], heun["model_calls"]) == ("ddim", 6, "heun", 11)
    assert ddim["full_fraction"] == 3 / 6                 # FFF ASS
    assert heun["full_fraction"] == 3 / 11                # FFF ASSASSAS: one trajectory
    # diffusers' DDIM is our DDIM loop: the same images as the main row of that setting
    main = rows["speca[eager] tau0=1e+30"]
    assert abs(ddim["psnr_db"] - main["psnr_db"]) < 0.1 and ddim["full_fraction"] == main["full_fraction"]
    for row in (ddim, heun):
        assert row["speedup"] > 0 and row["seconds_per_image"] > 0 and 0 < row["psnr_db"] < math.inf
        assert row["family"].startswith(row["scheduler"] + " speca[eager]") and row["cache_bytes"] > 0
    assert "| dit_digits | heun/6 speca[eager] tau0=1e+30 |" in (tmp_path / "bench.md").read_text()


def test_bench_rejects_unknown_and_unfitting_schedulers(tmp_path):
    for bad in (["--schedulers", "euler"], ["--models", "dit_digits", "--schedulers", "flow_heun"],
                ["--scheduler-steps", "0", "--schedulers", "ddim"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["bench", "--models", "dit_digits", *bad, "--out", str(tmp_path)])
        assert exc.value.code not in (0, None), bad
