"""StyleGAN, scaled down: Karras et al. 2019 ("A Style-Based Generator Architecture for GANs") with the StyleGAN2
generator and discriminator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Generator. A mapping network f: z ↦ w (z ~ N(0, I) normalised to unit mean square, `mapping_layers` fully connected
layers with leaky ReLU, learning rate × 0.01) and a synthesis network g that starts from a learned constant 4x4 input
and doubles the resolution up to 32x32. Every 3x3 convolution is modulated by a style s = A(w) (A a learned affine
map, one per layer) and demodulated (StyleGAN2, Eq. 1 and 3):
    w'_ijk = s_i · w_ijk,        w''_ijk = w'_ijk / sqrt(Σ_{i,k} w'_ijk² + ε)
computed as a plain convolution of the input scaled by s, with each output channel then scaled by
1 / sqrt(Σ_{i,k} (s_i w_ijk)² + ε) (the equivalent non-fused form). After each convolution, per-pixel Gaussian noise
with a learned strength per layer is added (the stochastic detail: hair, texture), then a bias and leaky ReLU.
Each resolution adds its toRGB output (a modulated 1x1 convolution without demodulation) to the upsampled image of the
previous one (the "skip" generator, StyleGAN2 Fig. 7b). The layers read w_0 ... w_{L−1} (one per convolution; a
toRGB reads its block's last): with style mixing (p = 0.9 during training), the layers from a random crossover on read
the w of a second z, so neighbouring layers cannot rely on sharing one style (StyleGAN, Sec. 3.1).

Discriminator. The StyleGAN2 residual network: fromRGB at 32x32, then per resolution two 3x3 convolutions and a 2x
average-pool downsampling, with a 1x1 skip, summed and scaled by 1/√2, down to 4x4; the minibatch standard deviation
(one feature map, groups of 4, Karras et al. 2018), a 3x3 convolution and two fully connected layers to one logit.

Equalized learning rate (Karras et al. 2018, Sec. 4.1): every weight is drawn from N(0, 1) and multiplied at run time
by lr_mul / √fan_in (biases by lr_mul), so Adam's steps are alike for every layer. Activations are leaky ReLU(0.2)
times √2 (keeping unit variance).

Losses (StyleGAN2 Appendix B): the non-saturating logistic loss (core/losses.py "bce") for both networks, and the R1
penalty (Mescheder et al. 2018) on real images, applied lazily every `r1_interval` steps with the weight scaled up
by the interval:  L_R1 = γ/2 · E_x[‖∇_x D(x)‖²] · interval.  Adam with β = (0, 0.99); the generator's exponential
moving average is what samples. The truncation trick (StyleGAN, Sec. 3.3): w' = w̄ + ψ (w − w̄), w̄ the running mean
of the mapping network's outputs during training (decay 0.995).

Departures: synthesis at the next power of two, 32x32 for Fashion-MNIST (the 28x28 images are padded with black to 32
for the discriminator, and the generator's 32x32 output is centre-cropped to 28; 8x8 digits stay 8x8), channels 128 at 4x4, 64 at 8x8, 32 at 16x16, 16 at 32x32 and a 128-d z and w
(the paper: 512 everywhere), 4 mapping layers (8), upsampling by bilinear interpolation before the convolution
(StyleGAN2 uses a transposed convolution with a [1, 3, 3, 1] FIR filter), no path-length regularisation and no lazy
regularisation's Adam correction.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import losses
from core.config import TrainConfig, option
from core.data import Batch, ImageData, pad_images
from core.model import TrainableModel
from core.nn import EMA, slerp

MAX_SIZE = 64
PSI_RANGE = (-1.0, 1.5)        # truncation ψ that sampling accepts (1: none, 0: every sample is w̄'s image)
NOISE_MODES = ("random", "none")


@dataclass(frozen=True)
class StyleGANConfig:
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side (synthesised at the next power of two, then centre-cropped)")
    width: int = option(16, "channels at 32x32, doubled at each halving of the resolution (128 at 4x4)")
    latent_dim: int = option(128, "size of z and w")
    mapping_layers: int = option(4, "fully connected layers of the mapping network (paper: 8)")
    mapping_lr_mul: float = option(0.01, "learning-rate multiplier of the mapping network")
    style_mixing: float = option(0.9, "probability that a training batch mixes two styles")
    r1_gamma: float = option(0.1, "γ of the R1 penalty on real images")
    r1_interval: int = option(16, "apply R1 every this many steps (lazy regularisation)")
    w_avg_decay: float = option(0.995, "decay of the running mean w̄ used by the truncation trick")
    ema_decay: float = option(0.999, "decay of the generator's exponential moving average")


def leaky(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class EqualLinear(nn.Module):
    """y = x (W · lr_mul / √in)ᵀ + b · lr_mul, with W ~ N(0, 1 / lr_mul²) so the initial scale is 1/√in."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), bias_init / lr_mul))
        self.scale, self.lr_mul = lr_mul / math.sqrt(c_in), lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv(nn.Module):
    """A convolution with equalized learning rate (weights × 1/√fan_in at run time), padding k // 2."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1 / math.sqrt(c_in * kernel * kernel)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class MappingNetwork(nn.Module):
    """z ↦ w, and w̄ (a buffer: the running mean of w during training)."""

    def __init__(self, dim: int, layers: int, lr_mul: float):
        super().__init__()
        self.layers = nn.ModuleList(EqualLinear(dim, dim, lr_mul=lr_mul) for _ in range(layers))
        self.register_buffer("w_avg", torch.zeros(dim))

    def forward(self, z: Tensor) -> Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()       # normalise z (pixel norm)
        for layer in self.layers:
            x = leaky(layer(x))
        return x


class ModulatedConv(nn.Module):
    """A style-modulated convolution (module docstring), then noise, bias and activation unless `to_rgb`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int, demodulate: bool = True, to_rgb: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)               # A: styles start at 1
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale, self.demodulate, self.to_rgb = 1 / math.sqrt(c_in * kernel * kernel), demodulate, to_rgb
        self.noise_strength = nn.Parameter(torch.zeros(())) if not to_rgb else None

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        style = self.affine(w)                                               # s: (B, C_in)
        weight = self.weight * self.scale
        x = F.conv2d(x * style[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=weight.shape[-1] // 2)
        if self.demodulate:                                                  # 1 / sqrt(Σ_{i,k} (s_i w_ijk)² + ε)
            d = (style.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8).rsqrt()       # (B, C_out)
            x = x * d[:, :, None, None].to(x.dtype)
        if self.to_rgb:
            return x + self.bias[None, :, None, None]
        if noise is not None:
            x = x + self.noise_strength * noise
        return leaky(x + self.bias[None, :, None, None])


def synthesis_size(image_size: int) -> int:
    """The side the networks work at: the next power of two, at least 8 (28 -> 32)."""
    return max(8, 2 ** math.ceil(math.log2(image_size)))


def style_layers(image_size: int) -> int:
    """How many w's the synthesis network reads: one conv at 4x4, two at each larger resolution (7 at 32x32)."""
    return 2 * int(math.log2(synthesis_size(image_size) // 4)) + 1


def widths(width: int, size: int) -> dict[int, int]:
    """Channels per resolution 4, 8, ..., size: `width` at 32x32, doubling at each halving (halving above 32)."""
    return {4 * 2 ** i: max(1, width * 32 // (4 * 2 ** i)) for i in range(int(math.log2(size // 4)) + 1)}


class SynthesisNetwork(nn.Module):
    """Constant 4x4 → [upsample, modconv, modconv, toRGB] per resolution → a size x size image (skip architecture)."""

    def __init__(self, w_dim: int, channels: int, width: int, size: int):
        super().__init__()
        c = widths(width, size)
        self.const = nn.Parameter(torch.randn(c[4], 4, 4))
        self.resolutions = list(c)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for r in self.resolutions:
            c_in = c[r // 2] if r > 4 else c[4]
            self.convs.append(nn.ModuleList([ModulatedConv(c_in, c[r], 3, w_dim)] if r == 4 else
                                            [ModulatedConv(c_in, c[r], 3, w_dim), ModulatedConv(c[r], c[r], 3, w_dim)]))
            self.to_rgbs.append(ModulatedConv(c[r], channels, 1, w_dim, demodulate=False, to_rgb=True))
        self.num_ws = sum(len(c) for c in self.convs)                        # one w per conv; toRGB reads its block's last

    def forward(self, ws: Tensor, noise: str = "random", generator: torch.Generator | None = None) -> Tensor:
        """ws: (B, num_ws, w_dim). noise: "random" (fresh draws, from `generator` when given) or "none"."""
        x = self.const[None].expand(len(ws), -1, -1, -1).to(ws.dtype)
        image, k = None, 0
        for r, convs, to_rgb in zip(self.resolutions, self.convs, self.to_rgbs):
            if r > 4:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            for conv in convs:
                draw = None
                if noise == "random":
                    draw = torch.randn(len(ws), 1, r, r, generator=generator, device="cpu" if generator else ws.device)
                    draw = draw.to(ws.device, x.dtype)
                x = conv(x, ws[:, k], draw)
                k += 1
            rgb = to_rgb(x, ws[:, k - 1])
            image = rgb if image is None else F.interpolate(image, scale_factor=2, mode="bilinear",
                                                            align_corners=False) + rgb
        return image


class Generator(nn.Module):
    def __init__(self, c: StyleGANConfig):
        super().__init__()
        self.mapping = MappingNetwork(c.latent_dim, c.mapping_layers, c.mapping_lr_mul)
        self.size = synthesis_size(c.image_size)
        self.synthesis = SynthesisNetwork(c.latent_dim, c.channels, c.width, self.size)
        self.image_size = c.image_size

    def crop(self, images: Tensor) -> Tensor:
        top = (self.size - self.image_size) // 2
        return images[..., top:top + self.image_size, top:top + self.image_size]

    def forward(self, ws: Tensor, noise: str = "random", generator: torch.Generator | None = None) -> Tensor:
        """Images in (about) [-1, 1] from per-layer styles ws (B, num_ws, w_dim); no tanh, as in StyleGAN."""
        return self.crop(self.synthesis(ws, noise, generator))


class Discriminator(nn.Module):
    """The residual discriminator of StyleGAN2 on size x size (the module docstring), images padded with black."""

    def __init__(self, channels: int, width: int, size: int):
        super().__init__()
        c = widths(width, size)
        self.size = size
        self.from_rgb = EqualConv(channels, c[size], 1)
        self.blocks = nn.ModuleList()
        for r in reversed(list(c)[1:]):                                      # 32, 16, 8: each halves
            self.blocks.append(nn.ModuleDict({"conv0": EqualConv(c[r], c[r], 3), "conv1": EqualConv(c[r], c[r // 2], 3),
                                              "skip": EqualConv(c[r], c[r // 2], 1, bias=False)}))
        self.final_conv = EqualConv(c[4] + 1, c[4], 3)
        self.fc = EqualLinear(c[4] * 16, c[4])
        self.out = EqualLinear(c[4], 1)

    def forward(self, images: Tensor) -> Tensor:
        x = leaky(self.from_rgb(pad_images(images, self.size)))
        for block in self.blocks:
            skip = F.avg_pool2d(block["skip"](x), 2)
            x = F.avg_pool2d(leaky(block["conv1"](leaky(block["conv0"](x)))), 2)
            x = (x + skip) / math.sqrt(2)
        x = torch.cat([x, minibatch_stddev(x)], dim=1)
        x = leaky(self.final_conv(x))
        return self.out(leaky(self.fc(x.flatten(1)))).squeeze(1)


def minibatch_stddev(x: Tensor, group: int = 4) -> Tensor:
    """One feature map: the standard deviation of each feature over groups of `group` images, averaged over features
    and pixels, for every image of the group (Karras et al. 2018, Sec. 3)."""
    g = min(group, len(x)) if len(x) % min(group, len(x)) == 0 else 1
    b, c, h, w = x.shape
    y = x.float().reshape(g, b // g, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))    # (B/g,)
    return y.repeat(g)[:, None, None, None].expand(b, 1, h, w).to(x.dtype)


class StyleGAN(TrainableModel):
    """StyleGAN2, scaled to 28x28 grey images."""
    config_class = StyleGANConfig
    pipeline_tag = "unconditional-image-generation"
    channels_last = True          # trains 1.23x fp32, 1.40x bf16 faster than NCHW (bench/channels_last.py)
    card_description = """
A StyleGAN (Karras et al. 2019, with the StyleGAN2 generator and discriminator of Karras et al. 2020) trained from
scratch with genlab (`core/models/stylegan.py`): a mapping network z -> w, a synthesis network from a learned constant
with modulated and demodulated convolutions and per-pixel noise, style mixing, lazy R1, an exponential moving average
of the generator and the truncation trick. Figures: 10k samples (ψ = 1, seed 0) against the Fashion-MNIST test set on
genlab's classifier's features (core.metrics).
"""
    card_samples_caption = "64 samples of the generator's moving average from fixed noise (ψ = 1)."

    def __init__(self, config: StyleGANConfig = StyleGANConfig()):
        super().__init__()
        if not 1 <= config.image_size <= MAX_SIZE:
            raise ValueError(f"image_size must be from 1 to {MAX_SIZE}, got {config.image_size}")
        self.config = c = config
        self.generator = Generator(c)
        self.discriminator = Discriminator(c.channels, c.width, self.generator.size)
        self.ema = EMA(self.generator, c.ema_decay)
        self.register_buffer("fixed_noise", torch.randn(64, c.latent_dim, generator=torch.Generator().manual_seed(0)))

    @property
    def num_ws(self) -> int:
        return self.generator.synthesis.num_ws          # = style_layers(image_size)

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        betas = (0.0, 0.99)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=betas, eps=1e-8)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=betas,
                                                        eps=1e-8)
        return {"generator": self.generator_optimizer, "discriminator": self.discriminator_optimizer}

    def training_ws(self, n: int, device) -> Tensor:
        """Per-layer styles for a training batch: w of one z for every layer, or, with probability `style_mixing`,
        w(z₁) up to a random crossover layer and w(z₂) from it on. Updates w̄."""
        mapping = self.generator.mapping
        w = mapping(torch.randn(n, self.config.latent_dim, device=device))
        with torch.no_grad():
            mapping.w_avg.lerp_(w.detach().float().mean(0), 1 - self.config.w_avg_decay)
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if torch.rand(()) < self.config.style_mixing:
            crossover = int(torch.randint(1, self.num_ws, ()))
            ws[:, crossover:] = mapping(torch.randn(n, self.config.latent_dim, device=device))[:, None]
        return ws

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        real, c = batch.images, self.config
        fake = self.generator(self.training_ws(len(real), real.device))
        d_loss = losses.discriminator_loss("bce", self.discriminator, real, fake)
        logs = {"loss/discriminator": self.optimizer_step(self.discriminator_optimizer, d_loss)}
        if c.r1_gamma > 0 and step % c.r1_interval == 0:                     # lazy R1: its own D step
            r1 = losses.zero_centered_penalty(self.discriminator, real)
            logs["loss/r1"] = self.optimizer_step(self.discriminator_optimizer, c.r1_gamma / 2 * r1 * c.r1_interval)
        self.discriminator.requires_grad_(False)
        g_loss = losses.generator_loss("bce", self.discriminator, real, fake)
        logs["loss/generator"] = self.optimizer_step(self.generator_optimizer, g_loss)
        self.discriminator.requires_grad_(True)
        self.ema.update(self.generator)
        return logs

    # ------------------------------------------------------------------------------------------------ sampling
    def latent(self, n: int, seed: int) -> Tensor:
        return torch.randn(n, self.config.latent_dim, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def mapped(self, z: Tensor, psi: float = 1.0) -> Tensor:
        """w of each z through the EMA mapping network, truncated: w̄ + ψ (w − w̄). (B, w_dim)."""
        mapping = self.ema.average.mapping
        w = mapping(z.to(mapping.w_avg.device))
        return mapping.w_avg + psi * (w - mapping.w_avg)

    @torch.no_grad()
    def synthesize(self, w: Tensor, noise: str = "random", noise_seed: int = 0, batch_size: int = 500) -> Tensor:
        """Images from styles: w (B, w_dim), the same for every layer, or per-layer ws (B, num_ws, w_dim). The
        noise inputs are drawn from `noise_seed` ("random") or left out ("none")."""
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        ws = w[:, None].expand(-1, self.num_ws, -1) if w.ndim == 2 else w
        generator = torch.Generator().manual_seed(noise_seed)
        with self.autocast():
            return torch.cat([self.ema(chunk, noise, generator).float().cpu() for chunk in ws.split(batch_size)])

    def noise_variants(self, seed: int, draws: int = 8, psi: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """What the noise inputs control (StyleGAN, Fig. 4): one w (from `seed`) with `draws` noise draws, the
        image without noise, and the per-pixel standard deviation over the draws (scaled to [-1, 1] by its max)."""
        w = self.mapped(self.latent(1, seed), psi).expand(draws, -1)
        variants = torch.cat([self.synthesize(w[k:k + 1], "random", seed * 1000 + k) for k in range(draws)])
        spread = variants.std(dim=0, keepdim=True)
        spread = spread / spread.max().clamp(min=1e-8) * 2 - 1
        return variants.clamp(-1, 1), self.synthesize(w[:1], "none").clamp(-1, 1), spread

    def sample(self, n: int, seed: int = 0, psi: float = 1.0, noise: str = "random") -> Tensor:
        """n images in [-1, 1] (clamped) from z(seed), truncation ψ; the noise inputs drawn from the same seed."""
        return self.synthesize(self.mapped(self.latent(n, seed), psi), noise, seed).clamp(-1, 1)

    def style_mix(self, seeds_a: list[int], seeds_b: list[int], crossover: int, psi: float = 1.0) -> Tensor:
        """The paper's Fig. 3 grid, (1 + len(a)) x (1 + len(b)) images: row 0 the B sources (after a blank), column 0
        the A sources; cell (i, j) takes the layers before `crossover` (coarse: pose, shape) from A_i and the rest
        (fine: texture, shading) from B_j."""
        if not 1 <= crossover < self.num_ws:
            raise ValueError(f"crossover must be from 1 to {self.num_ws - 1}, got {crossover}")
        w_a = self.mapped(torch.cat([self.latent(1, s) for s in seeds_a]), psi)
        w_b = self.mapped(torch.cat([self.latent(1, s) for s in seeds_b]), psi)
        mixed = w_a[:, None, None].repeat(1, len(seeds_b), self.num_ws, 1)            # (A, B, L, D)
        mixed[:, :, crossover:] = w_b[None, :, None]
        a, b = self.synthesize(w_a), self.synthesize(w_b)
        cells = self.synthesize(mixed.flatten(0, 1))
        blank = -torch.ones_like(a[:1])
        rows = [torch.cat([blank, b])]
        for i in range(len(seeds_a)):
            rows.append(torch.cat([a[i:i + 1], cells[i * len(seeds_b):(i + 1) * len(seeds_b)]]))
        return torch.cat(rows).clamp(-1, 1)

    def interpolate(self, seed_a: int, seed_b: int, steps: int = 8, space: str = "w", psi: float = 1.0) -> Tensor:
        """Images along the path between two seeds: a straight line in W, or a slerp in Z (the paths of the paper's
        perceptual path lengths, Sec. 4.2); the noise inputs fixed."""
        if space not in ("w", "z"):
            raise ValueError(f"space must be 'w' or 'z', got {space!r}")
        z = torch.cat([self.latent(1, seed_a), self.latent(1, seed_b)])
        t = torch.linspace(0, 1, steps)[:, None]
        if space == "w":
            w = self.mapped(z, psi)
            path = w[0] + t * (w[1] - w[0])
        else:
            path = self.mapped(slerp(z[0], z[1], t[:, 0]), psi)
        return self.synthesize(path, "random", seed_a).clamp(-1, 1)

    def eval_images(self, data: ImageData) -> Tensor:
        return self.synthesize(self.mapped(self.fixed_noise), "random", 0).clamp(-1, 1)

    def evaluation_samples(self, n: int) -> tuple[Tensor, None]:
        return self.sample(n, seed=0), None
