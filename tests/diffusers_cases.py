"""Tiny diffusers transformers whose ONNX Runtime lowering once gave wrong results (issue 16).

One function per class, named after it: ``hunyuan_video15()`` etc. (``CASES`` maps the diffusers
class name to the function).  Each returns a ``Case(model, make_inputs)``:

* ``model``: the class built from diffusers' own tiny test config (``get_init_dict`` of
  ``tests/models/transformers/test_models_transformer_*.py``), 2 blocks per stack, in eval mode,
  weights seeded;
* ``make_inputs(t, latent=None)``: the keyword arguments of one forward call at timestep ``t``
  (on the config's own scale: 0..1000, or a sigma for AceStep), batch 2 (``BATCH``), with
  ``return_dict=False``; ``latent`` replaces ``hidden_states`` (what a sampler updates; its shape
  is ``make_inputs(t)["hidden_states"]``'s).  Everything but the timestep and the latent is the
  same on every call (drawn once, seeded).

``trajectory(case, model, steps)`` runs ``steps`` decreasing timesteps in one generation, the
latent moved by an Euler step with the output, and returns the outputs stacked.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional

import torch

BATCH = 2


class Case(NamedTuple):
    model: torch.nn.Module
    make_inputs: Callable[..., Dict]


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _case(model, fixed: Dict, latent: torch.Tensor, timestep: Callable[[float], Dict]) -> Case:
    def make_inputs(t: float, latent_value: Optional[torch.Tensor] = None) -> Dict:
        return {"hidden_states": latent if latent_value is None else latent_value, **timestep(t), **fixed,
                "return_dict": False}

    return Case(model.eval(), make_inputs)


def _float_t(t, name="timestep", batch=BATCH):
    return {name: torch.full((batch,), float(t))}


def hunyuan_video15() -> Case:
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=2, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v")
    fixed = {"encoder_hidden_states": _randn(BATCH, 6, 16, seed=1),
             "encoder_hidden_states_2": _randn(BATCH, 4, 8, seed=2),
             "encoder_attention_mask": torch.ones(BATCH, 6), "encoder_attention_mask_2": torch.ones(BATCH, 4),
             "image_embeds": torch.zeros(BATCH, 3, 12)}
    return _case(model, fixed, _randn(BATCH, 4, 1, 8, 8), _float_t)


def hunyuan_video_framepack() -> Case:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=2, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
        has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True)
    frames, h, w = 3, 4, 4
    fixed = {"encoder_hidden_states": _randn(BATCH, 12, 16, seed=1), "pooled_projections": _randn(BATCH, 8, seed=2),
             "encoder_attention_mask": torch.ones(BATCH, 12), "guidance": torch.full((BATCH,), 600.0),
             "image_embeds": _randn(BATCH, 12, 16, seed=3), "indices_latents": torch.ones(frames),
             "latents_clean": _randn(BATCH, 4, frames - 1, h, w, seed=4), "indices_latents_clean": torch.ones(frames - 1),
             "latents_history_2x": _randn(BATCH, 4, frames - 1, h, w, seed=5),
             "indices_latents_history_2x": torch.ones(frames - 1),
             "latents_history_4x": _randn(BATCH, 4, (frames - 1) * 4, h, w, seed=6),
             "indices_latents_history_4x": torch.ones((frames - 1) * 4)}
    return _case(model, fixed, _randn(BATCH, 4, frames, h, w), _float_t)


def wan_animate2() -> Case:
    """The reference pass (``kv_cache_mode="extract"``) of diffusers' test: latents are lists of
    per-sample tensors, the KV cache a Python object the call fills (a new one per call)."""
    from diffusers import WanAnimate2Transformer3DModel
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    torch.manual_seed(0)
    channels, cond, frames, h, w, text_dim = 16, 20, 2, 4, 4, 32
    model = WanAnimate2Transformer3DModel(
        patch_size=(1, 2, 2), text_len=16, in_dim=channels + cond, dim=128, ffn_dim=256, freq_dim=64,
        text_dim=text_dim, out_dim=channels, num_heads=4, num_layers=2, cross_attn_norm=True, use_img_emb=True)
    text = [_randn(8, text_dim, seed=1 + i) for i in range(BATCH)]
    condition = [_randn(cond, frames, h, w, seed=3 + i) for i in range(BATCH)]
    image = _randn(BATCH, 4, 1280, seed=5)
    latent = [_randn(channels, frames, h, w, seed=7 + i) for i in range(BATCH)]

    def make_inputs(t: float, latent_value=None) -> Dict:
        return {"hidden_states": latent if latent_value is None else latent_value,
                "timestep": torch.full((BATCH,), float(t)), "encoder_hidden_states": text,
                "condition_latents": condition, "encoder_hidden_states_image": image,
                "kv_cache": WanAnimate2KVCache(2), "kv_cache_mode": "extract", "seq_len": frames * (h // 2) * (w // 2),
                "offset_grid_sizes": torch.tensor([[frames, h // 2, w // 2]] * BATCH), "return_dict": False}

    return Case(model.eval(), make_inputs)


def sana_int_timestep() -> Case:
    """Sana with an int64 timestep, as diffusers' test passes it (``torch.randint``)."""
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    model = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32)
    fixed = {"encoder_hidden_states": _randn(BATCH, 8, 8, seed=1)}
    return _case(model, fixed, _randn(BATCH, 4, 32, 32),
                 lambda t: {"timestep": torch.full((BATCH,), int(round(t)), dtype=torch.int64)})


