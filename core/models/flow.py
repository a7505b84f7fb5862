"""Normalizing flows: Glow (Kingma & Dhariwal 2018) and RealNVP (Dinh et al. 2017), multi-scale, with uniform or
variational dequantization (Ho et al. 2019, Flow++ Sec. 3.1). The layers are in core/models/flow_layers.py.

Exact likelihood by the change of variables (RealNVP Eq. 3): for z = f(x) invertible,
    log p(x) = log p_Z(f(x)) + log |det ∂f/∂x|.
Multi-scale architecture (RealNVP Sec. 3.6; Glow Fig. 2): L levels; each squeezes (C, H, W) -> (4C, H/2, W/2), runs
K steps of flow, and (but the last) factors out half its channels as latents z_i, so the later levels work on fewer
dimensions. A factored-out z_i has a conditional Gaussian prior given the half that goes on, N(μ(h_i), σ(h_i)) from a
zero-initialised convolution (Glow's code: "split prior"); the top latent has a learned N(μ, σ), plus a learned mean
per class for a class-conditional prior (num_classes > 0).
    glow      step = ActNorm → invertible 1x1 conv (LU) → affine coupling on the channel halves   (Glow Fig. 2a)
    realnvp   level = K checkerboard couplings → squeeze → K channel couplings, each after an ActNorm. Departures:
              ActNorm in place of RealNVP's batch norm (both are per-channel affine maps; ActNorm has no batch
              statistics), and every level squeezes (RealNVP's last scale has four checkerboard couplings only).

Dequantization. The images are 8-bit: pixel levels k ∈ {0, …, 255}^D, D = C·H·W. (The loop's batches hold
x = k/127.5 − 1; k is recovered exactly, so no Jacobian of the [-1, 1] scaling enters the figures.) The flow is a
density on y = (k + u)/256 ∈ [0, 1]^D (input to the layers: y − 0.5, a shift, log|det| = 0), and for any q(u|k)
on [0, 1)^D (Theis et al. 2016; Flow++ Eq. 11-12)
    log P(k) = log ∫ p_Y((k + u)/256) 256^(−D) du ≥ E_q[log p_Y((k + u)/256) − log q(u|k)] − D log 256.
    uniform      q = U[0, 1)^D, log q = 0 (RealNVP, Glow)
    variational  u = sigmoid(g(ε; k)), ε ~ N(0, I), g a small flow conditioned on the image (Flow++ Sec. 3.1):
                 log q(u|k) = log N(ε) − log|det ∂g/∂ε| − Σ log σ'(g)
Bits per dimension (the figure papers report): bpd = (−log p_Y(y) + log q(u|k) + D log 256) / (D log 2), one draw
of u per image; a model that is uniform on [0, 1]^D scores exactly 8.
Sampling at temperature T (Glow Sec. 5.4): every latent is drawn from its prior with σ scaled by T; each y is
quantised back to a pixel level, k = ⌊256 y⌋.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.metrics import Yardstick
from core.model import TrainableModel
from core.models.flow_layers import ActNorm, AffineCoupling, FlowSequence, InvertibleConv, Squeeze, ZeroConv, flat_sum

KINDS = ("glow", "realnvp")
DEQUANTIZATIONS = ("uniform", "variational")
LEVELS = 256                             # 8-bit pixels
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class FlowConfig:
    kind: str = option("glow", "glow (Kingma & Dhariwal 2018) or realnvp (Dinh et al. 2017)", choices=KINDS)
    levels: int = option(2, "L, the number of scales; image_size must be divisible by 2^L (Glow: 3 on 32x32)", low=1)
    steps: int = option(8, "K, steps of flow per level (Glow: 32; realnvp: K checkerboard + K channel couplings)",
                         low=0)
    hidden: int = option(128, "channels of each coupling network (Glow: 512)", low=1)
    dequantization: str = option("uniform", "uniform noise, or variational (Flow++ Sec. 3.1: a learned q(u|x))",
                                 choices=DEQUANTIZATIONS)
    dequant_hidden: int = option(32, "channels of the variational dequantizer's networks", low=1)
    dequant_steps: int = option(2, "coupling layers of the variational dequantizer", low=0)
    num_classes: int = option(0, "0: unconditional; K > 0: a learned mean per class on the top latent's prior", low=0)
    temperature: float = option(0.7, "T of the evaluation samples and grids (Glow: 0.7)", low=0.0, high=2.0)
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side, divisible by 2^levels (8 for the digits)")


def gaussian_log_density(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Σ log N(z; μ, σ²) over all but the batch dimension: −½ log 2π − log σ − ½ ((z − μ)/σ)²."""
    return flat_sum(-0.5 * LOG_2PI - log_std - 0.5 * ((z - mean) * (-log_std).exp()).pow(2))


