"""Building blocks shared by more than one model family."""
from __future__ import annotations

import copy

import torch
from torch import nn


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
