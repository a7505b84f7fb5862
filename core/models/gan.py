"""GANs: the MLP GAN (Goodfellow et al. 2014), DCGAN (Radford et al. 2015), and their class-conditional forms
(Mirza & Osindero 2014), trained with any loss of core/losses.py (BCE, WGAN-GP, R3GAN, hinge).

The minimax game (Goodfellow et al., Eq. 1):  min_G max_D  E_x[log D(x)] + E_z[log(1 − D(G(z)))],  z ~ N(0, I).
Training alternates (Algorithm 1): `critic_steps` discriminator updates on real and detached fake batches, then one
generator update through the (not stepped) discriminator. The generator's exponential moving average (core.nn.EMA)
is what `sample` and evaluation use.

Architectures, for C x S x S images with S = 28 or 32:
    MLP      G: z → 256 → 512 → 1024 → C·S·S, tanh          D: C·S·S → 512 → 256 → score
             LeakyReLU(0.2) throughout; the paper's D used maxout units and dropout, we use LeakyReLU (simpler,
             as in most re-implementations).
    DCGAN    G: z → linear → (4f, S/4, S/4) → ConvT ×2 (stride 2) → conv3x3 → tanh, batch norm + ReLU between
             D: conv4x4/2 → conv4x4/2 → conv3x3 → linear, LeakyReLU(0.2); batch norm after all but the first conv
             (Radford et al., Sec. 3) — except with WGAN-GP and R3GAN, whose per-sample gradient penalties batch norm
             would break (see core/losses.py), where D has no normalisation.
Conditioning (num_classes > 0): G sees [z, embed(y)] (Mirza & Osindero concatenate y to the input); D is a
projection discriminator (Miyato & Koyama 2018): D(x, y) = ψ(φ(x)) + embed(y)ᵀ φ(x), φ the last hidden features.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core import losses
from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.model import TrainableModel
from core.nn import EMA, lerp, slerp

ARCHITECTURES = ("mlp", "dcgan")


@dataclass(frozen=True)
class GANConfig:
    architecture: str = option("dcgan", "mlp (Goodfellow et al. 2014) or dcgan (Radford et al. 2015)",
                               choices=ARCHITECTURES)
    loss: str = option("bce", "adversarial loss", choices=losses.LOSSES[:4])
    num_classes: int = option(0, "0: unconditional; K > 0: class-conditional GAN with K classes")
    latent_dim: int = option(64, "size of z ~ N(0, I)")
    feature_maps: int = option(32, "DCGAN: channels of the widest conv layer are 4x this")
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side, a multiple of 4 (28 or 32; 8 for the 8x8 digits)")
    beta1: float = option(0.5, "Adam beta1 (Radford et al.: 0.5; WGAN-GP: 0.0; R3GAN: 0.0)")
    beta2: float = option(0.999, "Adam beta2 (WGAN-GP: 0.9; R3GAN: 0.99)")
    d_lr_ratio: float = option(1.0, "discriminator learning rate = --lr x this")
    critic_steps: int = option(1, "discriminator updates per generator update (WGAN-GP: 5)")
    gp_weight: float = option(10.0, "WGAN-GP penalty weight lambda")
    r_gamma: float = option(0.1, "R3GAN: weight gamma of the R1 and R2 penalties (each gamma/2)")
    ema_decay: float = option(0.999, "decay of the generator's moving average used for sampling")


class Generator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.num_classes, c.latent_dim) if c.num_classes else None
        z_dim = c.latent_dim * (2 if c.num_classes else 1)
        if c.architecture == "mlp":
            self.net = nn.Sequential(nn.Linear(z_dim, 256), nn.LeakyReLU(0.2), nn.Linear(256, 512), nn.LeakyReLU(0.2),
                                     nn.Linear(512, 1024), nn.LeakyReLU(0.2),
                                     nn.Linear(1024, c.channels * c.image_size ** 2), nn.Tanh())
        else:
            f, s = c.feature_maps, c.image_size // 4
            self.net = nn.Sequential(
                nn.Linear(z_dim, 4 * f * s * s, bias=False), nn.Unflatten(1, (4 * f, s, s)),     # (B, 4f, S/4, S/4)
                nn.BatchNorm2d(4 * f), nn.ReLU(True),
                nn.ConvTranspose2d(4 * f, 2 * f, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * f), nn.ReLU(True),  # S/2
                nn.ConvTranspose2d(2 * f, f, 4, 2, 1, bias=False), nn.BatchNorm2d(f), nn.ReLU(True),          # S
                nn.Conv2d(f, c.channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], 1)
        return self.net(z).reshape(len(z), self.config.channels, self.config.image_size, self.config.image_size)


class Discriminator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        if c.architecture == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(c.channels * c.image_size ** 2, 512), nn.LeakyReLU(0.2),
                                      nn.Linear(512, 256), nn.LeakyReLU(0.2))
            width = 256
        else:
            f, s = c.feature_maps, c.image_size // 4
            norm = nn.Identity if c.loss in losses.NO_BATCH_NORM else nn.BatchNorm2d
            self.body = nn.Sequential(
                nn.Conv2d(c.channels, f, 4, 2, 1), nn.LeakyReLU(0.2),                            # S/2
                nn.Conv2d(f, 2 * f, 4, 2, 1), norm(2 * f), nn.LeakyReLU(0.2),                    # S/4
                nn.Conv2d(2 * f, 4 * f, 3, 1, 1), norm(4 * f), nn.LeakyReLU(0.2), nn.Flatten())   # (B, 4f·S²/16)
            width = 4 * f * s * s
        self.score = nn.Linear(width, 1)
        self.embed = None
        if c.num_classes:
            self.embed = nn.Embedding(c.num_classes, width)
            nn.init.normal_(self.embed.weight, std=width ** -0.5)   # embed(y)ᵀφ(x) starts O(1), like ψ(φ(x))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scores (B,): logits for BCE, critic values for WGAN-GP."""
        h = self.body(x)
        out = self.score(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(1)          # projection: embed(y)ᵀ φ(x)
        return out


class GAN(TrainableModel):
    """GAN: MLP or DCGAN, unconditional or class-conditional, with a choice of adversarial loss."""
    config_class = GANConfig
    pipeline_tag = "unconditional-image-generation"
    channels_last = True          # the DCGAN trains 1.0-1.15x faster than in NCHW (bench/channels_last.py)
    card_description = """
A generative adversarial network trained from scratch with genlab (`core/models/gan.py`, losses in
`core/losses.py`). Samples come from the exponential moving average of the generator. FID, KID, precision and
recall are computed on the features of genlab's Fashion-MNIST classifier (`checkpoints/classifier`): they compare
genlab models with each other and are not comparable with Inception-FIDs from papers.
"""

    card_samples_caption = ("Samples of the EMA generator at the run's fixed evaluation noise "
                            "(for a conditional GAN, row k is class k).")

    def __init__(self, config: GANConfig = GANConfig()):
        super().__init__()
        if config.architecture not in ARCHITECTURES or config.loss not in losses.LOSSES[:4]:
            raise ValueError(f"architecture must be one of {ARCHITECTURES} and loss one of {losses.LOSSES[:4]}")
        if config.image_size % 4 or config.critic_steps < 1:
            raise ValueError("image_size must be a multiple of 4 (28, 32; 8 for the digits) and critic_steps >= 1")
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.ema = EMA(self.generator, config.ema_decay)
        side = 10 if config.num_classes else 8          # conditional grid: one row per class
        self.register_buffer("fixed_noise", self.latent(side * side, seed=1234))

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    def latent(self, n: int, seed: int) -> Tensor:
        return torch.randn(n, self.config.latent_dim, generator=torch.Generator().manual_seed(seed))

    def training_latent(self, real: Tensor) -> Tensor:
        """z ~ N(0, I), one per real image of the batch, from the training RNG stream."""
        return torch.randn(len(real), self.config.latent_dim, device=real.device)

    def default_labels(self, n: int) -> Tensor | None:
        """Labels 0, 1, ..., K-1, 0, ... for conditional sampling; None for an unconditional GAN."""
        return torch.arange(n) % self.config.num_classes if self.conditional else None

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                                        lr=cfg.lr * self.config.d_lr_ratio, betas=betas)
        return {"generator": self.generator_optimizer, "discriminator": self.discriminator_optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Algorithm 1 of Goodfellow et al.: a discriminator step, and every critic_steps-th step a generator step."""
        real = batch.images
        labels = batch.labels if self.conditional else None
        critic = lambda x: self.discriminator(x, labels)
        fake = self.generator(self.training_latent(real), labels)
        c = self.config
        d_loss = losses.discriminator_loss(c.loss, critic, real, fake, c.gp_weight, c.r_gamma)
        logs = {"loss/discriminator": self.optimizer_step(self.discriminator_optimizer, d_loss)}
        if step % c.critic_steps == c.critic_steps - 1:
            self.discriminator.requires_grad_(False)        # G's step needs ∂D/∂x only, not D's weight gradients
            g_loss = losses.generator_loss(c.loss, critic, real, fake)
            logs["loss/generator"] = self.optimizer_step(self.generator_optimizer, g_loss)
            self.discriminator.requires_grad_(True)
            self.ema.update(self.generator)
        return logs

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None, batch_size: int = 1000) -> Tensor:
        """n images in [-1, 1] from the EMA generator; conditional GANs cycle through the classes unless given labels."""
        return self.generate(self.latent(n, seed), labels if labels is not None else self.default_labels(n), batch_size)

    @torch.no_grad()
    def generate(self, z: Tensor, labels: Tensor | None = None, batch_size: int = 1000) -> Tensor:
        device = self.fixed_noise.device
        if self.conditional and labels is None:
            raise ValueError("a conditional GAN needs labels")
        if labels is not None and not (0 <= int(labels.min()) and int(labels.max()) < self.config.num_classes):
            raise ValueError(f"labels must lie in [0, {self.config.num_classes - 1}]")
        chunks = []
        for start in range(0, len(z), batch_size):
            part = labels[start:start + batch_size].to(device) if labels is not None else None
            chunks.append(self.ema(z[start:start + batch_size].to(device), part).cpu())
        return torch.cat(chunks)

    def interpolate(self, seed_a: int, seed_b: int, steps: int = 8, spherical: bool = True,
                    label: int | None = None) -> Tensor:
        """Images along the path from z(seed_a) to z(seed_b); the endpoints are exactly those seeds' samples."""
        z0, z1 = self.latent(1, seed_a)[0], self.latent(1, seed_b)[0]
        t = torch.linspace(0, 1, steps)
        path = (slerp if spherical else lerp)(z0, z1, t)
        path[0], path[-1] = z0, z1
        labels = torch.full((steps,), label) if label is not None else self.default_labels(steps)
        return self.generate(path, labels)

    def class_grid(self, per_class: int = 10, seed: int = 0) -> Tensor:
        """K x per_class images, row k all of class k (Mirza & Osindero, Fig. 2)."""
        if not self.conditional:
            raise ValueError("class_grid needs a conditional GAN (num_classes > 0)")
        labels = torch.arange(self.config.num_classes).repeat_interleave(per_class)
        return self.generate(self.latent(len(labels), seed), labels)

    def eval_images(self, data: ImageData) -> Tensor:
        """The fixed evaluation noise through the EMA generator: the same latent points in every grid of a run."""
        side = int(math.isqrt(len(self.fixed_noise)))
        labels = torch.arange(side).repeat_interleave(side) if self.conditional else None
        return self.generate(self.fixed_noise, labels)

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        return self.sample(n, seed=0), self.default_labels(n)
