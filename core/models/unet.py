"""The denoising U-Net ε_θ(x_t, t[, y]) of DDPM (Ho et al. 2020, Sec. 4 and Appendix B), sized for 28x28 images.

    t ─ sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5) ─ MLP ─ (+ label embedding) ─ temb, into every block
    x_t ─ conv ─┬ level 1: residual blocks ──────────────────────────────┬─ level 1: residual blocks ─ conv ─ output
                └ down ─ level 2 ─ … ─ level L (+ self-attention) ─ middle ─ … up ┘  (skip connections concatenated)

A residual block (Ho et al., after Wide ResNet): h = conv(SiLU(GN(x))); h += Linear(SiLU(temb)); h =
conv(dropout(SiLU(GN(h)))); out = h + skip(x), skip a 1x1 conv where the width changes. Self-attention (multi-head,
with GroupNorm in front and a residual around it) runs at the lowest resolution and in the middle. The layout
follows diffusers' `UNet2DModel` (blocks per level, skip bookkeeping, one more block per up level than down), so the
two compare at equal parameter counts (bench/ddpm_throughput.py). With class conditioning, labels 0..K−1 index an
embedding added to temb, and label K is the "null" label used for classifier-free guidance (Ho & Salimans 2022).

Choices for speed on a CPU, the values unchanged up to rounding (bench/ddpm_throughput.py): GroupNorm computes
in float32 whatever the autocast precision, together with the SiLU after it in one C kernel on channels_last tensors
(core/kernels.py; PyTorch's bf16 GroupNorm in channels_last is several times slower than its float32 one); and in
training, attention over at most `EXPLICIT_ATTENTION_TOKENS` positions (the 7x7 level) is written out as
softmax(QKᵀ/√d) V, which at that length trains faster than PyTorch's fused CPU kernel (whose bf16 backward is slow);
sampling and longer sequences take the fused kernel (2% faster per forward there).
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.kernels import group_norm_silu

EXPLICIT_ATTENTION_TOKENS = 100    # up to here softmax(QKᵀ/√d) V trains faster than the fused kernel (2 cores)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[cos(t ω_i), sin(t ω_i)], ω_i = max_period^(−i/(dim/2)): Vaswani et al. 2017, Sec. 3.5, as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                   # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class GroupNorm(nn.GroupNorm):
    """GroupNorm computed in at least float32, returned in the input's dtype (as in Dhariwal & Nichol's
    guided-diffusion), with the SiLU that follows it folded in where `silu` (one fused CPU kernel: core.kernels)."""

    def __init__(self, num_groups: int, num_channels: int, silu: bool = False):
        super().__init__(num_groups, num_channels)
        self.silu = silu

    def forward(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        """GroupNorm(x), or GroupNorm(x + shift) with an (N, C) shift broadcast over positions (the timestep)."""
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, self.silu, shift)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, silu=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_channels)
        self.norm2 = GroupNorm(groups, out_channels, silu=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.norm1(x))                                       # norm1 and norm2 end in SiLU
        h = self.norm2(h, shift=self.temb(F.silu(temb)))     # GN(h + Linear(SiLU(temb))): the timestep, every block
        return self.skip(x) + self.conv2(self.dropout(h))


class SelfAttention(nn.Module):
    def __init__(self, channels: int, groups: int, head_dim: int):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                         # (B, C, H, W) -> (B, HW, C)
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if h * w <= EXPLICIT_ATTENTION_TOKENS and torch.is_grad_enabled():
            weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1, dtype=torch.float32)
            attended = weights.to(v.dtype) @ v                                   # (B, heads, HW, C/heads)
        else:
            attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(attended).transpose(1, 2).view(b, c, h, w)


class Level(nn.Module):
    """The blocks of one resolution: residual blocks, each followed by attention where asked."""

    def __init__(self, in_channels: list[int], out_channels: int, temb_dim: int, groups: int, dropout: float,
                 attention: bool, head_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(c, out_channels, temb_dim, groups, dropout) for c in in_channels)
        self.attentions = nn.ModuleList(SelfAttention(out_channels, groups, head_dim) if attention else nn.Identity()
                                        for _ in in_channels)


class UNet(nn.Module):
    """ε_θ(x_t, t, y). `channels` lists the width of each level; the resolution halves between levels."""

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64, 128), layers_per_block: int = 1,
                 num_classes: int = 0, groups: int = 8, dropout: float = 0.0, head_dim: int = 32,
                 attention_levels: tuple[int, ...] | None = None):
        super().__init__()
        levels = len(channels)
        attention_levels = (levels - 1,) if attention_levels is None else attention_levels
        temb_dim = 4 * channels[0]
        self.channels, self.num_classes = channels, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.label_embedding = nn.Embedding(num_classes + 1, temb_dim) if num_classes else None   # + the null label
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, width = [channels[0]], channels[0]
        for i, c in enumerate(channels):
            ins = [width] + [c] * (layers_per_block - 1)
            self.down.append(Level(ins, c, temb_dim, groups, dropout, i in attention_levels, head_dim))
            skips += [c] * layers_per_block
            width = c
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResidualBlock(width, width, temb_dim, groups, dropout)
        self.mid_attention = SelfAttention(width, groups, head_dim)
        self.mid2 = ResidualBlock(width, width, temb_dim, groups, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(channels))):
            ins = []
            for _ in range(layers_per_block + 1):
                ins.append(width + skips.pop())
                width = c
            self.up.append(Level(ins, c, temb_dim, groups, dropout, i in attention_levels, head_dim))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = GroupNorm(groups, channels[0], silu=True)
        self.conv_out = nn.Conv2d(channels[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)          # start as ε̂ = 0: the initial loss is E‖ε‖² = 1
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) with H, W divisible by 2^(levels−1) up to odd 7 (28 → 14 → 7); t: (B,) or scalar."""
        t = torch.as_tensor(t, device=x.device).expand(len(x))
        temb = self.time_mlp(timestep_embedding(t, self.channels[0]))
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((len(x),), self.num_classes, device=x.device)      # unconditional: null label
            temb = temb + self.label_embedding(labels)
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(h, temb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, temb)), temb)
        for i, level in enumerate(self.up):
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(torch.cat([h, skips.pop()], dim=1), temb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.conv_out(self.norm_out(h))
