"""The invertible layers of normalizing flows, and the forward / inverse / log-determinant bookkeeping they share.

A flow maps data x to latents z = f(x) through invertible layers f = f_K ∘ … ∘ f_1, and the change of variables
(Dinh et al. 2017, Eq. 3; Kingma & Dhariwal 2018, Eq. 1-3) gives the exact log-density
    log p(x) = log p_Z(f(x)) + Σ_k log |det ∂f_k/∂h_{k−1}|,     h_0 = x, h_k = f_k(h_{k−1}).
Every layer here is a `FlowLayer`: `forward(x) -> (y, logdet)` with logdet of shape (B,), one per example, and
`inverse(y) -> x`. `FlowSequence` chains them: it adds the log-determinants on the way forward and runs the inverses
in reverse order on the way back. Shapes are (B, C, H, W) throughout.

The layers, each with its equation beside the code (Glow's Table 1 and RealNVP's Sec. 3):
    ActNorm          y = s ⊙ x + b                 log|det| = H·W·Σ_c log|s_c|          (Glow Sec. 3.1)
    InvertibleConv   y = W x at every pixel, W = P L (U + diag(s)), log|det| = H·W·Σ_c log|s_c|   (Glow Sec. 3.2)
    AffineCoupling   y_b = x_b ⊙ σ(h + 2) + t,  (h, t) = NN(x_a),  y_a = x_a    log|det| = Σ log σ(h + 2)
    Squeeze          (C, H, W) -> (4C, H/2, W/2), each 2x2 block to four channels     log|det| = 0   (RealNVP Sec. 3.6)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASKS = ("channel", "checkerboard")


def flat_sum(x: Tensor) -> Tensor:
    """Σ over every dimension but the batch: (B, ...) -> (B,)."""
    return x.flatten(1).sum(1)


class FlowLayer(nn.Module):
    """An invertible map with its log|det J|, per example."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """f = f_K ∘ … ∘ f_1: log|det J_f| = Σ_k log|det J_{f_k}| (the chain rule); f⁻¹ = f_1⁻¹ ∘ … ∘ f_K⁻¹."""

    def __init__(self, layers: list[FlowLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(len(x))
        for layer in self.layers:
            x, layer_logdet = layer(x, context)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y, context)
        return y


class ActNorm(FlowLayer):
    """Activation normalisation (Glow Sec. 3.1): a per-channel affine map y = s ⊙ x + b, with s and b set from the
    first batch it sees in training so that y has zero mean and unit variance per channel (data-dependent init):
        s_c = 1 / std_c(x),  b_c = −mean_c(x) / std_c(x);      inverse x = (y − b) / s;   log|det| = H·W·Σ_c log|s_c|.
    s is stored as log s, so it stays positive."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0.0))       # saved, so a loaded model is not re-initialised

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean, std = x.float().mean((0, 2, 3), keepdim=True), x.float().std((0, 2, 3), keepdim=True)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.bias.copy_(-mean / (std + 1e-6))
        self.initialized.fill_(1.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self.initialize(x)
        height, width = x.shape[2:]
        logdet = height * width * self.log_scale.sum()
        return x * self.log_scale.exp() + self.bias, logdet.expand(len(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return (y - self.bias) * (-self.log_scale).exp()


class InvertibleConv(FlowLayer):
    """Invertible 1x1 convolution in LU form (Glow Sec. 3.2, Eq. 10): y_ij = W x_ij at each pixel, with
        W = P L (U + diag(sign(s) ⊙ exp(log|s|))),
    P a fixed permutation, L lower triangular with ones on the diagonal, U strictly upper triangular. Then
        log|det| = H·W·log|det W| = H·W·Σ_c log|s_c|          (O(C) instead of O(C³)),
    and the inverse is the 1x1 convolution with W⁻¹. W starts as a random rotation (its LU factors)."""

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = upper.diagonal()
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", diagonal.sign())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diagonal.abs().log())

    def weight(self) -> Tensor:
        """W = P L (U + diag(s)), (C, C)."""
        eye = torch.eye(len(self.log_s), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        height, width = x.shape[2:]
        logdet = height * width * self.log_s.sum()
        return F.conv2d(x, self.weight()[:, :, None, None]), logdet.expand(len(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        weight = self.weight()                      # inverted in float32 at least (bf16 has no linalg.inv)
        inverse = torch.linalg.inv(weight if weight.dtype == torch.float64 else weight.float()).to(y.dtype)
        return F.conv2d(y, inverse[:, :, None, None])


class ZeroConv(nn.Conv2d):
    """A 3x3 convolution that starts at zero, so a coupling starts as the identity (Glow Sec. 3.3)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def checkerboard(height: int, width: int, parity: int) -> Tensor:
    """b_ij = 1 where (i + j + parity) is even: the pixels a checkerboard coupling keeps (RealNVP Fig. 3, left)."""
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j + parity) % 2 == 0).float()[None, None]                      # (1, 1, H, W)


class AffineCoupling(FlowLayer):
    """Affine coupling (RealNVP Eq. 7-9; Glow Sec. 3.3). A mask b splits x into a kept part x_a and a changed part
    x_b; a network sees only x_a (and an optional context c), so the Jacobian is triangular:
        (h, t) = NN(x_a, c),  s = σ(h + 2),   y_a = x_a,  y_b = s ⊙ x_b + t
        log|det| = Σ log s,                  inverse: x_b = (y_b − t) / s.
    mask = "channel": x_a, x_b are the two halves of the channels (Glow's split; RealNVP's channel-wise mask), and
    `parity` says which half is kept. mask = "checkerboard": b is the spatial checkerboard of RealNVP, x_a = b ⊙ x,
    and the network's input is b ⊙ x (the changed pixels zeroed).
    Departure, as in Glow's released code: s = sigmoid(h + 2) instead of the paper's exp(h), which bounds s in (0, 1)
    and starts it near 0.88; the last convolution starts at zero, so the layer starts near the identity."""

    def __init__(self, channels: int, hidden: int, mask: str = "channel", parity: int = 0, context_channels: int = 0):
        super().__init__()
        if mask not in MASKS or (mask == "channel" and channels % 2):
            raise ValueError(f"mask must be one of {MASKS}; a channel mask needs an even number of channels")
        self.mask, self.parity = mask, parity
        kept = channels // 2 if mask == "channel" else channels
        changed = channels - channels // 2 if mask == "channel" else channels
        self.network = nn.Sequential(
            nn.Conv2d(kept + context_channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            ZeroConv(hidden, 2 * changed))

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x_a, x_b): the network's input and the part it changes."""
        if self.mask == "channel":
            first, second = x.chunk(2, 1)
            return (first, second) if self.parity == 0 else (second, first)
        return x * self.board(x), x

    def merge(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        if self.mask == "channel":
            return torch.cat([x_a, y_b] if self.parity == 0 else [y_b, x_a], 1)
        board = self.board(y_b)
        return x_a + (1 - board) * y_b                                     # y = b ⊙ x + (1 − b) ⊙ (s ⊙ x + t)

    def board(self, x: Tensor) -> Tensor:
        return checkerboard(*x.shape[2:], self.parity).to(x.device, x.dtype)

    def scale_shift(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """s = σ(h + 2), log s and t from NN(x_a, c); for a checkerboard, the kept pixels get s = 1, t = 0."""
        h, t = self.network(x_a if context is None else torch.cat([x_a, context], 1)).chunk(2, 1)
        log_s = F.logsigmoid(h + 2)
        if self.mask == "checkerboard":
            changed = 1 - self.board(x_a)
            log_s, t = log_s * changed, t * changed
        return log_s.exp(), log_s, t

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = self.split(x)
        s, log_s, t = self.scale_shift(x_a, context)
        return self.merge(x_a, x_b * s + t), flat_sum(log_s)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        y_a, y_b = self.split(y)
        s, _, t = self.scale_shift(y_a, context)
        return self.merge(y_a, (y_b - t) / s)


class Squeeze(FlowLayer):
    """Space to depth (RealNVP Sec. 3.6): each 2x2 block of each channel becomes 4 channels at one pixel. A
    permutation of the entries, so log|det| = 0."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)        # (B, C, 2, 2, H/2, W/2)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, h, w = y.shape
        y = y.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)             # (B, C/4, H, 2, W, 2)
        return y.reshape(b, c // 4, 2 * h, 2 * w)