class VariationalDequantizer(nn.Module):
    """q(u|x) of Flow++ Sec. 3.1: ε ~ N(0, I) → checkerboard affine couplings whose networks also see the image →
    u = sigmoid(·) ∈ (0, 1). Returns u and log q(u|x) = log N(ε) − Σ log|det| − Σ log σ'(v), σ' = σ(v)σ(−v)."""

    def __init__(self, channels: int, hidden: int, steps: int):
        super().__init__()
        self.context = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, hidden, 3, padding=1))
        self.flow = FlowSequence([AffineCoupling(channels, hidden, "checkerboard", i % 2, context_channels=hidden)
                                  for i in range(steps)])

    def forward(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """u = sigmoid(g(ε; x)) and log q(u|x), for noise ε and images x in [-1, 1]."""
        v, logdet = self.flow(eps, self.context(x))
        log_q = gaussian_log_density(eps, torch.zeros_like(eps), torch.zeros_like(eps)) - logdet
        return torch.sigmoid(v), log_q - flat_sum(F.logsigmoid(v) + F.logsigmoid(-v))


class Flow(TrainableModel):
    """Glow or RealNVP: a multi-scale normalizing flow trained by exact maximum likelihood (bits per dimension)."""
    config_class = FlowConfig
    pipeline_tag = "unconditional-image-generation"
    likelihood_kind = "bound"          # what bits_per_dim gives: one draw of dequantization noise: an upper bound on −log₂ P(k)/D
    card_description = """
A normalizing flow trained from scratch with genlab (`core/models/flow.py`): Glow (Kingma & Dhariwal 2018; ActNorm,
invertible 1x1 convolutions in LU form, affine couplings, a multi-scale architecture) or RealNVP (Dinh et al. 2017).
Its likelihood is exact: bits per dimension are −log₂ P(x)/D on the 8-bit test images, a bound through the
dequantization noise (uniform, or variational as in Flow++), with the log 256 per dimension of the discretisation
included, so a uniform model scores 8. FID, KID and coverage use the features of genlab's Fashion-MNIST classifier
(`checkpoints/classifier`) and are measured on samples at the configured temperature.
"""
    card_samples_caption = "Samples at the configured temperature T (every latent drawn with σ scaled by T)."

    def __init__(self, config: FlowConfig = FlowConfig()):
        super().__init__()
        c = self.config = config
        if c.kind not in KINDS or c.dequantization not in DEQUANTIZATIONS or c.image_size % 2 ** c.levels:
            raise ValueError(f"kind must be one of {KINDS}, dequantization one of {DEQUANTIZATIONS}, and image_size "
                             f"divisible by 2^levels = {2 ** c.levels}")
        levels, split_priors, channels = [], [], c.channels
        for level in range(c.levels):
            levels.append(self.level(channels))
            channels *= 4
            if level < c.levels - 1:
                split_priors.append(ZeroConv(channels // 2, channels))           # h_i -> (μ, log σ) of z_i
                channels //= 2
        self.levels, self.split_priors = nn.ModuleList(levels), nn.ModuleList(split_priors)
        side = c.image_size // 2 ** c.levels
        self.top_shape = (channels, side, side)
        self.top_mean = nn.Parameter(torch.zeros(1, *self.top_shape))
        self.top_log_std = nn.Parameter(torch.zeros(1, *self.top_shape))
        self.class_mean = nn.Embedding(c.num_classes, math.prod(self.top_shape)) if c.num_classes else None
        if self.class_mean is not None:
            nn.init.zeros_(self.class_mean.weight)
        self.dequantizer = (VariationalDequantizer(c.channels, c.dequant_hidden, c.dequant_steps)
                            if c.dequantization == "variational" else None)

    def level(self, channels: int) -> FlowSequence:
        """One scale: squeeze and K steps (Glow), or checkerboard couplings, squeeze, channel couplings (RealNVP)."""
        c, wide = self.config, 4 * channels
        if c.kind == "glow":
            steps = [[ActNorm(wide), InvertibleConv(wide), AffineCoupling(wide, c.hidden, "channel")]
                     for _ in range(c.steps)]
            return FlowSequence([Squeeze(), *[layer for step in steps for layer in step]])
        board = [[ActNorm(channels), AffineCoupling(channels, c.hidden, "checkerboard", k % 2)] for k in range(c.steps)]
        halves = [[ActNorm(wide), AffineCoupling(wide, c.hidden, "channel", k % 2)] for k in range(c.steps)]
        return FlowSequence([*[layer for pair in board for layer in pair], Squeeze(),
                             *[layer for pair in halves for layer in pair]])

    # -------------------------------------------------------------------------------------- density and latents
    @property
    def dimensions(self) -> int:
        return self.config.channels * self.config.image_size ** 2

    def top_prior(self, n: int, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """(μ, log σ) of the top latent, (n, C, H, W): learned, plus the learned mean of each label's class."""
        mean, log_std = self.top_mean.expand(n, -1, -1, -1), self.top_log_std.expand(n, -1, -1, -1)
        if self.class_mean is not None:
            if labels is None:
                raise ValueError("a class-conditional flow needs labels")
            mean = mean + self.class_mean(labels.to(mean.device)).view(n, *self.top_shape)
        return mean, log_std

    def encode(self, y: Tensor, labels: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """y ∈ [0, 1]^D -> the latents [z_1, …, z_L] and log p_Y(y) = Σ_i log p(z_i | h_i) + Σ log|det| per image."""
        latents, log_density, _ = self.encode_with_priors(y, labels)
        return latents, log_density

    def encode_with_priors(self, y: Tensor, labels: Tensor | None = None
                           ) -> tuple[list[Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
        """encode(), and the prior (μ_i, log σ_i) each z_i was scored under."""
        h, log_density, latents, priors = y - 0.5, y.new_zeros(len(y)), [], []
        for i, level in enumerate(self.levels):
            h, logdet = level(h)
            log_density = log_density + logdet
            if i < len(self.levels) - 1:
                h, z = h.chunk(2, 1)                                      # (B, 2C, S, S) -> 2 x (B, C, S, S)
                mean, log_std = self.split_priors[i](h).chunk(2, 1)
            else:
                z = h
                mean, log_std = self.top_prior(len(h), labels)
            log_density = log_density + gaussian_log_density(z, mean, log_std)
            latents.append(z)
            priors.append((mean, log_std))
        return latents, log_density, priors

    def log_density(self, y: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.encode(y, labels)[1]

    def decode(self, latents: list[Tensor | None], labels: Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, n: int | None = None) -> Tensor:
        """The inverse: latents -> y. A latent given as None is drawn from its prior with σ scaled by T."""
        def draw(mean: Tensor, log_std: Tensor) -> Tensor:
            noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
            return mean + temperature * log_std.exp() * noise

        n = n or len(next(z for z in latents if z is not None))
        h = latents[-1] if latents[-1] is not None else draw(*self.top_prior(n, labels))
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                z = latents[i] if latents[i] is not None else draw(*self.split_priors[i](h).chunk(2, 1))
                h = torch.cat([h, z], 1)
            h = self.levels[i].inverse(h)
        return h + 0.5

    # ----------------------------------------------------------------------------------------- dequantization
    @staticmethod
    def pixel_levels(images: Tensor) -> Tensor:
        """k ∈ {0, …, 255} from the loop's x = k/127.5 − 1 (exact: rounding undoes the float error)."""
        return torch.round((images.float() + 1) * 127.5).clamp(0, LEVELS - 1)

    def dequantize(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """y = (k + u)/256 with u ~ q(u|k), and log q(u|k) per image (0 for uniform noise)."""
        k = self.pixel_levels(images)
        noise = (torch.rand if self.dequantizer is None else torch.randn)(k.shape, generator=generator)
        noise = noise.to(images.device)
        if self.dequantizer is None:
            return (k + noise) / LEVELS, k.new_zeros(len(k))
        u, log_q = self.dequantizer(noise, k / 127.5 - 1)
        return (k + u) / LEVELS, log_q

    def bits_per_dim(self, images: Tensor, labels: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """(−log p_Y(y) + log q(u|k) + D log 256) / (D log 2) per image, one draw of u: an upper bound on
        −log₂ P(k) / D."""
        y, log_q = self.dequantize(images, generator)
        log_p = self.log_density(y, labels)
        return (-log_p + log_q + self.dimensions * math.log(LEVELS)) / (self.dimensions * math.log(2))

    # ------------------------------------------------------------------------------------------------ training
    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"model": self.optimizer}

    def labels_of(self, batch: Batch) -> Tensor | None:
        return batch.labels if self.class_mean is not None else None

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Maximum likelihood: minimise the mean bits per dimension of the batch (the loss is the figure itself)."""
        bpd = self.bits_per_dim(batch.images, self.labels_of(batch)).mean()
        return {"loss/bits_per_dim": self.optimizer_step(self.optimizer, bpd)}

    # ---------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def test_bits_per_dim(self, data: ImageData, batch_size: int = 500, seed: int = 0) -> float:
        """Mean bits per dimension over `data`, with seeded dequantization noise."""
        generator, total, device = torch.Generator().manual_seed(seed), 0.0, self.top_mean.device
        for batch in data.batches(batch_size, seed=0, epoch=0, drop_last=False):
            labels = batch.labels.to(device) if self.class_mean is not None else None
            total += float(self.bits_per_dim(batch.images.to(device), labels, generator).sum())
        return total / len(data)

    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None,
                 samples: tuple[Tensor, Tensor | None] | None = None) -> dict[str, float]:
        """Test bits per dimension, and the yardstick's figures of len(data) samples at the configured T."""
        return {"bits_per_dim": self.test_bits_per_dim(data), **super().evaluate(data, yardstick, samples)}

    def default_labels(self, n: int) -> Tensor | None:
        return torch.arange(n) % self.config.num_classes if self.class_mean is not None else None

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        labels = self.default_labels(n)
        return self.sample(n, temperature=self.config.temperature, seed=0, labels=labels), labels

    def eval_images(self, data: ImageData) -> Tensor:
        return self.sample(64, temperature=self.config.temperature, seed=1234, labels=self.default_labels(64))

    # ------------------------------------------------------------------------------- sampling and latent tools
    @staticmethod
    def to_images(y: Tensor) -> Tensor:
        """y ∈ [0, 1] -> pixel level k = ⌊256 y⌋ (clamped to 0..255) -> the loop's [-1, 1] scale. A decode that
        overflowed holds ±inf or NaN (a latent far in the tails, at a high T, meets an inverse coupling with s → 0:
        x_b = (y_b − t)/s): ±inf clamps to white or black and NaN becomes black, so the sample counts as the failure
        it is (the off-manifold share, the worst samples) instead of poisoning every figure."""
        y = torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
        return (y * LEVELS).floor().clamp(0, LEVELS - 1) / 127.5 - 1

    @torch.no_grad()
    def sample(self, n: int, temperature: float | None = None, seed: int = 0, labels: Tensor | None = None,
               batch_size: int = 500) -> Tensor:
        """n images in [-1, 1]: every latent drawn from its prior with σ scaled by T (Glow Sec. 5.4); T defaults to
        the config's (0.7, as the card, the app and `python -m core.sample` draw them)."""
        temperature = self.config.temperature if temperature is None else temperature
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if labels is not None and self.class_mean is not None and not (
                0 <= int(labels.min()) and int(labels.max()) < self.config.num_classes):
            raise ValueError(f"labels must lie in [0, {self.config.num_classes - 1}]")
        labels = labels if labels is not None else self.default_labels(n)
        generator, chunks = torch.Generator().manual_seed(seed), []
        for start in range(0, n, batch_size):
            part = labels[start:start + batch_size] if labels is not None else None
            with self.autocast():
                y = self.decode([None] * len(self.levels), part, temperature, generator, n=min(batch_size, n - start))
            chunks.append(self.to_images(y.float()).cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def latents_of(self, images: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """The latents of images in [-1, 1], at the centre of each pixel's bin (u = ½, no noise)."""
        y = (self.pixel_levels(images) + 0.5) / LEVELS
        return self.encode(y.to(self.top_mean.device), labels)[0]

    @torch.no_grad()
    def whitened_latents(self, images: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """ε_i = (z_i − μ_i)/σ_i at each scale for images in [-1, 1] (bin centres, as latents_of): the standard
        normal noise that decode() would turn back into the images. Where the model fits an image, ε looks like
        N(0, I) noise; structure left in ε is what the model did not explain."""
        y = (self.pixel_levels(images) + 0.5) / LEVELS
        latents, _, priors = self.encode_with_priors(y.to(self.top_mean.device), labels)
        return [((z - mean) * (-log_std).exp()).cpu() for z, (mean, log_std) in zip(latents, priors)]

    @torch.no_grad()
    def interpolate(self, image_a: Tensor, image_b: Tensor, steps: int = 8, label: int | None = None) -> Tensor:
        """Encode two images (C, H, W), walk the straight line between their latents, decode every point."""
        labels = torch.full((2,), label) if label is not None else None
        latents = self.latents_of(torch.stack([image_a, image_b]), labels)
        t = torch.linspace(0, 1, steps, device=latents[0].device).view(-1, 1, 1, 1)
        path = [z[:1] + t * (z[1:] - z[:1]) for z in latents]                    # (steps, C_i, S_i, S_i) each
        walk_labels = torch.full((steps,), label) if label is not None else None
        return self.to_images(self.decode(path, walk_labels).float()).cpu()
