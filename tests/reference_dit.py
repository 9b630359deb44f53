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
