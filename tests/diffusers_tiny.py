"""Tiny configs of every diffusers transformer class, for tests/test_diffusers_sweep.py.

The ``*_Tiny`` classes below are diffusers' own test configs (``get_init_dict`` and
``get_dummy_inputs`` of ``tests/models/transformers/test_models_*.py`` at diffusers commit
58eb52c0803e), copied mechanically (module constants renamed ``_<FILE>_<NAME>``, the test methods
dropped) so the sweep builds each class exactly as diffusers tests it; ``OVERRIDES`` then sets
2 blocks per stack (and shrinks the few configs that are not tiny).  ``build(name)`` returns
``Tiny(model, inputs, latent, timestep)``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Optional

import torch
from diffusers import (
    Transformer2DModel,
    AceStepTransformer1DModel,
    AllegroTransformer3DModel,
    AnyFlowFARTransformer3DModel,
    AnyFlowTransformer3DModel,
    AuraFlowTransformer2DModel,
    BriaFiboTransformer2DModel,
    BriaTransformer2DModel,
    ChromaTransformer2DModel,
    ChronoEditTransformer3DModel,
    CogVideoXTransformer3DModel,
    CogView3PlusTransformer2DModel,
    CogView4Transformer2DModel,
    ConsisIDTransformer3DModel,
    Cosmos3OmniTransformer,
    CosmosTransformer3DModel,
    DiTTransformer2DModel,
    EasyAnimateTransformer3DModel,
    ErnieImageTransformer2DModel,
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    GlmImageTransformer2DModel,
    HeliosTransformer3DModel,
    HiDreamImageTransformer2DModel,
    HunyuanDiT2DModel,
    HunyuanVideo15Transformer3DModel,
    HunyuanVideoFramepackTransformer3DModel,
    HunyuanVideoTransformer3DModel,
    Ideogram4Transformer2DModel,
    JoyImageEditPlusTransformer3DModel,
    JoyImageEditTransformer3DModel,
    Krea2Transformer2DModel,
    LTX2VideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    LatteTransformer3DModel,
    LongCatAudioDiTTransformer,
    LongCatImageTransformer2DModel,
    Lumina2Transformer2DModel,
    LuminaNextDiT2DModel,
    MiniMaxH3Transformer3DModel,
    MiniMaxMusic3Transformer1DModel,
    MochiTransformer3DModel,
    MotifVideoTransformer3DModel,
    NucleusMoEImageTransformer2DModel,
    OmniGenTransformer2DModel,
    OvisImageTransformer2DModel,
    PixArtTransformer2DModel,
    PriorTransformer,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    SanaTransformer2DModel,
    SanaVideoTransformer3DModel,
    SkyReelsV2Transformer3DModel,
    StableAudio3DiTModel,
    WanAnimate2Transformer3DModel,
    WanAnimateTransformer3DModel,
    WanTransformer3DModel,
    WanVACETransformer3DModel,
    ZImageTransformer2DModel,
)
from diffusers.models.transformers import TransformerTemporalModel
from diffusers.models.transformers.transformer_ideogram4 import IMAGE_POSITION_OFFSET
from diffusers.models.transformers.transformer_ideogram4 import LLM_TOKEN_INDICATOR
from diffusers.models.transformers.transformer_ideogram4 import OUTPUT_IMAGE_INDICATOR
from diffusers.models.transformers.transformer_prx import PRXTransformer2DModel
from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache
from diffusers.utils.torch_utils import randn_tensor

torch_device = "cpu"


class _Tiny:
    """What diffusers' ``BaseModelTesterConfig`` gives a config that does not override it."""

    @property
    def generator(self):
        return torch.Generator("cpu").manual_seed(0)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def main_input_name(self) -> str:
        return "hidden_states"


# ---- diffusers tests/models/transformers/test_models_dit_transformer2d.py
class DiTTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return DiTTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (8, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': 4, 'out_channels': 8, 'activation_fn': 'gelu-approximate', 'num_attention_heads': 2, 'attention_head_dim': 4, 'attention_bias': True, 'num_layers': 1, 'norm_type': 'ada_norm_zero', 'num_embeds_ada_norm': 8, 'patch_size': 2, 'sample_size': 8}

    def get_dummy_inputs(self, batch_size: int=4) -> dict[str, torch.Tensor]:
        in_channels = 4
        sample_size = 8
        scheduler_num_train_steps = 1000
        num_class_labels = 4
        return {'hidden_states': randn_tensor((batch_size, in_channels, sample_size, sample_size), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, scheduler_num_train_steps, size=(batch_size,), generator=self.generator).to(torch_device), 'class_labels': torch.randint(0, num_class_labels, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_pixart_transformer2d.py
class PixArtTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return PixArtTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (8, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 8, 'num_layers': 1, 'patch_size': 2, 'attention_head_dim': 2, 'num_attention_heads': 2, 'in_channels': 4, 'cross_attention_dim': 8, 'out_channels': 8, 'attention_bias': True, 'activation_fn': 'gelu-approximate', 'num_embeds_ada_norm': 8, 'norm_type': 'ada_norm_single', 'norm_elementwise_affine': False, 'norm_eps': 1e-06, 'use_additional_conditions': False, 'caption_channels': None}

    def get_dummy_inputs(self, batch_size: int=4) -> dict[str, torch.Tensor]:
        in_channels = 4
        sample_size = 8
        scheduler_num_train_steps = 1000
        cross_attention_dim = 8
        seq_len = 8
        return {'hidden_states': randn_tensor((batch_size, in_channels, sample_size, sample_size), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, scheduler_num_train_steps, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_hidden_states': randn_tensor((batch_size, seq_len, cross_attention_dim), generator=self.generator, device=torch_device), 'added_cond_kwargs': {'aspect_ratio': None, 'resolution': None}}



# ---- diffusers tests/models/transformers/test_models_prior.py
class PriorTransformer_Tiny(_Tiny):

    @property
    def model_class(self):
        return PriorTransformer

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 8)

    @property
    def output_shape(self) -> tuple:
        return (4, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'num_attention_heads': 2, 'attention_head_dim': 4, 'num_layers': 2, 'embedding_dim': 8, 'num_embeddings': 7, 'additional_embeddings': 4}

    def get_dummy_inputs(self, batch_size: int=4) -> dict:
        embedding_dim = 8
        num_embeddings = 7
        return {'hidden_states': randn_tensor((batch_size, embedding_dim), generator=self.generator, device=torch_device), 'timestep': 2, 'proj_embedding': randn_tensor((batch_size, embedding_dim), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, num_embeddings, embedding_dim), generator=self.generator, device=torch_device)}

    def get_dummy_seed_input(self, seed=0):
        torch.manual_seed(seed)
        batch_size = 4
        embedding_dim = 8
        num_embeddings = 7
        hidden_states = torch.randn((batch_size, embedding_dim)).to(torch_device)
        proj_embedding = torch.randn((batch_size, embedding_dim)).to(torch_device)
        encoder_hidden_states = torch.randn((batch_size, num_embeddings, embedding_dim)).to(torch_device)
        return {'hidden_states': hidden_states, 'timestep': 2, 'proj_embedding': proj_embedding, 'encoder_hidden_states': encoder_hidden_states}



# ---- diffusers tests/models/transformers/test_models_transformer_ace_step.py
class AceStepTransformer1DModel_Tiny(_Tiny):

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def model_class(self):
        return AceStepTransformer1DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | float | bool]:
        return {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 8, 'in_channels': 24, 'audio_acoustic_hidden_dim': 8, 'patch_size': 2, 'rope_theta': 10000.0, 'rms_norm_eps': 1e-06, 'sliding_window': 16}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 2
        seq_len = 8
        encoder_seq_len = 10
        acoustic_dim = 8
        hidden_size = 32
        return {'hidden_states': randn_tensor((batch_size, seq_len, acoustic_dim), generator=self.generator, device=torch_device), 'timestep': randn_tensor((batch_size,), generator=self.generator, device=torch_device).abs(), 'timestep_r': randn_tensor((batch_size,), generator=self.generator, device=torch_device).abs(), 'encoder_hidden_states': randn_tensor((batch_size, encoder_seq_len, hidden_size), generator=self.generator, device=torch_device), 'context_latents': randn_tensor((batch_size, seq_len, acoustic_dim * 2), generator=self.generator, device=torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_allegro.py
class AllegroTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return AllegroTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 2, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (4, 2, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'cross_attention_dim': 16, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'caption_channels': 8}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 2
        height = width = 8
        embedding_dim = 16
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim // 2), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_anyflow.py
class AnyFlowTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return AnyFlowTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (1, 2, 4, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 2, 4, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int] | tuple | str | bool]:
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'rope_max_seq_len': 32, 'gate_value': 0.25, 'deltatime_type': 'r'}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        num_frames = 2
        num_channels = 4
        height = 16
        width = 16
        text_seq_len = 12
        text_dim = 16
        return {'hidden_states': randn_tensor((batch_size, num_frames, num_channels, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'timestep': torch.full((batch_size, num_frames), 500.0, device=torch_device, dtype=self.torch_dtype), 'r_timestep': torch.full((batch_size, num_frames), 250.0, device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': randn_tensor((batch_size, text_seq_len, text_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype)}



# ---- diffusers tests/models/transformers/test_models_transformer_anyflow_far.py
class AnyFlowFARTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return AnyFlowFARTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4, 4, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 4, 4, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int] | tuple | str | bool]:
        return {'patch_size': (1, 2, 2), 'compressed_patch_size': (1, 4, 4), 'full_chunk_limit': 3, 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'rope_max_seq_len': 32, 'gate_value': 0.25, 'deltatime_type': 'r'}

    def get_dummy_inputs(self) -> dict[str, 'torch.Tensor']:
        batch_size = 1
        chunk_partition = [2, 2]
        num_frames = sum(chunk_partition)
        num_channels = 4
        height = 16
        width = 16
        text_seq_len = 12
        text_dim = 16
        return {'hidden_states': randn_tensor((batch_size, num_frames, num_channels, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'timestep': torch.full((batch_size, num_frames), 500.0, device=torch_device, dtype=self.torch_dtype), 'r_timestep': torch.full((batch_size, num_frames), 250.0, device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': randn_tensor((batch_size, text_seq_len, text_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'chunk_partition': chunk_partition}



# ---- diffusers tests/models/transformers/test_models_transformer_aura_flow.py
class AuraFlowTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return AuraFlowTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def output_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 32, 'patch_size': 2, 'in_channels': 4, 'num_mmdit_layers': 1, 'num_single_dit_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_projection_dim': 32, 'joint_attention_dim': 32, 'out_channels': 4, 'pos_embed_max_size': 256}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = embedding_dim = 32
        sequence_length = 256
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_bria.py
class BriaTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return BriaTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 4)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': None, 'axes_dims_rope': [0, 4, 4]}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_latent_channels = 4
        num_image_channels = 3
        height = width = 4
        sequence_length = 48
        embedding_dim = 32
        return {'hidden_states': randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'img_ids': randn_tensor((height * width, num_image_channels), generator=self.generator, device=torch_device), 'txt_ids': randn_tensor((sequence_length, num_image_channels), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size)}



# ---- diffusers tests/models/transformers/test_models_transformer_bria_fibo.py
class BriaFiboTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return BriaFiboTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (256, 48)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 1, 'in_channels': 48, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'joint_attention_dim': 64, 'text_encoder_dim': 32, 'pooled_projection_dim': None, 'axes_dims_rope': [0, 4, 4]}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_latent_channels = 48
        num_image_channels = 3
        height = width = 16
        sequence_length = 32
        embedding_dim = 64
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device)
        return {'hidden_states': randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=torch_device), 'encoder_hidden_states': encoder_hidden_states, 'img_ids': randn_tensor((height * width, num_image_channels), generator=self.generator, device=torch_device), 'txt_ids': randn_tensor((sequence_length, num_image_channels), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size), 'text_encoder_layers': [encoder_hidden_states[:, :, :32], encoder_hidden_states[:, :, :32]]}



# ---- diffusers tests/models/transformers/test_models_transformer_chroma.py
class ChromaTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return ChromaTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 4)

    @property
    def input_shape(self) -> tuple:
        return (16, 4)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'axes_dims_rope': [4, 4, 8], 'approximator_num_channels': 8, 'approximator_hidden_dim': 16, 'approximator_layers': 1}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_latent_channels = 4
        num_image_channels = 3
        height = width = 4
        sequence_length = 48
        embedding_dim = 32
        return {'hidden_states': randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'img_ids': randn_tensor((height * width, num_image_channels), generator=self.generator, device=torch_device), 'txt_ids': randn_tensor((sequence_length, num_image_channels), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size)}



# ---- diffusers tests/models/transformers/test_models_transformer_chronoedit.py
class ChronoEditTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return ChronoEditTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 2, 8, 8)

    @property
    def input_shape(self) -> tuple:
        return (16, 2, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 16, 'out_channels': 16, 'text_dim': 32, 'freq_dim': 16, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'eps': 1e-06, 'image_dim': None, 'added_kv_proj_dim': None, 'rope_max_seq_len': 64, 'pos_embed_seq_len': None, 'rope_temporal_skip_len': 8}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 16
        num_frames = 2
        height = 8
        width = 8
        embedding_dim = 32
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'encoder_hidden_states_image': None}



