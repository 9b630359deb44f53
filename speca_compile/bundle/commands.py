"""``speca export``, ``speca run`` and ``speca inspect BUNDLE``.

``speca run`` samples with the bundle's example conditioning and fresh noise,
with the sampler the manifest's ``serving`` section names; without one, DDIM
when the example timestep is an integer-scale one (> 1.5), else flow (sigma
in [0, 1]); the first input is the latent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speca_compile.bundle.load import format_shape, load, read_manifest, verify_files
from speca_compile.errors import SpecaError


def export_command(args) -> int:
    import speca_compile
    from speca_compile.bench.suite import load_model

    if args.batch < 1:
        raise SystemExit("speca export: --batch must be >= 1")
    ref = load_model(args.model)
    positional, keywords = example_call(ref, args.batch)
    try:
        path = speca_compile.export(ref.model, positional, args.out, options={"tau0": args.tau0,
                                                                            "verify_stride": args.verify_stride},
                                    overwrite=args.overwrite, example_kwargs=keywords, serving=serving_of(ref))
    except SpecaError as exc:
        raise SystemExit(f"speca export: {exc}") from None
    print(inspect_bundle(path))
    return 0


def serving_of(ref):
    """How ``speca serve`` drives a reference model's bundle: its sampler, the unconditional
    inputs of classifier-free guidance (the null class, as the model was trained with), and its
    image layout; None for a model without that knowledge (served by the default rules)."""
    from speca_compile.reference.models import NULL_CLASS, SIZE

    if ref.name == "dit_digits":
        return {"sampler": "ddim", "negative_inputs": {"class_labels": NULL_CLASS},
                "image": {"layout": "chw", "channels": 1, "height": SIZE, "width": SIZE}}
    if ref.name == "flux_digits":
        with torch.no_grad():
            tokens, pooled = ref.label_encoder(torch.tensor([NULL_CLASS]))
        return {"sampler": "flow",
                "negative_inputs": {"encoder_hidden_states": tokens[0], "pooled_projections": pooled[0]},
                "image": {"layout": "packed", "channels": 1, "height": SIZE, "width": SIZE, "patch": 2}}
    return None


def example_call(ref, batch: int):
    """The (args, kwargs) ``ref.call`` gives its model at the first step, captured once."""
    captured = {}

    class Capture(torch.nn.Module):
        def forward(self, *args, **kwargs):
            captured.update(args=args, kwargs=dict(kwargs, return_dict=False))
            raise _Captured

    noise = torch.randn(ref.latent_shape(batch), generator=torch.Generator().manual_seed(0))
    try:
        ref.call(Capture(), noise, 999.0 if ref.kind == "ddim" else 1.0, ref.make_inputs(batch, 1))
    except _Captured:
        pass
    return captured["args"], captured["kwargs"]


class _Captured(Exception):
    pass


def run_command(args) -> int:
    from speca_compile import sampling

    try:
        model = load(args.bundle)
    except SpecaError as exc:
        raise SystemExit(f"speca run: {exc}") from None
    kwargs = model.by_key(*model.example_inputs())
    kwargs.pop("return_dict", None)
    timestep_key = model.manifest.placeholders[model.manifest.timestep_index].key
    latent_key = model.manifest.inputs[0].key
    kind = (model.manifest.serving or {}).get("sampler") or (
        "ddim" if float(kwargs[timestep_key].flatten()[0]) > 1.5 else "flow")
    latent = kwargs[latent_key]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(args.seed), dtype=latent.dtype)

    def model_fn(x, t):
        call = dict(kwargs, **{latent_key: x, timestep_key: torch.full_like(kwargs[timestep_key], t)})
        return model(**call)[0][:, :x.shape[1]] if kind == "ddim" else model(**call)[0]

    out = sampling.denoise(model_fn, noise, args.steps, kind)
    traj = model.stats()["trajectories"][-1]
    print(f"{args.steps} {kind} steps, batch {latent.shape[0]}: {traj['full']} of "
          f"{traj['steps'] * traj['batch_size']} sample-steps full")
    if args.out:
        torch.save(out, args.out)
        print(f"wrote {args.out}")
    return 0


def inspect_bundle(path) -> str:
    """The manifest as a readable summary (and whether the files check out)."""
    m = read_manifest(path)
    try:
        verify_files(path, m)
        files = f"{len(m.files)} files, checksums OK"
    except SpecaError as exc:
        files = f"FILES DO NOT CHECK: {exc}"
    lines = [f"bundle {path}: {len(m.segments)} segments, {len(m.units)} blocks, {files}",
             "  created with " + ", ".join(f"{k} {v}" for k, v in m.created_with.items()),
             "  inputs: " + ", ".join(f"{d.key} {d.dtype}{format_shape(d.shape)}" for d in m.inputs),
             f"  outputs: {len(m.outputs)}; timestep input: "
             + (m.placeholders[m.timestep_index].key if m.timestep_index is not None else "none"),
             "  batched inputs: " + (", ".join(_placeholder(m.placeholders[i]) for i in m.batch_inputs)
                                     if m.batch_inputs else "none"),
             "  speculation: " + ("on" if m.reason is None else f"off ({m.reason})") + "; "
             + ", ".join(f"{k}={v}" for k, v in m.settings.items())]
    for seg in m.segments:
        size = sum((Path(path) / f).stat().st_size for f in (seg.file, seg.data)
                   if f is not None and (Path(path) / f).exists())
        data = f" (+ {seg.data})" if seg.data is not None else ""
        lines.append(f"  segment {seg.name:<34} {seg.file:<40} {size / 1024:8.1f} KB{data}")
    return "\n".join(lines)


def _placeholder(p) -> str:
    return f"{p.key}.size({p.axis})" if p.kind == "dim" else (p.key or p.name)
