"""Pix2Pix, Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks", scaled to 28x28.

A generator G maps an input image x (here an edge map, a masked image or a user's A image) to an output G(x, z),
where the noise z is dropout (Sec. 2.1: "we provide noise only in the form of dropout ... at both training and test
time"). A discriminator D sees the input beside an image, real y or generated, and scores each patch:
    L_cGAN(G, D) = E_{x,y}[log D(x, y)] + E_{x,z}[log(1 − D(x, G(x, z)))]                 (Eq. 1)
    L_L1(G)      = E_{x,y,z}[‖y − G(x, z)‖₁]                                              (Eq. 3)
    G* = arg min_G max_D L_cGAN(G, D) + λ L_L1(G),   λ = 100                               (Eq. 4)
D minimises −L_cGAN / 2 (Sec. 3.3: the objective is halved for D), with the logistic loss on each patch's logit
(core/losses.py "bce"); G minimises −log D(x, G(x, z)) + λ L_L1 (the non-saturating form the paper trains with).
Adam, learning rate 2e-4, β₁ = 0.5, for both. With `adversarial_weight` = 0 it is the paper's "L1 only" baseline:
the same U-Net, trained by L_L1 alone (the blurry, average answer the adversarial term is there to sharpen).

Networks (Sec. 3.2 and the appendix), with Ck a 4x4 convolution of k channels and stride 2, batch norm, activation:
    generator, a U-Net: encoder C(w)-C(2w)-C(4w)-C(4w)-... (LeakyReLU 0.2; no norm on the first or the innermost),
        down to 1x1; decoder the mirror image with transposed convolutions (ReLU), each stage taking the encoder stage
        of the same size beside it (the skip connections), dropout 0.5 in the three innermost decoder stages, tanh.
    discriminator, a PatchGAN: C(2w) → 4x4 conv, stride 1, 4w, batch norm → 4x4 conv to one logit per patch, on the
        input and the image concatenated along channels. Each logit sees a 16x16 patch.
Departures at 28x28 (the paper works at 256x256): the image is padded with black to the next power of two (32) for
the U-Net and cropped back, so it has 5 stages instead of 8, and channels stop growing at 4w (w = 32) rather than
at 512; the PatchGAN's patch is 16 of 28 pixels (the paper's 70 of 256: a garment has few pixels, so a patch covers a
larger share); batch norm uses running statistics at test time (the paper normalises a test image by its own
statistics, batch size 1), so an image's output does not depend on what else is in its batch.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import losses, metrics
from core.config import TrainConfig, option
from core.data import PAIRED_TASKS, Batch, ImageData, paired_inputs, pad_images
from core.metrics import Yardstick
from core.model import TrainableModel


@dataclass(frozen=True)
class Pix2PixConfig:
    task: str = option("edges", "what the input is: edges (an edge map of the target), inpaint (the target with a "
                       "grey square), pairs (the A images of a paired folder)", choices=PAIRED_TASKS)
    channels: int = option(1, "image channels (input and output)")
    image_size: int = option(28, "image side")
    width: int = option(32, "channels of the first U-Net stage (stages double it up to 4x)")
    l1_weight: float = option(100.0, "λ, the weight of the L1 term")
    adversarial_weight: float = option(1.0, "weight of the cGAN term (0: the L1-only baseline, D untrained)")
    dropout: float = option(0.5, "dropout of the three innermost decoder stages, at training and sampling")
    beta1: float = option(0.5, "Adam β₁")


class AlwaysDropout(nn.Module):
    """Dropout at training and at test time: the generator's noise (Isola et al., Sec. 2.1); `enabled` = False
    turns it off (the deterministic, mean-field output)."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.enabled = p, True

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=True) if self.p > 0 and self.enabled else x