# ---- diffusers tests/models/transformers/test_models_transformer_cogvideox.py
class CogVideoXTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return CogVideoXTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (1, 4, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (1, 4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'time_embed_dim': 2, 'text_embed_dim': 8, 'num_layers': 2, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'patch_size': 2, 'patch_size_t': None, 'temporal_compression_ratio': 4, 'max_text_seq_length': 8}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 1
        height = width = 8
        embedding_dim = 8
        sequence_length = 8
        return {'hidden_states': randn_tensor((batch_size, num_frames, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_cogview3plus.py
class CogView3PlusTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return CogView3PlusTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (1, 4, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (1, 4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 2, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 4, 'num_attention_heads': 2, 'out_channels': 4, 'text_embed_dim': 8, 'time_embed_dim': 8, 'condition_dim': 2, 'pos_embed_max_size': 8, 'sample_size': 8}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 8
        embedding_dim = 8
        sequence_length = 8
        original_size = torch.tensor([height * 8, width * 8]).unsqueeze(0).repeat(batch_size, 1).to(torch_device)
        target_size = torch.tensor([height * 8, width * 8]).unsqueeze(0).repeat(batch_size, 1).to(torch_device)
        crop_coords = torch.tensor([0, 0]).unsqueeze(0).repeat(batch_size, 1).to(torch_device)
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'original_size': original_size, 'target_size': target_size, 'crop_coords': crop_coords, 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_cogview4.py
class CogView4Transformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return CogView4Transformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 2, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 4, 'num_attention_heads': 4, 'out_channels': 4, 'text_embed_dim': 8, 'time_embed_dim': 8, 'condition_dim': 4}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 8
        embedding_dim = 8
        sequence_length = 8
        original_size = torch.tensor([height * 8, width * 8]).unsqueeze(0).repeat(batch_size, 1).to(torch_device)
        target_size = torch.tensor([height * 8, width * 8]).unsqueeze(0).repeat(batch_size, 1).to(torch_device)
        crop_coords = torch.tensor([0, 0]).unsqueeze(0).repeat(batch_size, 1).to(torch_device)
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'original_size': original_size, 'target_size': target_size, 'crop_coords': crop_coords}



# ---- diffusers tests/models/transformers/test_models_transformer_consisid.py
class ConsisIDTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return ConsisIDTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (1, 4, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (1, 4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'time_embed_dim': 2, 'text_embed_dim': 8, 'num_layers': 1, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'patch_size': 2, 'temporal_compression_ratio': 4, 'max_text_seq_length': 8, 'cross_attn_interval': 1, 'is_kps': False, 'is_train_face': True, 'cross_attn_dim_head': 1, 'cross_attn_num_heads': 1, 'LFE_id_dim': 2, 'LFE_vit_dim': 2, 'LFE_depth': 5, 'LFE_dim_head': 8, 'LFE_num_heads': 2, 'LFE_num_id_token': 1, 'LFE_num_querie': 1, 'LFE_output_dim': 10, 'LFE_ff_mult': 1, 'LFE_num_scale': 1}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 1
        height = width = 8
        embedding_dim = 8
        sequence_length = 8
        return {'hidden_states': randn_tensor((batch_size, num_frames, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'id_vit_hidden': [torch.ones([batch_size, 2, 2]).to(torch_device)] * 1, 'id_cond': torch.ones(batch_size, 2).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_cosmos.py
class CosmosTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return CosmosTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4, 1, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (4, 1, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list | tuple | float | bool | str]:
        return {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 2, 'mlp_ratio': 2, 'text_embed_dim': 16, 'adaln_lora_dim': 4, 'max_size': (4, 32, 32), 'patch_size': (1, 2, 2), 'rope_scale': (2.0, 1.0, 1.0), 'concat_padding_mask': True, 'extra_pos_embed_type': 'learnable'}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 1
        height = 16
        width = 16
        text_embed_dim = 16
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_embed_dim), generator=self.generator, device=torch_device), 'attention_mask': torch.ones((batch_size, sequence_length)).to(torch_device), 'fps': 30, 'padding_mask': torch.zeros(batch_size, 1, height, width).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_cosmos3.py
class Cosmos3OmniTransformer_Tiny(_Tiny):

    @property
    def model_class(self):
        return Cosmos3OmniTransformer

    @property
    def main_input_name(self) -> str:
        return 'vision_tokens'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'head_dim': 6, 'hidden_act': 'relu2', 'hidden_size': 12, 'intermediate_size': 24, 'latent_channel': 2, 'latent_patch_size': 1, 'num_attention_heads': 2, 'num_hidden_layers': 2, 'num_key_value_heads': 1, 'patch_latent_dim': 2, 'qk_norm_for_text': False, 'rms_norm_eps': 1e-05, 'rope_axes_dim': [1, 1, 1], 'rope_theta': 100000000.0, 'vocab_size': 32}

    def get_dummy_inputs(self, height: int=1, width: int=1) -> dict:
        num_vision_tokens = height * width
        sequence_length = 2 + num_vision_tokens
        vision_indexes = torch.arange(2, sequence_length, device=torch_device)
        return {'input_ids': torch.tensor([1, 2], device=torch_device), 'text_indexes': torch.tensor([0, 1], device=torch_device), 'position_ids': torch.zeros((3, sequence_length), dtype=torch.long, device=torch_device), 'und_len': 2, 'sequence_length': sequence_length, 'vision_tokens': [randn_tensor((1, 2, 1, height, width), generator=self.generator, device=torch_device)], 'vision_token_shapes': [(1, height, width)], 'vision_sequence_indexes': vision_indexes, 'vision_mse_loss_indexes': vision_indexes, 'vision_timesteps': torch.ones(num_vision_tokens, device=torch_device), 'vision_noisy_frame_indexes': [torch.tensor([0], device=torch_device)]}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 2, 1, 1, 1)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (1, 2, 1, 1, 1)



# ---- diffusers tests/models/transformers/test_models_transformer_easyanimate.py
class EasyAnimateTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return EasyAnimateTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 2, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (4, 2, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'attention_head_dim': 16, 'num_attention_heads': 2, 'in_channels': 4, 'mmdit_layers': 2, 'num_layers': 2, 'out_channels': 4, 'patch_size': 2, 'sample_height': 60, 'sample_width': 90, 'text_embed_dim': 16, 'time_embed_dim': 8, 'time_position_encoding_type': '3d_rope', 'timestep_activation_fn': 'silu'}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 2
        height = 16
        width = 16
        embedding_dim = 16
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'timestep_cond': None, 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'encoder_hidden_states_t5': None, 'inpaint_latents': None, 'control_latents': None}



# ---- diffusers tests/models/transformers/test_models_transformer_ernie_image.py
class ErnieImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return ErnieImageTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (16, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'hidden_size': 16, 'num_attention_heads': 1, 'num_layers': 1, 'ffn_hidden_size': 16, 'in_channels': 16, 'out_channels': 16, 'patch_size': 1, 'text_in_dim': 16, 'rope_theta': 256, 'rope_axes_dim': (8, 4, 4), 'eps': 1e-06, 'qk_layernorm': True}

    def get_dummy_inputs(self, height: int=16, width: int=16, batch_size: int=1) -> dict:
        num_channels = 16
        sequence_length = 16
        text_in_dim = 16
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0] * batch_size, device=torch_device), 'text_bth': randn_tensor((batch_size, sequence_length, text_in_dim), generator=self.generator, device=torch_device), 'text_lens': torch.tensor([sequence_length] * batch_size, device=torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_flux.py
class FluxTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return FluxTransformer2DModel

    @property
    def output_shape(self) -> tuple[int, int]:
        return (16, 4)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (16, 4)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int]]:
        """Return Flux model initialization arguments."""
        return {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': 32, 'axes_dims_rope': [4, 4, 8]}

    def get_dummy_inputs(self, batch_size: int=1, device=torch_device) -> dict[str, torch.Tensor]:
        height = width = 4
        num_latent_channels = 4
        num_image_channels = 3
        sequence_length = 48
        embedding_dim = 32
        return {'hidden_states': randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=device, dtype=self.torch_dtype), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=device, dtype=self.torch_dtype), 'pooled_projections': randn_tensor((batch_size, embedding_dim), generator=self.generator, device=device, dtype=self.torch_dtype), 'img_ids': randn_tensor((height * width, num_image_channels), generator=self.generator, device=device, dtype=self.torch_dtype), 'txt_ids': randn_tensor((sequence_length, num_image_channels), generator=self.generator, device=device, dtype=self.torch_dtype), 'timestep': torch.tensor([1.0]).to(device, self.torch_dtype).expand(batch_size)}



