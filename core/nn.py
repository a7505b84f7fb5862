"""Building blocks shared by more than one model family."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """An exponential moving average of a network's weights: θ_ema ← β θ_ema + (1 − β) θ.

    Sampling from the average is smoother than from the last iterate (Karras et al. 2018; Yazıcı et al. 2019).
    Buffers (batch-norm statistics) are copied, not averaged. The copy is a submodule, so it is saved with the
    model and restored on resume.
    """

    def __init__(self, network: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.average = copy.deepcopy(network).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        for averaged, current in zip(self.average.parameters(), network.parameters()):
            averaged.lerp_(current, 1.0 - self.decay)
        for averaged, current in zip(self.average.buffers(), network.buffers()):
            averaged.copy_(current)

    def forward(self, *args, **kwargs):
        return self.average(*args, **kwargs)

    def train(self, mode: bool = True):
        """The average always runs in eval mode (batch norm uses its copied running statistics)."""
        return super().train(False)