class UNetGenerator(nn.Module):
    """The encoder-decoder with skips, on images padded to `size` = 2^stages; see the module docstring."""

    def __init__(self, channels: int, width: int, size: int, dropout: float):
        super().__init__()
        stages = int(math.log2(size))
        widths = [width * min(2 ** i, 4) for i in range(stages)]              # w, 2w, 4w, 4w, ...
        self.size = size
        self.down = nn.ModuleList()
        for i, c_out in enumerate(widths):
            c_in = channels if i == 0 else widths[i - 1]
            norm = 0 < i < stages - 1
            self.down.append(nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm),
                                           nn.BatchNorm2d(c_out) if norm else nn.Identity(), nn.LeakyReLU(0.2)))
        self.up = nn.ModuleList()
        for i in reversed(range(stages)):                                     # from the 1x1 bottleneck out
            c_in = widths[i] * (1 if i == stages - 1 else 2)                  # skip concatenated, but not at 1x1
            if i == 0:
                self.up.append(nn.Sequential(nn.ConvTranspose2d(c_in, channels, 4, 2, 1), nn.Tanh()))
            else:
                self.up.append(nn.Sequential(nn.ConvTranspose2d(c_in, widths[i - 1], 4, 2, 1, bias=False),
                                             nn.BatchNorm2d(widths[i - 1]),
                                             AlwaysDropout(dropout if i >= stages - 3 else 0.0), nn.ReLU()))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_images(x, self.size)
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        skips.pop()                                                           # the bottleneck has no partner
        for stage in self.up:
            x = stage(x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)
        top, left = (self.size - h) // 2, (self.size - w) // 2
        return x[..., top:top + h, left:left + w]


