"""A DiT in the style of the original DiT code (facebookresearch/DiT): ``self.blocks``,
adaLN-Zero modulation, sinusoidal timestep MLP, label embedding, final layer,
unpatchify.  Written here so the backend is tested on a model it has never seen
through diffusers.  Also a model without blocks, and a toy whose forecasts are exact.
"""

import math

import torch
from torch import nn


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq=32):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * hidden, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + gate_msa.unsqueeze(1) * self.attn(h, h, h, need_weights=False)[0]
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ReferenceDiT(nn.Module):
    """forward(x, t, y) -> eps, like the original DiT (without learned sigma)."""

    def __init__(self, input_size=8, patch=2, channels=4, hidden=32, depth=4, heads=2, classes=10):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.x_embedder = nn.Conv2d(channels, hidden, patch, patch)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = nn.Embedding(classes + 1, hidden)
        tokens = (input_size // patch) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch, channels)
        # adaLN-Zero would zero these; small random values keep the test non-trivial.
        for block in self.blocks:
            nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)

    def unpatchify(self, x):
        b, n, _ = x.shape
        p, c = self.patch, self.channels
        h = w = int(n ** 0.5)
        x = x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


class NoBlocks(nn.Module):
    """A denoiser with no repeated block stack: must compile and run unchanged."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, x, timestep):
        return self.out(torch.tanh(self.inp(x) + timestep[:, None]))


class PolyBlock(nn.Module):
    """Adds a residual that is a quadratic in t and does not depend on the stream."""

    def __init__(self, width):
        super().__init__()
        self.a = nn.Parameter(torch.randn(width))
        self.b = nn.Parameter(torch.randn(width))
        self.c = nn.Parameter(torch.randn(width))
        self.scale = nn.Linear(width, width)

    def forward(self, h, t):
        tt = t[:, None, None]
        bias = self.scale(self.c)  # a few ops so the block is a real sub-graph
        return h + self.a * tt * tt + self.b * tt + bias * 0.1 + 0.0 * torch.tanh(h)


class PolyDiT(nn.Module):
    """Every block residual is a polynomial of degree 2 in t: an order-2 forecast is exact."""

    def __init__(self, width=8, depth=3):
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList([PolyBlock(width) for _ in range(depth)])
        self.out = nn.Linear(width, width)

    def forward(self, x, t):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, t)
        return self.out(h)


class QKVAttention(nn.Module):
    """timm's ``Attention`` as the original DiT uses it: one qkv projection, heads split by reshape."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class OriginalDiTBlock(DiTBlock):
    def __init__(self, hidden, heads):
        super().__init__(hidden, heads)
        self.attn = QKVAttention(hidden, heads)

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class OriginalDiT(ReferenceDiT):
    """The original DiT code more closely (facebookresearch/DiT ``models.py``): timm-style qkv
    attention, learned sigma (twice the output channels), ``unpatchify`` by ``int(T ** 0.5)``, and
    with ``cfg_scale`` set, ``forward`` is its ``forward_with_cfg``: the first half of the batch is
    run twice (``x[: len(x) // 2]``), the guided half repeated, ``torch.split(eps, len(eps) // 2)``.
    Its block stack's batch is the size ``2 * (B // 2)`` and its epilogue splits by a symbolic size."""

    def __init__(self, cfg_scale=None, input_size=8, patch=2, channels=4, hidden=32, depth=3, heads=2, classes=10):
        super().__init__(input_size, patch, channels, hidden, depth, heads, classes)
        self.cfg_scale = cfg_scale
        self.blocks = nn.ModuleList([OriginalDiTBlock(hidden, heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch, 2 * channels)
        for block in self.blocks:
            nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)

    def unpatchify(self, x):
        c, p = 2 * self.channels, self.patch
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        if self.cfg_scale is None:
            return super().forward(x, t, y)
        half = x[: len(x) // 2]
        model_out = super().forward(torch.cat([half, half], dim=0), t, y)
        eps, rest = model_out[:, :self.channels], model_out[:, self.channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + self.cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
