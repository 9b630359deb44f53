"""Randomly initialised diffusers DiTs with matching inputs: tiny ones, and the published DiT sizes.

Used by the tests, ``speca inspect`` and smoke benchmarks to cover every
architecture family the backend must partition (DiT, PixArt, SD3, Flux)
without downloading anything.  Random weights say nothing about quality;
the trained reference models do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict

import torch


@dataclasses.dataclass
class ZooModel:
    """A model, how to build its inputs, and how to call it in a sampler."""

    name: str
    model: torch.nn.Module
    kind: str                       # "ddim" or "flow"
    make_inputs: Callable[[int, int], Dict]   # (batch, seed) -> kwargs without latents/timestep
    latent_shape: Callable[[int], tuple]      # batch -> latent shape
    call: Callable                  # (model, latents, t, extra) -> prediction tensor

    def trajectory(self, model, images: int, steps: int, seed: int = 0, inputs_seed: int = 1) -> torch.Tensor:
        """One generation of ``images`` images through ``model`` (this model or a compiled one):
        noise from ``seed``, conditioning ``make_inputs(images, inputs_seed)``, ``steps`` steps of
        this model's sampler, without gradients.  The run the timing examples repeat."""
        from speca_compile import sampling   # sampling imports the package lazily; keep zoo a leaf

        noise = torch.randn(self.latent_shape(images), generator=torch.Generator().manual_seed(seed))
        extra = self.make_inputs(images, inputs_seed)
        with torch.no_grad():
            return sampling.denoise(lambda x, t: self.call(model, x, t, extra), noise, steps, self.kind)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out.sample


def tiny_dit(seed: int = 0, layers: int = 3) -> ZooModel:
    return class_conditional_dit("dit", seed, layers, heads=2, head_dim=8, sample_size=8, classes=10)


def class_conditional_dit(name: str, seed: int, layers: int, heads: int, head_dim: int, sample_size: int,
                          classes: int) -> ZooModel:
    """A class-conditional diffusers DiT (4 latent channels, patch 2, learned sigma)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                  out_channels=8, num_layers=layers, sample_size=sample_size, patch_size=2,
                                  num_embeds_ada_norm=classes, norm_type="ada_norm_zero").eval()

    def make_inputs(batch, s):
        g = torch.Generator().manual_seed(s)
        return {"class_labels": torch.randint(0, classes, (batch,), generator=g)}

    def call(m, x, t, extra):
        ts = torch.full((x.shape[0],), t, device=x.device)
        return _first(m(x, timestep=ts, return_dict=False, **extra))[:, :4]

    return ZooModel(name, model, "ddim", make_inputs, lambda b: (b, 4, sample_size, sample_size), call)


def tiny_pixart(seed: int = 0, layers: int = 3) -> ZooModel:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                     out_channels=8, num_layers=layers, cross_attention_dim=16,
                                     sample_size=8, patch_size=2, caption_channels=16,
                                     use_additional_conditions=False).eval()

    def make_inputs(batch, s):
        g = torch.Generator().manual_seed(s)
        return {"encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    def call(m, x, t, extra):
        ts = torch.full((x.shape[0],), t, device=x.device)
        return _first(m(x, timestep=ts, return_dict=False, **extra))[:, :4]

    return ZooModel("pixart", model, "ddim", make_inputs, lambda b: (b, 4, 8, 8), call)


def tiny_sd3(seed: int = 0, layers: int = 3) -> ZooModel:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=layers,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  caption_projection_dim=16, pooled_projection_dim=16,
                                  out_channels=4, pos_embed_max_size=16).eval()

    def make_inputs(batch, s):
        g = torch.Generator().manual_seed(s)
        return {"encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
                "pooled_projections": torch.randn(batch, 16, generator=g)}

    def call(m, x, t, extra):
        ts = torch.full((x.shape[0],), t * 1000.0, device=x.device)
        return _first(m(x, timestep=ts, return_dict=False, **extra))

    return ZooModel("sd3", model, "flow", make_inputs, lambda b: (b, 4, 8, 8), call)


def tiny_flux(seed: int = 0, layers: int = 2, single_layers: int = 2) -> ZooModel:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=layers,
                                   num_single_layers=single_layers, attention_head_dim=8,
                                   num_attention_heads=2, joint_attention_dim=16,
                                   pooled_projection_dim=16, axes_dims_rope=(4, 2, 2)).eval()
    tokens, text = 16, 4
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                         indexing="ij"), -1).reshape(tokens, 3)

    def make_inputs(batch, s):
        g = torch.Generator().manual_seed(s)
        return {"encoder_hidden_states": torch.randn(batch, text, 16, generator=g),
                "pooled_projections": torch.randn(batch, 16, generator=g),
                "img_ids": img_ids, "txt_ids": torch.zeros(text, 3)}

    def call(m, x, t, extra):
        ts = torch.full((x.shape[0],), t, device=x.device)
        return _first(m(x, timestep=ts, return_dict=False, **extra))

    return ZooModel("flux", model, "flow", make_inputs, lambda b: (b, tokens, 16), call)


# Published DiT sizes (Peebles & Xie, table 1) at 256x256 images: 32x32x4 latents, patch 2,
# 256 tokens.  Random weights: for speed figures only, never quality.
DIT_SIZES = {"dit_s2": (12, 6, 64), "dit_b2": (12, 12, 64), "dit_xl2": (28, 16, 72)}


def sized_dit(name: str, seed: int = 0) -> ZooModel:
    layers, heads, head_dim = DIT_SIZES[name]
    return class_conditional_dit(name, seed, layers, heads, head_dim, sample_size=32, classes=1000)


BUILDERS = {"dit": tiny_dit, "pixart": tiny_pixart, "sd3": tiny_sd3, "flux": tiny_flux,
            **{name: functools.partial(sized_dit, name) for name in DIT_SIZES}}


def to_device(value, device):
    """``value`` (a tensor, or dicts/lists/tuples of them) with every tensor moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def build(name: str, **kwargs) -> ZooModel:
    if name not in BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; valid: {', '.join(BUILDERS)}")
    return BUILDERS[name](**kwargs)
