"""The two reference generator architectures and how a sampler calls them.

* ``dit_digits``: diffusers ``DiTTransformer2DModel`` (12 blocks), DDPM
  epsilon objective, DDIM sampling: the DiT-XL/2 setting of the SpeCa paper.
* ``flux_digits``: diffusers ``FluxTransformer2DModel`` (double and single
  blocks), rectified flow, Euler over shifted sigmas: the FLUX setting.  The
  class label enters the way a prompt does, as learned text tokens and a
  pooled embedding (``LabelEncoder``), so diffusers' caching hooks and
  ``FluxPipeline(prompt_embeds=...)`` apply unchanged.

Both use classifier-free guidance with the conditional and unconditional
halves in one batch, as the diffusers pipelines do.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict

import torch
from torch import nn

from speca_compile.reference.digits import NUM_CLASSES, SIZE
from speca_compile.zoo import ZooModel, _first

NULL_CLASS = NUM_CLASSES          # the label the CFG dropout substitutes
FLUX_TEXT_TOKENS = 4

DIT_CONFIG = dict(num_attention_heads=4, attention_head_dim=16, in_channels=1, out_channels=1,
                  num_layers=12, sample_size=SIZE, patch_size=2, num_embeds_ada_norm=NUM_CLASSES,
                  norm_type="ada_norm_zero")
FLUX_CONFIG = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=8, attention_head_dim=32,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                   axes_dims_rope=(8, 12, 12), guidance_embeds=False)
PACKED = SIZE // 2               # Flux sees 2x2 patches of the 16x16 image as 8x8 tokens of 4 channels


class LabelEncoder(nn.Module):
    """Stands in for Flux's text encoders: class label -> (text tokens, pooled embedding)."""

    def __init__(self, dim: int = 32, pooled_dim: int = 32, tokens: int = FLUX_TEXT_TOKENS):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.token_table = nn.Embedding(NUM_CLASSES + 1, tokens * dim)
        self.pooled_table = nn.Embedding(NUM_CLASSES + 1, pooled_dim)

    def forward(self, labels: torch.Tensor):
        return self.token_table(labels).view(-1, self.tokens, self.dim), self.pooled_table(labels)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, 16, 16) -> (B, 64, 4) tokens, the layout FluxPipeline uses for latents."""
    b = images.shape[0]
    return images.view(b, 1, PACKED, 2, PACKED, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, PACKED * PACKED, 4)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    b = tokens.shape[0]
    return tokens.view(b, PACKED, PACKED, 1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 1, SIZE, SIZE)


def flux_ids() -> Dict[str, torch.Tensor]:
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(PACKED)),
                                         torch.arange(float(PACKED)), indexing="ij"), -1).reshape(-1, 3)
    return {"img_ids": img_ids, "txt_ids": torch.zeros(FLUX_TEXT_TOKENS, 3)}


def build_dit() -> nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**DIT_CONFIG)


def build_flux() -> nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_CONFIG)


def class_labels(batch: int, seed: int) -> torch.Tensor:
    """Labels for a batch: every digit equally often, in a seeded order."""
    order = torch.randperm(NUM_CLASSES, generator=torch.Generator().manual_seed(seed))
    return order.repeat(batch // NUM_CLASSES + 1)[:batch]


@dataclasses.dataclass
class ReferenceModel(ZooModel):
    """A trained generator: ``call`` applies classifier-free guidance, ``decode`` gives images."""

    decode: Callable[[torch.Tensor], torch.Tensor] = None
    guidance: float = 1.0
    label_encoder: nn.Module = None


def _guided(prediction: torch.Tensor, guidance: float) -> torch.Tensor:
    cond, uncond = prediction.chunk(2)
    return uncond + guidance * (cond - uncond)


def dit_reference(model: nn.Module, guidance: float) -> ReferenceModel:
    def make_inputs(batch, seed):
        labels = class_labels(batch, seed)
        return {"labels": labels, "class_labels": torch.cat([labels, torch.full_like(labels, NULL_CLASS)])}

    def call(m, x, t, extra):
        both = torch.cat([x, x])
        timestep = torch.full((both.shape[0],), t, device=x.device)
        out = _first(m(both, timestep=timestep, class_labels=extra["class_labels"], return_dict=False))
        return _guided(out, guidance)

    return ReferenceModel("dit_digits", model.eval(), "ddim", make_inputs, lambda b: (b, 1, SIZE, SIZE), call,
                          decode=lambda x: x, guidance=guidance)


def flux_reference(model: nn.Module, encoder: LabelEncoder, guidance: float) -> ReferenceModel:
    ids = flux_ids()

    def make_inputs(batch, seed):
        labels = class_labels(batch, seed)
        with torch.no_grad():
            tokens, pooled = encoder(torch.cat([labels, torch.full_like(labels, NULL_CLASS)]))
        return {"labels": labels, "encoder_hidden_states": tokens, "pooled_projections": pooled, **ids}

    def call(m, x, t, extra):
        both = torch.cat([x, x])
        kwargs = {k: v for k, v in extra.items() if k != "labels"}
        timestep = torch.full((both.shape[0],), t, device=x.device)
        out = _first(m(both, timestep=timestep, return_dict=False, **kwargs))
        return _guided(out, guidance)

    return ReferenceModel("flux_digits", model.eval(), "flow", make_inputs,
                          lambda b: (b, PACKED * PACKED, 4), call, decode=unpack, guidance=guidance,
                          label_encoder=encoder.eval())