def ace_step() -> Case:
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(0)
    model = AceStepTransformer1DModel(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2, rope_theta=10000.0,
        rms_norm_eps=1e-06, sliding_window=16)
    fixed = {"encoder_hidden_states": _randn(BATCH, 10, 32, seed=1), "context_latents": _randn(BATCH, 8, 16, seed=2)}
    return _case(model, fixed, _randn(BATCH, 8, 8),
                 lambda t: {"timestep": torch.full((BATCH,), t / 1000), "timestep_r": torch.full((BATCH,), t / 2000)})


def auraflow() -> Case:
    from diffusers import AuraFlowTransformer2DModel

    torch.manual_seed(0)
    model = AuraFlowTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=2,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        out_channels=4, pos_embed_max_size=256)
    fixed = {"encoder_hidden_states": _randn(BATCH, 256, 32, seed=1)}
    return _case(model, fixed, _randn(BATCH, 4, 32, 32), _float_t)


def anyflow() -> Case:
    """AnyFlow builds its rotary table as complex numbers (``torch.polar``)."""
    from diffusers import AnyFlowTransformer3DModel

    torch.manual_seed(0)
    model = AnyFlowTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
        gate_value=0.25, deltatime_type="r")
    frames = 2
    fixed = {"encoder_hidden_states": _randn(BATCH, 12, 16, seed=1)}
    return _case(model, fixed, _randn(BATCH, frames, 4, 16, 16),
                 lambda t: {"timestep": torch.full((BATCH, frames), float(t)),
                            "r_timestep": torch.full((BATCH, frames), t / 2)})


CASES: Dict[str, Callable[[], Case]] = {
    "HunyuanVideo15Transformer3DModel": hunyuan_video15,
    "HunyuanVideoFramepackTransformer3DModel": hunyuan_video_framepack,
    "WanAnimate2Transformer3DModel": wan_animate2,
    "SanaTransformer2DModel": sana_int_timestep,
    "AceStepTransformer1DModel": ace_step,
    "AuraFlowTransformer2DModel": auraflow,
    "AnyFlowTransformer3DModel": anyflow,
}


def timesteps(steps: int, top: float = 1000.0) -> List[float]:
    """``steps`` decreasing timesteps below ``top``."""
    return [top * (1.0 - (k + 0.5) / (steps + 1)) for k in range(steps)]


def first_tensor(out) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def trajectory(case: Case, model, steps: int = 4) -> torch.Tensor:
    """``steps`` calls at decreasing timesteps in one generation; the outputs, stacked."""
    import speca_compile

    ts = timesteps(steps)
    latent = case.make_inputs(ts[0])["hidden_states"]
    outs = []
    with torch.no_grad(), speca_compile.generation():
        for k, t in enumerate(ts):
            out = model(**case.make_inputs(t, latent))[0]
            outs.append(torch.stack(list(out)) if isinstance(out, (list, tuple)) else out)
            dt = ((ts[k + 1] if k + 1 < steps else 0.0) - t) / 1000.0
            if isinstance(latent, list):
                latent = [x + dt * v for x, v in zip(latent, out)]
            else:
                latent = latent + dt * (out[tuple(slice(0, n) for n in latent.shape)]
                                        if out.shape != latent.shape else out)
    return torch.stack(outs)