# ---- diffusers tests/models/transformers/test_models_transformer_flux2.py
class Flux2Transformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return Flux2Transformer2DModel

    @property
    def output_shape(self) -> tuple[int, int]:
        return (16, 4)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (16, 4)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int]]:
        return {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'timestep_guidance_channels': 256, 'axes_dims_rope': [4, 4, 4, 4]}

    def get_dummy_inputs(self, height: int=4, width: int=4, batch_size: int=1, device: str=torch_device) -> dict[str, torch.Tensor]:
        num_latent_channels = 4
        sequence_length = 48
        embedding_dim = 32
        hidden_states = randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=device)
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=device)
        t_coords = torch.arange(1)
        h_coords = torch.arange(height)
        w_coords = torch.arange(width)
        l_coords = torch.arange(1)
        image_ids = torch.cartesian_prod(t_coords, h_coords, w_coords, l_coords)
        image_ids = image_ids.unsqueeze(0).expand(batch_size, -1, -1).to(device)
        text_t_coords = torch.arange(1)
        text_h_coords = torch.arange(1)
        text_w_coords = torch.arange(1)
        text_l_coords = torch.arange(sequence_length)
        text_ids = torch.cartesian_prod(text_t_coords, text_h_coords, text_w_coords, text_l_coords)
        text_ids = text_ids.unsqueeze(0).expand(batch_size, -1, -1).to(device)
        timestep = torch.tensor([1.0]).to(device).expand(batch_size)
        guidance = torch.tensor([1.0]).to(device).expand(batch_size)
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'img_ids': image_ids, 'txt_ids': text_ids, 'timestep': timestep, 'guidance': guidance}



# ---- diffusers tests/models/transformers/test_models_transformer_glm_image.py
class GlmImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return GlmImageTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def input_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 2, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'text_embed_dim': 32, 'time_embed_dim': 16, 'condition_dim': 8, 'prior_vq_quantizer_codebook_size': 64}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 8
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, 32), generator=self.generator, device=torch_device), 'prior_token_id': torch.randint(0, 64, size=(batch_size,), generator=self.generator).to(torch_device), 'prior_token_drop': torch.zeros(batch_size, dtype=torch.bool, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'target_size': torch.tensor([[height, width]] * batch_size, dtype=torch.float32).to(torch_device), 'crop_coords': torch.tensor([[0, 0]] * batch_size, dtype=torch.float32).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_helios.py
class HeliosTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return HeliosTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4, 2, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (4, 2, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int] | tuple | str | bool]:
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_dim': (4, 4, 4), 'has_multi_term_memory_patch': True, 'guidance_cross_attn': True, 'zero_history_timestep': True, 'is_amplify_history': False}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        num_channels = 4
        num_frames = 2
        height = 16
        width = 16
        text_encoder_embedding_dim = 16
        sequence_length = 12
        hidden_states = randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device)
        timestep = torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device)
        indices_hidden_states = torch.ones((batch_size, num_frames)).to(torch_device)
        indices_latents_history_short = torch.ones((batch_size, num_frames - 1)).to(torch_device)
        indices_latents_history_mid = torch.ones((batch_size, num_frames - 1)).to(torch_device)
        indices_latents_history_long = torch.ones((batch_size, (num_frames - 1) * 4)).to(torch_device)
        latents_history_short = randn_tensor((batch_size, num_channels, num_frames - 1, height, width), generator=self.generator, device=torch_device)
        latents_history_mid = randn_tensor((batch_size, num_channels, num_frames - 1, height, width), generator=self.generator, device=torch_device)
        latents_history_long = randn_tensor((batch_size, num_channels, (num_frames - 1) * 4, height, width), generator=self.generator, device=torch_device)
        return {'hidden_states': hidden_states, 'timestep': timestep, 'encoder_hidden_states': encoder_hidden_states, 'indices_hidden_states': indices_hidden_states, 'indices_latents_history_short': indices_latents_history_short, 'indices_latents_history_mid': indices_latents_history_mid, 'indices_latents_history_long': indices_latents_history_long, 'latents_history_short': latents_history_short, 'latents_history_mid': latents_history_mid, 'latents_history_long': latents_history_long}



# ---- diffusers tests/models/transformers/test_models_transformer_hidream.py
class HiDreamImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return HiDreamImageTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def input_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 2, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_channels': [8, 4], 'text_emb_dim': 8, 'num_routed_experts': 2, 'num_activated_experts': 2, 'axes_dims_rope': (4, 2, 2), 'max_resolution': (32, 32), 'llama_layers': (0, 1), 'force_inference_output': True}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 32
        embedding_dim_t5, embedding_dim_llama, embedding_dim_pooled = (8, 4, 8)
        sequence_length = 8
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states_t5': randn_tensor((batch_size, sequence_length, embedding_dim_t5), generator=self.generator, device=torch_device), 'encoder_hidden_states_llama3': randn_tensor((batch_size, batch_size, sequence_length, embedding_dim_llama), generator=self.generator, device=torch_device), 'pooled_embeds': randn_tensor((batch_size, embedding_dim_pooled), generator=self.generator, device=torch_device), 'timesteps': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_hunyuan_1_5.py
class HunyuanVideo15Transformer3DModel_Tiny(_Tiny):
    text_embed_dim = 16
    text_embed_2_dim = 8
    image_embed_dim = 12

    @property
    def model_class(self):
        return HunyuanVideo15Transformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 1, 8, 8)

    @property
    def input_shape(self) -> tuple:
        return (4, 1, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 2, 'num_refiner_layers': 1, 'mlp_ratio': 2.0, 'patch_size': 1, 'patch_size_t': 1, 'text_embed_dim': self.text_embed_dim, 'text_embed_2_dim': self.text_embed_2_dim, 'image_embed_dim': self.image_embed_dim, 'rope_axes_dim': (2, 2, 4), 'target_size': 16, 'task_type': 't2v'}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 1
        height = 8
        width = 8
        sequence_length = 6
        sequence_length_2 = 4
        image_sequence_length = 3
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, self.text_embed_dim), generator=self.generator, device=torch_device), 'encoder_hidden_states_2': randn_tensor((batch_size, sequence_length_2, self.text_embed_2_dim), generator=self.generator, device=torch_device), 'encoder_attention_mask': torch.ones((batch_size, sequence_length), device=torch_device), 'encoder_attention_mask_2': torch.ones((batch_size, sequence_length_2), device=torch_device), 'image_embeds': torch.zeros((batch_size, image_sequence_length, self.image_embed_dim), device=torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_hunyuan_dit.py
class HunyuanDiT2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return HunyuanDiT2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (8, 8, 8)

    @property
    def input_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 8, 'patch_size': 2, 'in_channels': 4, 'num_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'cross_attention_dim': 8, 'cross_attention_dim_t5': 8, 'pooled_projection_dim': 4, 'hidden_size': 16, 'text_len': 4, 'text_len_t5': 4, 'activation_fn': 'gelu-approximate'}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 8
        embedding_dim = 8
        sequence_length = 4
        sequence_length_t5 = 4
        hidden_states = randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device)
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device)
        text_embedding_mask = torch.ones(size=(batch_size, sequence_length)).to(torch_device)
        encoder_hidden_states_t5 = randn_tensor((batch_size, sequence_length_t5, embedding_dim), generator=self.generator, device=torch_device)
        text_embedding_mask_t5 = torch.ones(size=(batch_size, sequence_length_t5)).to(torch_device)
        timestep = torch.randint(0, 1000, size=(batch_size,), generator=self.generator).float().to(torch_device)
        original_size = [1024, 1024]
        target_size = [16, 16]
        crops_coords_top_left = [0, 0]
        add_time_ids = list(original_size + target_size + crops_coords_top_left)
        add_time_ids = torch.tensor([add_time_ids] * batch_size, dtype=torch.float32).to(torch_device)
        style = torch.zeros(size=(batch_size,), dtype=int).to(torch_device)
        image_rotary_emb = [torch.ones(size=(1, 8), dtype=torch.float32), torch.zeros(size=(1, 8), dtype=torch.float32)]
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'text_embedding_mask': text_embedding_mask, 'encoder_hidden_states_t5': encoder_hidden_states_t5, 'text_embedding_mask_t5': text_embedding_mask_t5, 'timestep': timestep, 'image_meta_size': add_time_ids, 'style': style, 'image_rotary_emb': image_rotary_emb}



