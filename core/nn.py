"""Building blocks shared by more than one model family."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """An exponential moving average of a network's weights: θ_ema ← β θ_ema + (1 − β) θ, β = `decay` after warm-up.

    Sampling from the average is smoother than from the last iterate (Karras et al. 2018; Yazıcı et al. 2019).
    Buffers (batch-norm statistics) are copied, not averaged. The copy is a submodule, so it is saved with the
    model and restored on resume.
    """

    def __init__(self, network: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.average = copy.deepcopy(network).requires_grad_(False).eval()
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """One step; β warms up as min(decay, (1 + n) / (10 + n)) so early averages do not keep the random init."""
        beta = ((1 + self.updates) / (10 + self.updates)).clamp(max=self.decay)   # a tensor: no host sync per step
        self.updates += 1
        for averaged, current in zip(self.average.parameters(), network.parameters()):
            averaged.lerp_(current, 1.0 - beta)
        for averaged, current in zip(self.average.buffers(), network.buffers()):
            averaged.copy_(current)

    def forward(self, *args, **kwargs):
        return self.average(*args, **kwargs)

    def train(self, mode: bool = True):
        """The average always runs in eval mode (batch norm uses its copied running statistics)."""
        return super().train(False)


def conv_block(c_in: int, c_out: int, batch_norm: bool = True) -> list[nn.Module]:
    """conv3x3 (no bias) → batch norm → ReLU; without batch norm, conv3x3 (with bias) → SiLU, a smooth function of
    its input whose gradient Langevin dynamics can follow (JEM's energy, core/models/energy.py)."""
    if not batch_norm:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU()]
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def conv_encoder(channels: int, width: int, batch_norm: bool = True) -> list[nn.Module]:
    """conv3x3(w) ×2 → maxpool → conv3x3(2w) ×2 → maxpool → conv3x3(4w) → global average pool → (B, 4w): the
    classifier's body, SimCLR's encoder and (without batch norm) JEM's (global pooling takes any image size)."""
    w, bn = width, batch_norm
    return [*conv_block(channels, w, bn), *conv_block(w, w, bn), nn.MaxPool2d(2), *conv_block(w, 2 * w, bn),
            *conv_block(2 * w, 2 * w, bn), nn.MaxPool2d(2), *conv_block(2 * w, 4 * w, bn), nn.AdaptiveAvgPool2d(1),
            nn.Flatten()]


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for GAN latents): stays at the norm N(0, I) samples have.
    z0, z1: (D,) for one path at the N points t (N,), or (N, D) for N paths, row k at t[k]; returns (N, D).
    (Nearly) parallel endpoints fall back to the straight line."""
    if t.ndim != 1 or (z0.ndim == 2 and len(z0) != len(t)):
        raise ValueError(f"t must be (N,) with one value per row of z0, got t {tuple(t.shape)}, z0 {tuple(z0.shape)}")
    cos = (nn.functional.normalize(z0, dim=-1) * nn.functional.normalize(z1, dim=-1)).sum(-1, keepdim=True)
    omega = torch.arccos(cos.clamp(-1, 1))
    t = t[:, None]
    spherical = (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega).clamp(min=1e-8)
    return torch.where(omega < 1e-4, z0 + t * (z1 - z0), spherical)


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    return z0 + t[:, None] * (z1 - z0)