def patch_discriminator(channels: int, width: int) -> nn.Sequential:
    """D(x, y) on the 2C-channel concatenation: one logit per 16x16 patch (a 12x12 map at 28x28)."""
    return nn.Sequential(nn.Conv2d(2 * channels, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(2 * width, 4 * width, 4, 1, 1, bias=False), nn.BatchNorm2d(4 * width),
                         nn.LeakyReLU(0.2), nn.Conv2d(4 * width, 1, 4, 1, 1))


class Pix2Pix(TrainableModel):
    """Pix2Pix: paired image-to-image translation (an input image -> its target)."""
    config_class = Pix2PixConfig
    pipeline_tag = "image-to-image"
    channels_last = True          # trains 1.11x fp32, 1.09x bf16 faster than NCHW (bench/channels_last.py)
    card_description = """
A Pix2Pix model (Isola et al. 2017) trained from scratch with genlab (`core/models/pix2pix.py`): a U-Net generator
and a PatchGAN discriminator, trained with the conditional GAN loss plus λ = 100 times the L1 distance to the target.
It maps each test image's input (for `edges`: the image's Sobel edge map) to an image; the figures compare the
outputs with the test targets pixel by pixel (L1 and PSNR in [0, 1] pixel units, SSIM), and measure them with genlab's
Fashion-MNIST classifier (`checkpoints/classifier`): its accuracy on the outputs with the source image's label, and
FID, precision, recall and off-manifold share against the test set.
"""
    grid_columns = 8
    card_samples_caption = "Rows: the inputs of the first 8 test images, the outputs, the targets."

    def __init__(self, config: Pix2PixConfig = Pix2PixConfig()):
        super().__init__()
        if config.task not in PAIRED_TASKS:
            raise ValueError(f"task must be one of {PAIRED_TASKS}, got {config.task!r}")
        self.config = c = config
        self.generator = UNetGenerator(c.channels, c.width, 2 ** math.ceil(math.log2(c.image_size)), c.dropout)
        self.discriminator = patch_discriminator(c.channels, c.width)

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, 0.999)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=betas)
        return {"generator": self.generator_optimizer, "discriminator": self.discriminator_optimizer}

    def check_data(self, data: ImageData) -> None:
        super().check_data(data)
        if (self.config.task == "pairs") != (data.inputs is not None):
            raise ValueError("--task pairs goes with --dataset paired-folder, and a paired folder with --task pairs"
                             f" (got --task {self.config.task} on {data.name or 'this data'})")

    def critic(self, inputs: Tensor):
        """D(x, ·) for the inputs x: the discriminator on (x, y) concatenated, as the GAN losses call it."""
        return lambda images: self.discriminator(torch.cat([inputs, images], dim=1))

    def losses(self, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Eq. 4 for the generator: the adversarial term (non-saturating) and the L1 term, and G(x, z)."""
        c = self.config
        outputs = self.generator(inputs)
        l1 = (outputs.float() - targets).abs().mean()
        adversarial = (losses.generator_loss("bce", self.critic(inputs), targets, outputs)
                       if c.adversarial_weight > 0 else torch.zeros((), device=inputs.device))
        return {"total": c.adversarial_weight * adversarial + c.l1_weight * l1, "adversarial": adversarial,
                "l1": l1, "outputs": outputs}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        inputs, targets = paired_inputs(self.config.task, batch), batch.images
        self.discriminator.requires_grad_(False)      # G's step must not accumulate gradients into D
        parts = self.losses(inputs, targets)
        g_loss = self.optimizer_step(self.generator_optimizer, parts["total"])
        self.discriminator.requires_grad_(True)
        logged = {"loss/generator": g_loss, "loss/l1": parts["l1"].detach(),
                  "loss/adversarial": parts["adversarial"].detach()}
        if self.config.adversarial_weight > 0:
            d_loss = losses.discriminator_loss("bce", self.critic(inputs), targets, parts["outputs"]) / 2
            logged["loss/discriminator"] = self.optimizer_step(self.discriminator_optimizer, d_loss)
        return logged

    # ------------------------------------------------------------------------------------------ translation API
    @torch.no_grad()
    def translate(self, inputs: Tensor, seed: int | None = 0, batch_size: int = 500, dropout: bool = True) -> Tensor:
        """Inputs (B, C, H, W) or (C, H, W) in [-1, 1] -> outputs G(x, z) of the same shape; the dropout noise z is
        drawn from `seed` (None: the global generator), so a seed gives the same outputs again. `dropout` = False
        samples without the noise (every dropout layer passes all units, as a plain network at test time)."""
        single = inputs.ndim == 3
        inputs = inputs[None] if single else inputs
        if inputs.ndim != 4 or inputs.shape[1] != self.config.channels or inputs.shape[-1] > self.generator.size \
                or inputs.shape[-2] > self.generator.size:
            raise ValueError(f"inputs must be (B, {self.config.channels}, H, W) with H, W <= {self.generator.size}, "
                             f"got {tuple(inputs.shape)}")
        was_training, device = self.training, next(self.parameters()).device
        self.eval()
        noise = [m for m in self.generator.modules() if isinstance(m, AlwaysDropout)]
        for m in noise:
            m.enabled = dropout
        state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            with self.autocast():
                out = torch.cat([self.generator(chunk.to(device)).float().cpu() for chunk in inputs.split(batch_size)])
        finally:
            if seed is not None:
                torch.random.set_rng_state(state)
            for m in noise:
                m.enabled = True
            self.train(was_training)
        return out[0] if single else out

    def test_inputs(self, data: ImageData) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs, targets, labels) of every image of `data`; the inpainting squares are seeded (seed 0)."""
        batch = data.batch(slice(None))
        return paired_inputs(self.config.task, batch, torch.Generator().manual_seed(0)), batch.images, batch.labels

    # -------------------------------------------------------------------------------------------- evaluation
    def eval_images(self, data: ImageData) -> Tensor:
        inputs, targets, _ = (x[:8] for x in self.test_inputs(data.select(torch.arange(min(8, len(data))))))
        return torch.cat([inputs, self.translate(inputs), targets])

    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None, samples=None) -> dict[str, float]:
        """Pixel figures of the outputs against the targets (L1, PSNR, SSIM), and on Fashion-MNIST the yardstick's
        figures of the outputs against `data`, with the source images' labels as the requested classes (so
        `conditional_accuracy` is the classifier's accuracy on the outputs)."""
        inputs, targets, labels = self.test_inputs(data)
        outputs = self.translate(inputs)
        results = metrics.paired_figures(outputs, targets)
        if yardstick is not None and data.name == "fashion-mnist" and yardstick.fits(data.image_shape):
            results.update(yardstick.score(outputs, labels, data=data))
        return results