# ---- diffusers tests/models/transformers/test_models_transformer_hunyuan_video.py
class HunyuanVideoTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return HunyuanVideoTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 1, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (4, 1, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 10, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': 1, 'patch_size_t': 1, 'guidance_embeds': True, 'text_embed_dim': 16, 'pooled_projection_dim': 8, 'rope_axes_dim': (2, 4, 4), 'image_condition_type': None}

    @property
    def torch_dtype(self):
        return None

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 1
        height = 16
        width = 16
        text_encoder_embedding_dim = 16
        pooled_projection_dim = 8
        sequence_length = 12
        dtype = self.torch_dtype
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device, dtype=dtype), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device, dtype=dtype or torch.float32), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device, dtype=dtype), 'pooled_projections': randn_tensor((batch_size, pooled_projection_dim), generator=self.generator, device=torch_device, dtype=dtype), 'encoder_attention_mask': torch.ones((batch_size, sequence_length)).to(torch_device), 'guidance': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device, dtype=dtype or torch.float32)}



# ---- diffusers tests/models/transformers/test_models_transformer_hunyuan_video_framepack.py
class HunyuanVideoFramepackTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return HunyuanVideoFramepackTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 3, 4, 4)

    @property
    def input_shape(self) -> tuple:
        return (4, 3, 4, 4)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 10, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': 2, 'patch_size_t': 1, 'guidance_embeds': True, 'text_embed_dim': 16, 'pooled_projection_dim': 8, 'rope_axes_dim': (2, 4, 4), 'image_condition_type': None, 'has_image_proj': True, 'image_proj_dim': 16, 'has_clean_x_embedder': True}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 3
        height = 4
        width = 4
        text_encoder_embedding_dim = 16
        image_encoder_embedding_dim = 16
        pooled_projection_dim = 8
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device), 'pooled_projections': randn_tensor((batch_size, pooled_projection_dim), generator=self.generator, device=torch_device), 'encoder_attention_mask': torch.ones((batch_size, sequence_length)).to(torch_device), 'guidance': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'image_embeds': randn_tensor((batch_size, sequence_length, image_encoder_embedding_dim), generator=self.generator, device=torch_device), 'indices_latents': torch.ones((num_frames,)).to(torch_device), 'latents_clean': randn_tensor((batch_size, num_channels, num_frames - 1, height, width), generator=self.generator, device=torch_device), 'indices_latents_clean': torch.ones((num_frames - 1,)).to(torch_device), 'latents_history_2x': randn_tensor((batch_size, num_channels, num_frames - 1, height, width), generator=self.generator, device=torch_device), 'indices_latents_history_2x': torch.ones((num_frames - 1,)).to(torch_device), 'latents_history_4x': randn_tensor((batch_size, num_channels, (num_frames - 1) * 4, height, width), generator=self.generator, device=torch_device), 'indices_latents_history_4x': torch.ones(((num_frames - 1) * 4,)).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_ideogram4.py
class Ideogram4Transformer2DModel_Tiny(_Tiny):
    _hidden_size = 32
    _num_heads = 4
    _head_dim = _hidden_size // _num_heads
    _in_channels = 16
    _llm_features_dim = 24
    _max_text_tokens = 4
    _num_image_tokens = 4

    @property
    def model_class(self):
        return Ideogram4Transformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (1, self._max_text_tokens + self._num_image_tokens, self._in_channels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self._max_text_tokens + self._num_image_tokens, self._in_channels)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': self._in_channels, 'num_layers': 2, 'attention_head_dim': self._head_dim, 'num_attention_heads': self._num_heads, 'intermediate_size': 32, 'adaln_dim': 16, 'llm_features_dim': self._llm_features_dim, 'rope_theta': 10000, 'mrope_section': (2, 1, 1), 'norm_eps': 1e-05}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        max_text_tokens = self._max_text_tokens
        num_image_tokens = self._num_image_tokens
        seq_len = max_text_tokens + num_image_tokens
        hidden_states = torch.zeros(batch_size, seq_len, self._in_channels, device=torch_device, dtype=self.torch_dtype)
        hidden_states[:, max_text_tokens:] = randn_tensor((batch_size, num_image_tokens, self._in_channels), generator=self.generator, device=torch_device, dtype=self.torch_dtype)
        encoder_hidden_states = torch.zeros(batch_size, seq_len, self._llm_features_dim, device=torch_device, dtype=self.torch_dtype)
        encoder_hidden_states[:, :max_text_tokens] = randn_tensor((batch_size, max_text_tokens, self._llm_features_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype)
        position_ids = torch.zeros(batch_size, seq_len, 3, dtype=torch.long, device=torch_device)
        text_pos = torch.arange(max_text_tokens, device=torch_device)
        position_ids[:, :max_text_tokens, 0] = text_pos
        position_ids[:, :max_text_tokens, 1] = text_pos
        position_ids[:, :max_text_tokens, 2] = text_pos
        image_h = torch.tensor([0, 0, 1, 1], device=torch_device)
        image_w = torch.tensor([0, 1, 0, 1], device=torch_device)
        position_ids[:, max_text_tokens:, 0] = IMAGE_POSITION_OFFSET
        position_ids[:, max_text_tokens:, 1] = image_h + IMAGE_POSITION_OFFSET
        position_ids[:, max_text_tokens:, 2] = image_w + IMAGE_POSITION_OFFSET
        segment_ids = torch.ones(batch_size, seq_len, dtype=torch.long, device=torch_device)
        indicator = torch.empty(batch_size, seq_len, dtype=torch.long, device=torch_device)
        indicator[:, :max_text_tokens] = LLM_TOKEN_INDICATOR
        indicator[:, max_text_tokens:] = OUTPUT_IMAGE_INDICATOR
        timestep = torch.tensor([0.5], device=torch_device, dtype=self.torch_dtype)
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'timestep': timestep, 'position_ids': position_ids, 'segment_ids': segment_ids, 'indicator': indicator}



# ---- diffusers tests/models/transformers/test_models_transformer_joyimage.py
class JoyImageEditTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return JoyImageEditTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (16, 1, 4, 4)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (16, 1, 4, 4)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int]]:
        return {'patch_size': [1, 2, 2], 'in_channels': 16, 'hidden_size': 32, 'num_attention_heads': 2, 'text_dim': 16, 'num_layers': 2, 'rope_dim_list': [4, 6, 6], 'theta': 256}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        hidden_states = randn_tensor((batch_size, 16, 1, 4, 4), generator=self.generator, device=torch_device)
        encoder_hidden_states = randn_tensor((batch_size, 12, 16), generator=self.generator, device=torch_device)
        timestep = torch.tensor([1.0]).to(torch_device).expand(batch_size)
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'timestep': timestep}



# ---- diffusers tests/models/transformers/test_models_transformer_joyimage_edit_plus.py
class JoyImageEditPlusTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return JoyImageEditPlusTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (2, 16, 1, 2, 2)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (2, 16, 1, 2, 2)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int]]:
        return {'patch_size': [1, 2, 2], 'in_channels': 16, 'hidden_size': 32, 'num_attention_heads': 2, 'text_dim': 16, 'num_layers': 2, 'rope_dim_list': [4, 6, 6], 'theta': 256}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        max_patches = 2
        hidden_states = randn_tensor((batch_size, max_patches, 16, 1, 2, 2), generator=self.generator, device=torch_device)
        encoder_hidden_states = randn_tensor((batch_size, 12, 16), generator=self.generator, device=torch_device)
        timestep = torch.tensor([1.0]).to(torch_device).expand(batch_size)
        shape_list = [[(1, 1, 1), (1, 1, 1)]]
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'timestep': timestep, 'shape_list': shape_list}



# ---- diffusers tests/models/transformers/test_models_transformer_krea2.py
class Krea2Transformer2DModel_Tiny(_Tiny):
    _head_dim = 8
    _num_heads = 4
    _num_kv_heads = 2
    _in_channels = 16
    _text_hidden_dim = 16
    _num_text_layers = 3
    _text_seq_len = 4
    _grid_size = 2

    @property
    def model_class(self):
        return Krea2Transformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self._grid_size * self._grid_size, self._in_channels)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (1, self._grid_size * self._grid_size, self._in_channels)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': self._in_channels, 'num_layers': 2, 'attention_head_dim': self._head_dim, 'num_attention_heads': self._num_heads, 'num_key_value_heads': self._num_kv_heads, 'intermediate_size': 32, 'timestep_embed_dim': 8, 'text_hidden_dim': self._text_hidden_dim, 'num_text_layers': self._num_text_layers, 'text_num_attention_heads': 2, 'text_num_key_value_heads': 1, 'text_intermediate_size': 16, 'num_layerwise_text_blocks': 1, 'num_refiner_text_blocks': 1, 'axes_dims_rope': (4, 2, 2), 'rope_theta': 1000.0, 'norm_eps': 1e-05}

    def get_dummy_inputs(self, height: int | None=None, width: int | None=None) -> dict[str, torch.Tensor]:
        height = height if height is not None else self._grid_size
        width = width if width is not None else self._grid_size
        batch_size = 1
        text_seq_len = self._text_seq_len
        num_image_tokens = height * width
        hidden_states = randn_tensor((batch_size, num_image_tokens, self._in_channels), generator=self.generator, device=torch_device, dtype=self.torch_dtype)
        encoder_hidden_states = randn_tensor((batch_size, text_seq_len, self._num_text_layers, self._text_hidden_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype)
        timestep = torch.tensor([0.5], device=torch_device, dtype=self.torch_dtype)
        position_ids = torch.zeros(text_seq_len + num_image_tokens, 3, device=torch_device)
        grid_h = torch.arange(height, device=torch_device).repeat_interleave(width)
        grid_w = torch.arange(width, device=torch_device).repeat(height)
        position_ids[text_seq_len:, 1] = grid_h
        position_ids[text_seq_len:, 2] = grid_w
        encoder_attention_mask = torch.ones(batch_size, text_seq_len, dtype=torch.bool, device=torch_device)
        encoder_attention_mask[:, -1] = False
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'timestep': timestep, 'position_ids': position_ids, 'encoder_attention_mask': encoder_attention_mask}



