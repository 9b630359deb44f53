"""Tiny diffusers pipelines from random components, built without any download.

Each builder returns ``(pipe, call)``: ``call(pipe, seeds, **changes)`` runs the
pipeline on one image per seed (a generator per image, so image i of a batch
uses the noise it would use alone) and returns the output as a CPU tensor.
Text pipelines get their prompt embeddings directly: no text encoder is built.
"""

from __future__ import annotations

import numpy as np
import torch

from speca_compile import zoo


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _tensor(output) -> torch.Tensor:
    images = output[0]
    return torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.cpu()


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(7)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, sample_size=8, shift_factor=0.0).eval()


def dit_pipeline():
    """DiTPipeline: CFG in one concatenated batch (null class 1000), DDIM, VAE decode to numpy."""
    from diffusers import DDIMScheduler, DiTPipeline

    # DiTPipeline's null class is 1000, so the model needs ImageNet's label table
    transformer = zoo.class_conditional_dit("dit", 0, 4, heads=2, head_dim=8, sample_size=8, classes=1000).model
    pipe = DiTPipeline(transformer=transformer, vae=_tiny_vae(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def call(p, seeds, steps=20, guidance_scale=4.0, **kw):
        labels = [s % 10 for s in seeds]
        return _tensor(p(class_labels=labels, generator=_generators(seeds), num_inference_steps=steps,
                         guidance_scale=guidance_scale, output_type="np", return_dict=False, **kw))

    return pipe, call


def _text_embeddings(dim: int, tokens: int = 5, pooled: int = 0):
    g = torch.Generator().manual_seed(123)
    out = {"prompt_embeds": torch.randn(1, tokens, dim, generator=g),
           "negative_prompt_embeds": torch.randn(1, tokens, dim, generator=g)}
    if pooled:
        out["pooled_prompt_embeds"] = torch.randn(1, pooled, generator=g)
        out["negative_pooled_prompt_embeds"] = torch.randn(1, pooled, generator=g)
    return out


def pixart_pipeline(sigma: bool = False):
    """PixArt-Alpha / -Sigma: T5-style prompt embeddings with attention masks, CFG in one batch."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline

    transformer = zoo.tiny_pixart(layers=4).model
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(tokenizer=None, text_encoder=None, vae=_tiny_vae(), transformer=transformer,
               scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    text = _text_embeddings(16)
    mask = torch.ones(1, 5, dtype=torch.long)

    def call(p, seeds, steps=20, guidance_scale=4.5, height=8, width=8, num_images_per_prompt=None, **kw):
        per_prompt = num_images_per_prompt or len(seeds)
        return _tensor(p(prompt=None, negative_prompt=None, **text, prompt_attention_mask=mask,
                         negative_prompt_attention_mask=mask,
                         num_images_per_prompt=per_prompt, generator=_generators(seeds),
                         num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                         use_resolution_binning=False, output_type="latent", return_dict=False, **kw))

    return pipe, call


def sd3_pipeline():
    """StableDiffusion3Pipeline: flow matching over shifted sigmas, joint attention, CFG in one batch."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    transformer = zoo.tiny_sd3(layers=4).model
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    text = _text_embeddings(16, pooled=16)

    def call(p, seeds, steps=20, guidance_scale=5.0, height=64, width=64, **kw):
        # SD3 does not repeat given embeddings per image: pass one row per image
        batch = {k: v.expand(len(seeds), *v.shape[1:]) for k, v in text.items()}
        return _tensor(p(prompt=None, **batch, generator=_generators(seeds),
                         num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                         output_type="latent", return_dict=False, **kw))

    return pipe, call


def flux_pipeline():
    """FluxPipeline: packed latents, rotary ids, shifted sigmas; true CFG runs the branches as two calls."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = zoo.tiny_flux(layers=2, single_layers=3).model
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    text = _text_embeddings(16, tokens=4, pooled=16)

    def call(p, seeds, steps=20, guidance_scale=3.5, height=64, width=64, **kw):
        # Flux does not repeat given embeddings per image either
        batch = {k: v.expand(len(seeds), *v.shape[1:]) for k, v in text.items()}
        kw.setdefault("true_cfg_scale", guidance_scale)
        return _tensor(p(prompt=None, **batch, generator=_generators(seeds),
                         num_inference_steps=steps, height=height, width=width, output_type="latent",
                         return_dict=False, **kw))

    return pipe, call


BUILDERS = {"dit": dit_pipeline, "pixart_alpha": pixart_pipeline,
            "pixart_sigma": lambda: pixart_pipeline(sigma=True), "sd3": sd3_pipeline, "flux": flux_pipeline}
