"""What a served bundle takes and gives: one sample's inputs, its sampler, its image layout.

A request names ONE sample (no batch axis); the step loop stacks the rows of
many requests into one call.  ``ServingSpec`` says, for a loaded bundle,

* which input is the latent (the server draws it from the request's seed),
  which is the timestep (the server sets it per row), and which are the
  request's conditioning ``inputs`` (one sample's shape and dtype each);
* which inputs are shared by every row (Flux's position ids), taken from the
  bundle's example call;
* the sampler (``ddim`` or ``flow``, as ``speca run`` uses), the default
  unconditional inputs for classifier-free guidance, and how a final latent
  becomes an image (``image``), all from the manifest's optional ``serving``
  section that ``export(..., serving=...)`` writes.  A bundle without it is
  served with the ``speca run`` rules: the first input is the latent, DDIM
  when the example timestep is above 1.5, else flow; no default negative
  inputs (a guided request must send ``negative_inputs``); no image.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import torch

SAMPLERS = ("ddim", "flow")


@dataclasses.dataclass(frozen=True)
class ConditionSpec:
    """One conditioning input of a request: one sample's shape (no batch axis) and dtype."""

    key: str
    dtype: torch.dtype
    shape: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ImageLayout:
    """How one sample's final latent becomes an image of ``channels`` x ``height`` x ``width``.

    ``layout="chw"``: the latent is the image.  ``layout="packed"``: the latent is
    (height/patch * width/patch, channels * patch * patch) tokens, the layout
    diffusers' Flux pipelines pack latents in.  Values in ``value_range`` map to 0..255."""

    layout: str
    channels: int
    height: int
    width: int
    patch: int = 1
    value_range: Tuple[float, float] = (-1.0, 1.0)

    def to_image(self, latent: torch.Tensor) -> torch.Tensor:
        """(channels, height, width) float image from one sample's latent."""
        if self.layout == "chw":
            return latent.reshape(self.channels, self.height, self.width)
        p, h, w = self.patch, self.height // self.patch, self.width // self.patch
        return (latent.reshape(h, w, self.channels, p, p).permute(2, 0, 3, 1, 4)
                .reshape(self.channels, self.height, self.width))


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    latent: str
    latent_shape: Tuple[int, ...]             # one sample's
    latent_dtype: torch.dtype
    timestep: str
    timestep_dtype: torch.dtype
    conditions: Tuple[ConditionSpec, ...]     # what a request's "inputs" hold
    fixed: Dict[str, torch.Tensor]            # shared by every row (no batch axis in the call)
    sampler: str                              # "ddim" | "flow"
    negative: Optional[Dict[str, torch.Tensor]]   # one sample's default unconditional inputs
    image: Optional[ImageLayout]

    def condition(self, key: str) -> Optional[ConditionSpec]:
        return next((c for c in self.conditions if c.key == key), None)

    @property
    def condition_keys(self) -> Tuple[str, ...]:
        return tuple(c.key for c in self.conditions)


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def spec_of(model) -> ServingSpec:
    """The serving spec of a loaded bundle (``speca_compile.load``); ``BundleError`` when it
    cannot be served (no timestep input, inputs without a batch axis it cannot tell apart)."""
    from speca_compile.errors import BundleError

    manifest = model.manifest
    if manifest.timestep_index is None:
        raise BundleError(f"{model.path}: the bundle has no timestep input; it cannot be served step by step")
    example = model.by_key(*model.example_inputs())
    example.pop("return_dict", None)
    serving = manifest.serving or {}
    timestep = manifest.placeholders[manifest.timestep_index].key
    latent = serving.get("latent", manifest.inputs[0].key)
    declared = {d.key: d for d in manifest.inputs}
    if latent not in declared or latent == timestep:
        raise BundleError(f"{model.path}: serving latent {latent!r} is not a tensor input of the bundle")
    batch = int(example[latent].shape[0])
    for key in [latent, timestep] + [k for k in declared if k in _batched_keys(manifest)]:
        if declared[key].shape and declared[key].shape[0] is not None:
            raise BundleError(
                f"{model.path}: input {key!r} has a fixed batch of {declared[key].shape[0]} (shape "
                f"{list(declared[key].shape)}), so rows of several requests cannot share a call; re-export with "
                f"dynamic=True and an example batch size unlike the inputs' other axes (Dynamo ties equal sizes)")
    batched = _batched_keys(manifest)
    conditions, fixed = [], {}
    for key, decl in declared.items():
        if key in (latent, timestep):
            continue
        value = example[key]
        if key in batched or (value.dim() >= 1 and value.shape[0] == batch and manifest.batch_inputs is None):
            conditions.append(ConditionSpec(key, _dtype(decl.dtype), tuple(int(s) for s in value.shape[1:])))
        else:
            fixed[key] = value
    sampler = serving.get("sampler")
    if sampler is None:
        sampler = "ddim" if float(example[timestep].flatten()[0]) > 1.5 else "flow"
    negative = None
    if serving.get("negative_inputs") is not None:
        negative = {}
        for c in conditions:
            if c.key not in serving["negative_inputs"]:
                raise BundleError(f"{model.path}: serving.negative_inputs lacks {c.key!r}")
            negative[c.key] = torch.tensor(serving["negative_inputs"][c.key], dtype=c.dtype).reshape(c.shape)
    image = ImageLayout(**{**serving["image"], "value_range": tuple(serving["image"].get("value_range", (-1, 1)))}) \
        if serving.get("image") else _default_image(tuple(example[latent].shape[1:]))
    return ServingSpec(latent, tuple(int(s) for s in example[latent].shape[1:]), _dtype(declared[latent].dtype),
                       timestep, _dtype(declared[timestep].dtype), tuple(conditions), fixed, sampler,
                       negative, image)


def _batched_keys(manifest):
    return {manifest.placeholders[i].key for i in (manifest.batch_inputs or ())
            if manifest.placeholders[i].kind == "input"}


def _default_image(shape: Tuple[int, ...]) -> Optional[ImageLayout]:
    """A (C, H, W) latent with 1 or 3 channels is an image as it is."""
    if len(shape) == 3 and shape[0] in (1, 3):
        return ImageLayout("chw", shape[0], shape[1], shape[2])
    return None