# ---- diffusers tests/models/transformers/test_models_transformer_latte.py
class LatteTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return LatteTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 1, 8, 8)

    @property
    def output_shape(self) -> tuple:
        return (8, 1, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 8, 'num_layers': 1, 'patch_size': 2, 'attention_head_dim': 4, 'num_attention_heads': 2, 'caption_channels': 8, 'in_channels': 4, 'cross_attention_dim': 8, 'out_channels': 8, 'attention_bias': True, 'activation_fn': 'gelu-approximate', 'num_embeds_ada_norm': 1000, 'norm_type': 'ada_norm_single', 'norm_elementwise_affine': False, 'norm_eps': 1e-06}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 1
        height = width = 8
        embedding_dim = 8
        sequence_length = 8
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'enable_temporal_attentions': True}



# ---- diffusers tests/models/transformers/test_models_transformer_longcat_audio_dit.py
class LongCatAudioDiTTransformer_Tiny(_Tiny):

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def model_class(self):
        return LongCatAudioDiTTransformer

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (16, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | bool | float | str]:
        return {'dit_dim': 64, 'dit_depth': 2, 'dit_heads': 4, 'dit_text_dim': 32, 'latent_dim': 8, 'text_conv': False}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        sequence_length = 16
        encoder_sequence_length = 10
        latent_dim = 8
        text_dim = 32
        return {'hidden_states': randn_tensor((batch_size, sequence_length, latent_dim), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, encoder_sequence_length, text_dim), generator=self.generator, device=torch_device), 'encoder_attention_mask': torch.ones(batch_size, encoder_sequence_length, dtype=torch.bool, device=torch_device), 'attention_mask': torch.ones(batch_size, sequence_length, dtype=torch.bool, device=torch_device), 'timestep': torch.ones(batch_size, device=torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_longcat_image.py
class LongCatImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return LongCatImageTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 4)

    @property
    def input_shape(self) -> tuple:
        return (16, 4)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': 32, 'axes_dims_rope': [4, 4, 8]}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_latent_channels = 4
        num_image_channels = 3
        height = width = 4
        sequence_length = 48
        embedding_dim = 32
        return {'hidden_states': randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'img_ids': randn_tensor((height * width, num_image_channels), generator=self.generator, device=torch_device), 'txt_ids': randn_tensor((sequence_length, num_image_channels), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size), 'guidance': torch.tensor([3.5]).to(torch_device).expand(batch_size)}



# ---- diffusers tests/models/transformers/test_models_transformer_ltx.py
class LTXVideoTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return LTXVideoTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, int]:
        return (512, 4)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (512, 4)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self):
        return {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'cross_attention_dim': 16, 'num_layers': 1, 'qk_norm': 'rms_norm_across_heads', 'caption_channels': 16}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 2
        num_channels = 4
        num_frames = 2
        height = 16
        width = 16
        embedding_dim = 16
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_frames * height * width, num_channels), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_attention_mask': torch.ones((batch_size, sequence_length)).bool().to(torch_device), 'num_frames': num_frames, 'height': height, 'width': width}



# ---- diffusers tests/models/transformers/test_models_transformer_ltx2.py
class LTX2VideoTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return LTX2VideoTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, int]:
        return (512, 4)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (512, 4)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self):
        return {'in_channels': 4, 'out_channels': 4, 'patch_size': 1, 'patch_size_t': 1, 'num_attention_heads': 2, 'attention_head_dim': 8, 'cross_attention_dim': 16, 'audio_in_channels': 4, 'audio_out_channels': 4, 'audio_num_attention_heads': 2, 'audio_attention_head_dim': 4, 'audio_cross_attention_dim': 8, 'num_layers': 2, 'qk_norm': 'rms_norm_across_heads', 'caption_channels': 16, 'rope_double_precision': False}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 2
        num_frames = 2
        num_channels = 4
        height = 16
        width = 16
        audio_num_frames = 9
        audio_num_channels = 2
        num_mel_bins = 2
        embedding_dim = 16
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_frames * height * width, num_channels), generator=self.generator, device=torch_device), 'audio_hidden_states': randn_tensor((batch_size, audio_num_frames, audio_num_channels * num_mel_bins), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'audio_encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': randn_tensor((batch_size,), generator=self.generator, device=torch_device).abs() * 1000, 'encoder_attention_mask': torch.ones((batch_size, sequence_length)).bool().to(torch_device), 'num_frames': num_frames, 'height': height, 'width': width, 'audio_num_frames': audio_num_frames, 'fps': 25.0}



# ---- diffusers tests/models/transformers/test_models_transformer_lumina.py
class LuminaNextDiT2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return LuminaNextDiT2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (4, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 16, 'patch_size': 2, 'in_channels': 4, 'hidden_size': 24, 'num_layers': 2, 'num_attention_heads': 3, 'num_kv_heads': 1, 'multiple_of': 16, 'ffn_dim_multiplier': None, 'norm_eps': 1e-05, 'learn_sigma': False, 'qk_norm': True, 'cross_attention_dim': 32, 'scaling_factor': 1.0}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 16
        embedding_dim = 32
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.rand(size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_mask': randn_tensor((batch_size, sequence_length), generator=self.generator, device=torch_device), 'image_rotary_emb': randn_tensor((384, 384, 4), generator=self.generator, device=torch_device), 'cross_attention_kwargs': {}}



# ---- diffusers tests/models/transformers/test_models_transformer_lumina2.py
class Lumina2Transformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return Lumina2Transformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (4, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 16, 'patch_size': 2, 'in_channels': 4, 'hidden_size': 24, 'num_layers': 2, 'num_refiner_layers': 1, 'num_attention_heads': 3, 'num_kv_heads': 1, 'multiple_of': 2, 'ffn_dim_multiplier': None, 'norm_eps': 1e-05, 'scaling_factor': 1.0, 'axes_dim_rope': (4, 2, 2), 'axes_lens': (128, 128, 128), 'cap_feat_dim': 32}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 16
        embedding_dim = 32
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.rand(size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_attention_mask': torch.ones((batch_size, sequence_length), dtype=torch.bool, device=torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_minimax_h3.py
_MINIMAX_H3_NUM_TEXT_TOKENS = 4
_MINIMAX_H3_NUM_AUDIO_TOKENS = 6
_MINIMAX_H3_NUM_VIDEO_TOKENS = 8
class MiniMaxH3Transformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return MiniMaxH3Transformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple[int, int]:
        return (_MINIMAX_H3_NUM_VIDEO_TOKENS, 16)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (_MINIMAX_H3_NUM_VIDEO_TOKENS, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'num_attention_heads': 2, 'attention_head_dim': 16, 'hidden_size': 24, 'num_layers': 2, 'num_refiner_layers': 2, 'ffn_dim': 32, 'in_channels': 4, 'audio_in_channels': 6, 'patch_size': (1, 2, 2), 'text_dim': 8, 'freq_dim': 8, 'time_embed_hidden_dim': 24, 'time_embed_dim': 16, 'rope_freq_dim': 2}

    def get_packed_layout(self, num_video_tokens: int=_MINIMAX_H3_NUM_VIDEO_TOKENS) -> dict:
        """
        Build the structural arguments of one packed sequence.

        The transformer does not build the layout itself: the caller orders the rows, tags every row with its
        modality and its noise level, and hands over the `(t, h, w)` grid plus the three index tensors. The layout
        here mirrors what the pipelines pack, with two distinct timesteps so the `(timestep, modality)` AdaLN table
        is addressed on more than one row.
        """
        sequence_length = _MINIMAX_H3_NUM_TEXT_TOKENS + _MINIMAX_H3_NUM_AUDIO_TOKENS + num_video_tokens
        text_indices = torch.arange(_MINIMAX_H3_NUM_TEXT_TOKENS, device=torch_device)
        audio_indices = torch.arange(_MINIMAX_H3_NUM_TEXT_TOKENS, _MINIMAX_H3_NUM_TEXT_TOKENS + _MINIMAX_H3_NUM_AUDIO_TOKENS, device=torch_device)
        video_indices = torch.arange(_MINIMAX_H3_NUM_TEXT_TOKENS + _MINIMAX_H3_NUM_AUDIO_TOKENS, sequence_length, device=torch_device)
        token_tags = torch.empty(sequence_length, dtype=torch.long, device=torch_device)
        token_tags[text_indices] = 1
        token_tags[audio_indices] = 2
        token_tags[video_indices] = 0
        timestep_indices = torch.zeros(sequence_length, dtype=torch.long, device=torch_device)
        timestep_indices[audio_indices] = 1
        position_ids = torch.zeros(sequence_length, 3, dtype=torch.float32, device=torch_device)
        position_ids[:, 0] = torch.arange(sequence_length, dtype=torch.float32, device=torch_device)
        position_ids[video_indices, 1] = torch.arange(num_video_tokens, dtype=torch.float32, device=torch_device) % 4
        position_ids[video_indices, 2] = torch.arange(num_video_tokens, dtype=torch.float32, device=torch_device) % 2
        return {'timestep': torch.tensor([0.7, 0.3], device=torch_device), 'timestep_indices': timestep_indices, 'token_tags': token_tags, 'position_ids': position_ids, 'video_indices': video_indices, 'audio_indices': audio_indices, 'text_indices': text_indices}

    def get_dummy_inputs(self, num_video_tokens: int=_MINIMAX_H3_NUM_VIDEO_TOKENS, batch_size: int=2) -> dict:
        generator = self.generator
        init_dict = self.get_init_dict()
        patch_size = init_dict['patch_size']
        video_patch_dim = init_dict['in_channels'] * patch_size[0] * patch_size[1] * patch_size[2]
        return {'hidden_states': randn_tensor((batch_size, num_video_tokens, video_patch_dim), generator=generator, device=torch_device), 'audio_hidden_states': randn_tensor((batch_size, _MINIMAX_H3_NUM_AUDIO_TOKENS, init_dict['audio_in_channels']), generator=generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, _MINIMAX_H3_NUM_TEXT_TOKENS, init_dict['text_dim']), generator=generator, device=torch_device), **self.get_packed_layout(num_video_tokens)}



# ---- diffusers tests/models/transformers/test_models_transformer_minimax_music3.py
class MiniMaxMusic3Transformer1DModel_Tiny(_Tiny):

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def model_class(self):
        return MiniMaxMusic3Transformer1DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (8, 24)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int]:
        return {'in_channels': 8, 'condition_dim': 16, 'num_layers': 2, 'num_attention_heads': 2, 'attention_head_dim': 8, 'ff_inner_dim': 32, 'rotary_dim': 4, 'fourier_embedding_dim': 8}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        latent_length = 24
        in_channels = 8
        condition_dim = 16
        return {'hidden_states': randn_tensor((batch_size, in_channels, latent_length), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, latent_length, condition_dim), generator=self.generator, device=torch_device), 'timestep': torch.full((batch_size,), 0.5, device=torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_mochi.py
class MochiTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return MochiTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 2, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (4, 2, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 2, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 2, 'pooled_projection_dim': 16, 'in_channels': 4, 'out_channels': None, 'qk_norm': 'rms_norm', 'text_embed_dim': 16, 'time_embed_dim': 4, 'activation_fn': 'swiglu', 'max_sequence_length': 16}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 2
        height = 16
        width = 16
        embedding_dim = 16
        sequence_length = 16
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_attention_mask': torch.ones((batch_size, sequence_length), dtype=torch.bool).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_motif_video.py
class MotifVideoTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return MotifVideoTransformer3DModel

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 33, 9, 16, 16)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (1, 16, 9, 16, 16)

    def get_init_dict(self) -> dict[str, int | list[int] | float | str | bool]:
        return {'in_channels': 33, 'out_channels': 16, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 1, 'num_single_layers': 1, 'num_decoder_layers': 0, 'mlp_ratio': 4.0, 'patch_size': 1, 'patch_size_t': 1, 'qk_norm': 'rms_norm', 'norm_type': 'layer_norm', 'text_embed_dim': 32, 'image_embed_dim': 4, 'rope_theta': 256.0, 'rope_axes_dim': (4, 4, 4), 'enable_text_cross_attention_dual': False, 'enable_text_cross_attention_single': False}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        num_channels = 33
        num_frames = 9
        height = 16
        width = 16
        text_embed_dim = 32
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_embed_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_nucleusmoe_image.py
class NucleusMoEImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return NucleusMoEImageTransformer2DModel

    @property
    def output_shape(self) -> tuple[int, int]:
        return (16, 16)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 2, 'in_channels': 16, 'out_channels': 4, 'num_layers': 2, 'attention_head_dim': 16, 'num_attention_heads': 4, 'joint_attention_dim': 16, 'axes_dims_rope': (8, 4, 4), 'moe_enabled': False, 'capacity_factors': [8.0, 8.0]}

    def get_dummy_inputs(self) -> dict:
        batch_size = 1
        in_channels = 16
        joint_attention_dim = 16
        height = width = 4
        sequence_length = 8
        hidden_states = randn_tensor((batch_size, height * width, in_channels), generator=self.generator, device=torch_device)
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, joint_attention_dim), generator=self.generator, device=torch_device)
        encoder_hidden_states_mask = torch.ones((batch_size, sequence_length), dtype=torch.long).to(torch_device)
        timestep = torch.tensor([1.0]).to(torch_device).expand(batch_size)
        img_shapes = [(1, height, width)] * batch_size
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'encoder_hidden_states_mask': encoder_hidden_states_mask, 'timestep': timestep, 'img_shapes': img_shapes}



# ---- diffusers tests/models/transformers/test_models_transformer_omnigen.py
class OmniGenTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return OmniGenTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def input_shape(self) -> tuple:
        return (4, 8, 8)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'hidden_size': 16, 'num_attention_heads': 4, 'num_key_value_heads': 4, 'intermediate_size': 32, 'num_layers': 20, 'pad_token_id': 0, 'vocab_size': 1000, 'in_channels': 4, 'time_step_dim': 4, 'rope_scaling': {'long_factor': list(range(1, 3)), 'short_factor': list(range(1, 3))}}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = 8
        width = 8
        sequence_length = 24
        hidden_states = randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device)
        attn_seq_length = sequence_length + 1 + height * width // 2 // 2
        return {'hidden_states': hidden_states, 'timestep': torch.rand(size=(batch_size,), generator=self.generator).to(torch_device), 'input_ids': torch.randint(0, 10, (batch_size, sequence_length), generator=self.generator).to(torch_device), 'input_img_latents': [randn_tensor((1, num_channels, height, width), generator=self.generator, device=torch_device)], 'input_image_sizes': {0: [[0, 0 + height * width // 2 // 2]]}, 'attention_mask': torch.ones((batch_size, attn_seq_length, attn_seq_length)).to(torch_device), 'position_ids': torch.LongTensor([list(range(attn_seq_length))] * batch_size).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_ovis_image.py
class OvisImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return OvisImageTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 4)

    @property
    def input_shape(self) -> tuple:
        return (16, 4)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 1, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'axes_dims_rope': (4, 4, 8)}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_latent_channels = 4
        num_image_channels = 3
        height = width = 4
        sequence_length = 48
        embedding_dim = 32
        return {'hidden_states': randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'img_ids': randn_tensor((height * width, num_image_channels), generator=self.generator, device=torch_device), 'txt_ids': randn_tensor((sequence_length, num_image_channels), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size)}



# ---- diffusers tests/models/transformers/test_models_transformer_prx.py
class PRXTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return PRXTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (16, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (16, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': 16, 'patch_size': 2, 'context_in_dim': 1792, 'hidden_size': 1792, 'mlp_ratio': 3.5, 'num_heads': 28, 'depth': 4, 'axes_dim': [32, 32], 'theta': 10000}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_latent_channels = 16
        height = width = 16
        sequence_length = 16
        embedding_dim = 1792
        return {'hidden_states': randn_tensor((batch_size, num_latent_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.tensor([1.0]).to(torch_device).expand(batch_size)}



# ---- diffusers tests/models/transformers/test_models_transformer_qwenimage.py
class QwenImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return QwenImageTransformer2DModel

    @property
    def output_shape(self) -> tuple[int, int]:
        return (16, 16)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int]]:
        return {'patch_size': 2, 'in_channels': 16, 'out_channels': 4, 'num_layers': 2, 'attention_head_dim': 16, 'num_attention_heads': 4, 'joint_attention_dim': 16, 'guidance_embeds': False, 'axes_dims_rope': (8, 4, 4)}

    def get_dummy_inputs(self, batch_size: int=1, device=torch_device) -> dict[str, torch.Tensor]:
        num_latent_channels = embedding_dim = 16
        height = width = 4
        sequence_length = 8
        vae_scale_factor = 4
        hidden_states = randn_tensor((batch_size, height * width, num_latent_channels), generator=self.generator, device=device)
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=device)
        encoder_hidden_states_mask = torch.ones((batch_size, sequence_length)).to(device, torch.long)
        timestep = torch.tensor([1.0]).to(device).expand(batch_size)
        orig_height = height * 2 * vae_scale_factor
        orig_width = width * 2 * vae_scale_factor
        img_shapes = [(1, orig_height // vae_scale_factor // 2, orig_width // vae_scale_factor // 2)] * batch_size
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'encoder_hidden_states_mask': encoder_hidden_states_mask, 'timestep': timestep, 'img_shapes': img_shapes}



# ---- diffusers tests/models/transformers/test_models_transformer_sana.py
class SanaTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return SanaTransformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def input_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': 1, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'attention_head_dim': 4, 'num_attention_heads': 2, 'num_cross_attention_heads': 2, 'cross_attention_head_dim': 4, 'cross_attention_dim': 8, 'caption_channels': 8, 'sample_size': 32}

    def get_dummy_inputs(self) -> dict:
        batch_size = 2
        num_channels = 4
        height = 32
        width = 32
        embedding_dim = 8
        sequence_length = 8
        hidden_states = randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device)
        encoder_hidden_states = randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device)
        timestep = torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)
        return {'hidden_states': hidden_states, 'encoder_hidden_states': encoder_hidden_states, 'timestep': timestep}



# ---- diffusers tests/models/transformers/test_models_transformer_sana_video.py
class SanaVideoTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return SanaVideoTransformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (16, 2, 16, 16)

    @property
    def output_shape(self) -> tuple:
        return (16, 2, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'in_channels': 16, 'out_channels': 16, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 2, 'num_cross_attention_heads': 2, 'cross_attention_head_dim': 12, 'cross_attention_dim': 24, 'caption_channels': 16, 'mlp_ratio': 2.5, 'dropout': 0.0, 'attention_bias': False, 'sample_size': 8, 'patch_size': (1, 2, 2), 'norm_elementwise_affine': False, 'norm_eps': 1e-06, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 16
        num_frames = 2
        height = width = 16
        text_encoder_embedding_dim = 16
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_sd3.py
class SD3Transformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return SD3Transformer2DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def input_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'sample_size': 32, 'patch_size': 1, 'in_channels': 4, 'num_layers': 4, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_projection_dim': 32, 'joint_attention_dim': 32, 'pooled_projection_dim': 64, 'out_channels': 4, 'pos_embed_max_size': 96, 'dual_attention_layers': (), 'qk_norm': None}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = embedding_dim = 32
        pooled_embedding_dim = embedding_dim * 2
        sequence_length = 154
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, embedding_dim), generator=self.generator, device=torch_device), 'pooled_projections': randn_tensor((batch_size, pooled_embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_skyreels_v2.py
class SkyReelsV2Transformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return SkyReelsV2Transformer3DModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (4, 1, 16, 16)

    @property
    def input_shape(self) -> tuple:
        return (4, 1, 16, 16)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32}

    def get_dummy_inputs(self, batch_size: int=1) -> dict[str, torch.Tensor]:
        num_channels = 4
        num_frames = 2
        height = 16
        width = 16
        text_encoder_embedding_dim = 16
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_stable_audio3.py
_STABLE_AUDIO3_TINY_CFG = {'io_channels': 8, 'patch_size': 1, 'embed_dim': 32, 'depth': 2, 'num_heads': 4, 'cond_token_dim': 16, 'global_cond_dim': 12, 'local_add_cond_dim': 5, 'timestep_features_dim': 16, 'ff_mult': 2, 'num_memory_tokens': 3, 'use_differential_attention': False}
_STABLE_AUDIO3_LOCAL_ADD_COND_DIM = _STABLE_AUDIO3_TINY_CFG['local_add_cond_dim']
_STABLE_AUDIO3_BATCH_SIZE = 2
_STABLE_AUDIO3_T_AUDIO = 16
_STABLE_AUDIO3_T_TEXT = 4
_STABLE_AUDIO3_GLOBAL_DIM = _STABLE_AUDIO3_TINY_CFG['global_cond_dim']
_STABLE_AUDIO3_COND_DIM = _STABLE_AUDIO3_TINY_CFG['cond_token_dim']
_STABLE_AUDIO3_IO_CHANNELS = _STABLE_AUDIO3_TINY_CFG['io_channels']
def _stable_audio3_make_inputs(batch: int=_STABLE_AUDIO3_BATCH_SIZE, device: str='cpu'):
    torch.manual_seed(0)
    hidden_states = torch.randn(batch, _STABLE_AUDIO3_IO_CHANNELS, _STABLE_AUDIO3_T_AUDIO, device=device)
    timestep = torch.rand(batch, device=device)
    encoder_hidden_states = torch.randn(batch, _STABLE_AUDIO3_T_TEXT, _STABLE_AUDIO3_COND_DIM, device=device)
    global_hidden_states = torch.randn(batch, _STABLE_AUDIO3_GLOBAL_DIM, device=device)
    return (hidden_states, timestep, encoder_hidden_states, global_hidden_states)
_STABLE_AUDIO3_PROD_CFG = {'io_channels': 256, 'patch_size': 1, 'embed_dim': 1536, 'depth': 24, 'num_heads': 24, 'cond_token_dim': 768, 'global_cond_dim': 768, 'local_add_cond_dim': 257, 'timestep_features_dim': 256, 'ff_mult': 4.0, 'num_memory_tokens': 64, 'use_differential_attention': True}
def _stable_audio3_expected_prod_state_dict_shapes() -> dict:
    """The exact parameter/buffer names and shapes of the SA3 Medium DiT checkpoint,
    expressed in diffusers naming (reference keys renamed: ``ff.ff.0.proj`` → ``ff.proj_in``,
    ``ff.ff.2`` → ``ff.proj_out``; ``model.model.transformer.layers.{i}`` → ``transformer_blocks.{i}``).

    Derived from the real checkpoint tensor index (997 tensors total; 522 in the DiT).
    """
    E, H = (1536, 64)
    top = {'to_timestep_embed.0.weight': (E, 256), 'to_timestep_embed.0.bias': (E,), 'to_timestep_embed.2.weight': (E, E), 'to_timestep_embed.2.bias': (E,), 'to_cond_embed.0.weight': (E, 768), 'to_cond_embed.2.weight': (E, E), 'to_global_embed.0.weight': (E, 768), 'to_global_embed.2.weight': (E, E), 'global_cond_embedder.0.weight': (E, E), 'global_cond_embedder.0.bias': (E,), 'global_cond_embedder.2.weight': (6 * E, E), 'global_cond_embedder.2.bias': (6 * E,), 'preprocess_conv.weight': (256, 256, 1), 'postprocess_conv.weight': (256, 256, 1), 'proj_in.weight': (E, 256), 'proj_out.weight': (256, E), 'memory_tokens': (64, E), 'rotary_pos_emb.inv_freq': (H // 4,), 'prompt_padding_embedding': (768,)}
    per_block = {'pre_norm.gamma': (E,), 'self_attn.to_qkv.weight': (5 * E, E), 'self_attn.to_out.weight': (E, E), 'self_attn.q_norm.gamma': (H,), 'self_attn.k_norm.gamma': (H,), 'cross_attend_norm.gamma': (E,), 'cross_attn.to_q.weight': (2 * E, E), 'cross_attn.to_kv.weight': (3 * E, E), 'cross_attn.to_out.weight': (E, E), 'cross_attn.q_norm.gamma': (H,), 'cross_attn.k_norm.gamma': (H,), 'ff_norm.gamma': (E,), 'ff.proj_in.weight': (2 * 4 * E, E), 'ff.proj_in.bias': (2 * 4 * E,), 'ff.proj_out.weight': (E, 4 * E), 'ff.proj_out.bias': (E,), 'to_local_embed.0.weight': (E, 257), 'to_local_embed.0.bias': (E,), 'to_local_embed.2.weight': (E, E), 'to_local_embed.2.bias': (E,), 'to_scale_shift_gate': (6 * E,)}
    expected = dict(top)
    for i in range(24):
        for name, shape in per_block.items():
            expected[f'transformer_blocks.{i}.{name}'] = shape
    return expected
class StableAudio3DiTModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return StableAudio3DiTModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def output_shape(self) -> tuple:
        return (_STABLE_AUDIO3_IO_CHANNELS, _STABLE_AUDIO3_T_AUDIO)

    def get_init_dict(self) -> dict:
        return dict(_STABLE_AUDIO3_TINY_CFG)

    def get_dummy_inputs(self) -> dict:
        hidden_states, timestep, encoder_hidden_states, global_hidden_states = _stable_audio3_make_inputs(batch=_STABLE_AUDIO3_BATCH_SIZE, device=torch_device)
        return {'hidden_states': hidden_states, 'timestep': timestep, 'encoder_hidden_states': encoder_hidden_states, 'global_hidden_states': global_hidden_states}



# ---- diffusers tests/models/transformers/test_models_transformer_temporal.py
class TransformerTemporalModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return TransformerTemporalModel

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def input_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def output_shape(self) -> tuple:
        return (4, 32, 32)

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict:
        return {'num_attention_heads': 8, 'attention_head_dim': 4, 'in_channels': 4, 'num_layers': 1, 'norm_num_groups': 1}

    def get_dummy_inputs(self, batch_size: int=2) -> dict[str, torch.Tensor]:
        num_channels = 4
        height = width = 32
        return {'hidden_states': randn_tensor((batch_size, num_channels, height, width), generator=self.generator, device=torch_device), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_wan.py
class WanTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return WanTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4, 2, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (4, 2, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int] | tuple | str | bool]:
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        num_channels = 4
        num_frames = 2
        height = 16
        width = 16
        text_encoder_embedding_dim = 16
        sequence_length = 12
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_wan_animate.py
class WanAnimateTransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return WanAnimateTransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4, 21, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (12, 21, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int] | tuple | str | bool | float | dict]:
        channel_sizes = {'4': 16, '8': 16, '16': 16}
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 12, 'latent_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'image_dim': 16, 'rope_max_seq_len': 32, 'motion_encoder_channel_sizes': channel_sizes, 'motion_encoder_size': 16, 'motion_style_dim': 8, 'motion_dim': 4, 'motion_encoder_dim': 16, 'face_encoder_hidden_dim': 16, 'face_encoder_num_heads': 2, 'inject_face_latents_blocks': 2}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        num_channels = 4
        num_frames = 20
        height = 16
        width = 16
        text_encoder_embedding_dim = 16
        sequence_length = 12
        clip_seq_len = 12
        clip_dim = 16
        inference_segment_length = 77
        face_height = 16
        face_width = 16
        return {'hidden_states': randn_tensor((batch_size, 2 * num_channels + 4, num_frames + 1, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states_image': randn_tensor((batch_size, clip_seq_len, clip_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'pose_hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'face_pixel_values': randn_tensor((batch_size, 3, inference_segment_length, face_height, face_width), generator=self.generator, device=torch_device, dtype=self.torch_dtype)}



# ---- diffusers tests/models/transformers/test_models_transformer_wan_animate_2.py
_WAN_ANIMATE_2_SEGMENT_FRAME_LENGTH = 5
_WAN_ANIMATE_2_SEGMENT_AREA = [32, 32]
_WAN_ANIMATE_2_LATENT_HEIGHT = 4
_WAN_ANIMATE_2_LATENT_WIDTH = 4
_WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES = 2
_WAN_ANIMATE_2_GENERATION_LATENT_FRAMES = _WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES + 1
_WAN_ANIMATE_2_PATCHES_PER_FRAME = _WAN_ANIMATE_2_LATENT_HEIGHT // 2 * (_WAN_ANIMATE_2_LATENT_WIDTH // 2)
_WAN_ANIMATE_2_LATENT_CHANNELS = 16
_WAN_ANIMATE_2_CONDITION_CHANNELS = 20
_WAN_ANIMATE_2_TEXT_SEQ_LEN = 8
_WAN_ANIMATE_2_TEXT_DIM = 32
_WAN_ANIMATE_2_CLIP_SEQ_LEN = 4
_WAN_ANIMATE_2_CLIP_DIM = 1280
_WAN_ANIMATE_2_NUM_LAYERS = 2
class WanAnimate2Transformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return WanAnimate2Transformer3DModel

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (_WAN_ANIMATE_2_LATENT_CHANNELS, _WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT, _WAN_ANIMATE_2_LATENT_WIDTH)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (_WAN_ANIMATE_2_LATENT_CHANNELS, _WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT, _WAN_ANIMATE_2_LATENT_WIDTH)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | tuple | bool | float]:
        return {'patch_size': (1, 2, 2), 'text_len': 16, 'in_dim': _WAN_ANIMATE_2_LATENT_CHANNELS + _WAN_ANIMATE_2_CONDITION_CHANNELS, 'dim': 128, 'ffn_dim': 256, 'freq_dim': 64, 'text_dim': _WAN_ANIMATE_2_TEXT_DIM, 'out_dim': _WAN_ANIMATE_2_LATENT_CHANNELS, 'num_heads': 4, 'num_layers': _WAN_ANIMATE_2_NUM_LAYERS, 'cross_attn_norm': True, 'use_img_emb': True}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor | list | int | str]:
        generator = self.generator
        return {'hidden_states': [randn_tensor((_WAN_ANIMATE_2_LATENT_CHANNELS, _WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT, _WAN_ANIMATE_2_LATENT_WIDTH), generator=generator, device=torch_device, dtype=self.torch_dtype)], 'timestep': torch.tensor([1.0], device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': [randn_tensor((_WAN_ANIMATE_2_TEXT_SEQ_LEN, _WAN_ANIMATE_2_TEXT_DIM), generator=generator, device=torch_device, dtype=self.torch_dtype)], 'condition_latents': [randn_tensor((_WAN_ANIMATE_2_CONDITION_CHANNELS, _WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT, _WAN_ANIMATE_2_LATENT_WIDTH), generator=generator, device=torch_device, dtype=self.torch_dtype)], 'encoder_hidden_states_image': randn_tensor((1, _WAN_ANIMATE_2_CLIP_SEQ_LEN, _WAN_ANIMATE_2_CLIP_DIM), generator=generator, device=torch_device, dtype=self.torch_dtype), 'kv_cache': WanAnimate2KVCache(_WAN_ANIMATE_2_NUM_LAYERS), 'kv_cache_mode': 'extract', 'seq_len': _WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES * _WAN_ANIMATE_2_PATCHES_PER_FRAME, 'offset_grid_sizes': torch.tensor([[_WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT // 2, _WAN_ANIMATE_2_LATENT_WIDTH // 2]], dtype=torch.long)}

    def get_dummy_generation_inputs(self, kv_cache: WanAnimate2KVCache) -> dict[str, torch.Tensor | list | int | str]:
        """Inputs for one denoising step (`kv_cache_mode="cached"`) against an already populated `kv_cache`."""
        generator = self.generator
        return {'hidden_states': [randn_tensor((_WAN_ANIMATE_2_LATENT_CHANNELS, _WAN_ANIMATE_2_GENERATION_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT, _WAN_ANIMATE_2_LATENT_WIDTH), generator=generator, device=torch_device, dtype=self.torch_dtype)], 'timestep': torch.tensor([500.0], device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': [randn_tensor((_WAN_ANIMATE_2_TEXT_SEQ_LEN, _WAN_ANIMATE_2_TEXT_DIM), generator=generator, device=torch_device, dtype=self.torch_dtype)], 'condition_latents': [randn_tensor((_WAN_ANIMATE_2_CONDITION_CHANNELS, _WAN_ANIMATE_2_GENERATION_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT, _WAN_ANIMATE_2_LATENT_WIDTH), generator=generator, device=torch_device, dtype=self.torch_dtype)], 'encoder_hidden_states_image': randn_tensor((1, _WAN_ANIMATE_2_CLIP_SEQ_LEN, _WAN_ANIMATE_2_CLIP_DIM), generator=generator, device=torch_device, dtype=self.torch_dtype), 'kv_cache': kv_cache, 'kv_cache_mode': 'cached', 'seq_len': _WAN_ANIMATE_2_GENERATION_LATENT_FRAMES * _WAN_ANIMATE_2_PATCHES_PER_FRAME, 'reference_grid_sizes': torch.tensor([[_WAN_ANIMATE_2_REFERENCE_LATENT_FRAMES, _WAN_ANIMATE_2_LATENT_HEIGHT // 2, _WAN_ANIMATE_2_LATENT_WIDTH // 2]], dtype=torch.long), 'origin_len': _WAN_ANIMATE_2_SEGMENT_FRAME_LENGTH, 'origin_area': _WAN_ANIMATE_2_SEGMENT_AREA}



# ---- diffusers tests/models/transformers/test_models_transformer_wan_vace.py
class WanVACETransformer3DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return WanVACETransformer3DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (16, 2, 16, 16)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (16, 2, 16, 16)

    @property
    def main_input_name(self) -> str:
        return 'hidden_states'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self) -> dict[str, int | list[int] | tuple | str | bool | None]:
        return {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 16, 'out_channels': 16, 'text_dim': 32, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 4, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32, 'vace_layers': [0, 2], 'vace_in_channels': 48}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor]:
        batch_size = 1
        num_channels = 16
        num_frames = 2
        height = 16
        width = 16
        text_encoder_embedding_dim = 32
        sequence_length = 12
        vace_in_channels = 48
        return {'hidden_states': randn_tensor((batch_size, num_channels, num_frames, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'encoder_hidden_states': randn_tensor((batch_size, sequence_length, text_encoder_embedding_dim), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'control_hidden_states': randn_tensor((batch_size, vace_in_channels, num_frames, height, width), generator=self.generator, device=torch_device, dtype=self.torch_dtype), 'timestep': torch.randint(0, 1000, size=(batch_size,), generator=self.generator).to(torch_device)}



# ---- diffusers tests/models/transformers/test_models_transformer_z_image.py
def _z_image_concat_list_output(output):
    """Model output `sample` is a list of tensors. Concatenate them for comparison."""
    return torch.cat([t.flatten() for t in output])
class ZImageTransformer2DModel_Tiny(_Tiny):

    @property
    def model_class(self):
        return ZImageTransformer2DModel

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4, 32, 32)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (4, 32, 32)

    @property
    def main_input_name(self) -> str:
        return 'x'

    @property
    def generator(self):
        return torch.Generator('cpu').manual_seed(0)

    def get_init_dict(self):
        return {'all_patch_size': (2,), 'all_f_patch_size': (1,), 'in_channels': 16, 'dim': 16, 'n_layers': 1, 'n_refiner_layers': 1, 'n_heads': 1, 'n_kv_heads': 2, 'qk_norm': True, 'cap_feat_dim': 16, 'rope_theta': 256.0, 't_scale': 1000.0, 'axes_dims': [8, 4, 4], 'axes_lens': [256, 32, 32]}

    def get_dummy_inputs(self) -> dict[str, torch.Tensor | list]:
        batch_size = 1
        num_channels = 16
        embedding_dim = 16
        sequence_length = 16
        height = 16
        width = 16
        hidden_states = [randn_tensor((num_channels, 1, height, width), generator=self.generator, device=torch_device) for _ in range(batch_size)]
        encoder_hidden_states = [randn_tensor((sequence_length, embedding_dim), generator=self.generator, device=torch_device) for _ in range(batch_size)]
        timestep = torch.tensor([0.0]).to(torch_device)
        return {'x': hidden_states, 'cap_feats': encoder_hidden_states, 't': timestep}


# ---- configs written here, for classes diffusers' tests build through another class's test


class Transformer2DModel_Tiny(DiTTransformer2DModel_Tiny):
    """The legacy ``Transformer2DModel`` in its DiT form (patched input, ada_norm_zero): the
    class DiTTransformer2DModel split off, built from the DiT test's config."""

    @property
    def model_class(self):
        return Transformer2DModel


# ---- the sweep's view of the configs above

CONFIGS: Dict[str, type] = {cls.__name__[: -len("_Tiny")]: cls for cls in list(globals().values())
                            if isinstance(cls, type) and cls.__name__.endswith("_Tiny")}

# 2 blocks per stack: the keys diffusers' configs count blocks with, raised from 1 to 2
BLOCK_KEYS = ("num_layers", "num_single_layers", "num_refiner_layers", "n_refiner_layers", "n_layers",
              "num_single_dit_layers", "num_mmdit_layers", "num_hidden_layers")

# per class: init-dict changes beyond BLOCK_KEYS (a stack cut to 2 blocks, a config that is not tiny)
OVERRIDES: Dict[str, Dict[str, Any]] = {
    "SD3Transformer2DModel": {"num_layers": 2},
    "OmniGenTransformer2DModel": {"num_layers": 2},
    "HiDreamImageTransformer2DModel": {"llama_layers": (0, 1, 0, 1)},   # one text layer per block
}


def _bria_fibo(inputs, init):
    """One text-encoder layer per block (the test's two for 1 + 1 blocks)."""
    layers = inputs["text_encoder_layers"]
    count = init["num_layers"] + init["num_single_layers"]
    return {**inputs, "text_encoder_layers": [layers[i % len(layers)] for i in range(count)]}


def _glm_image(inputs, init):
    """One prior token per image token (the test's one per sample broadcasts at batch 1 only)."""
    batch, _, height, width = inputs["hidden_states"].shape
    tokens = (height // init["patch_size"]) * (width // init["patch_size"])
    g = torch.Generator().manual_seed(0)
    return {**inputs, "prior_token_id": torch.randint(0, 64, (batch, tokens), generator=g),
            "prior_token_drop": torch.zeros(batch, tokens, dtype=torch.bool)}


# configs whose inputs stay at one sample (their per-sample lists do not repeat with the rows)
ONE_SAMPLE = {"JoyImageEditPlusTransformer3DModel"}

# per class: the dummy inputs made to match the init-dict changes (or batch 2)
INPUT_FIXES = {
    "BriaFiboTransformer2DModel": _bria_fibo,
    "GlmImageTransformer2DModel": _glm_image,
}


@dataclasses.dataclass
class Tiny:
    name: str
    model: torch.nn.Module
    inputs: Dict[str, Any]       # keyword arguments of one forward call, batch 2
    latent: str                  # the input a sampler updates
    timestep: Optional[str]      # the input carrying the timestep


TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "time", "noise_level")


def init_dict(name: str) -> Dict[str, Any]:
    config = CONFIGS[name]()
    init = dict(config.get_init_dict())
    for key in BLOCK_KEYS:
        if init.get(key) == 1:
            init[key] = 2
    init.update(OVERRIDES.get(name, {}))
    return init


def build(name: str, seed: int = 0, batch: int = 2) -> Tiny:
    config = CONFIGS[name]()
    torch.manual_seed(seed)
    model = config.model_class(**init_dict(name)).eval()
    init = init_dict(name)
    try:
        inputs = config.get_dummy_inputs(batch_size=batch)
    except TypeError:
        inputs = config.get_dummy_inputs()
    if name in INPUT_FIXES:
        inputs = INPUT_FIXES[name](inputs, init)
    latent = getattr(config, "main_input_name", "hidden_states")
    if latent not in inputs:
        latent = next(k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    x = inputs[latent]
    if (isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == 1 and batch > 1
            and name not in ONE_SAMPLE):
        # a config whose inputs have one sample: every input with one row, repeated
        inputs = {k: v.expand(batch, *v.shape[1:]).clone()
                  if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == 1 else v
                  for k, v in inputs.items()}
    timestep = next((k for k in TIMESTEP_NAMES if k in inputs), None) or next(
        (k for k in inputs if re.search(r"(^|_)(timesteps?|sigmas?)$", k)), None)
    return Tiny(name, model, inputs, latent, timestep)
