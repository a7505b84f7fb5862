"""CycleGAN, Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks".

Two generators G: A → B and F: B → A, and two discriminators D_B (real B vs G(a)) and D_A (real A vs F(b)):
    L_GAN(G, D_B) = E_b[(D_B(b) − 1)²] + E_a[D_B(G(a))²]                 least squares (Sec. 4, Mao et al. 2017)
    L_cyc(G, F)  = E_a[‖F(G(a)) − a‖₁] + E_b[‖G(F(b)) − b‖₁]              cycle consistency (Eq. 2)
    L_idt(G, F)  = E_b[‖G(b) − b‖₁] + E_a[‖F(a) − a‖₁]                    identity (Sec. 5.2, Taigman et al. 2017)
    L = L_GAN(G, D_B) + L_GAN(F, D_A) + λ_cyc L_cyc + λ_idt λ_cyc L_idt   (Eq. 3; λ_cyc = 10, λ_idt = 0.5)
The generators minimise E[(D(G(a)) − 1)²]; each discriminator minimises half its L_GAN (core/losses.py "lsgan"),
on fakes drawn from a history of the last 50 generated images (Shrivastava et al. 2017) rather than the newest
batch alone. Adam (β₁ = 0.5), learning rate constant for the first half of training, then linearly to 0
(`--lr-schedule linear`).

Networks, sized for 28x28 (any side divisible by 4 works: they are fully convolutional):
    generator (Johnson et al. 2016): c7s1-w, d2w, d4w (stride-2 convs), n residual blocks of 4w, u2w, uw (stride-2
        transposed convs), c7s1-C + tanh; reflection padding and instance norm + ReLU throughout.
    discriminator: a PatchGAN (Isola et al. 2017), conv4x4 w/2 → 2w/2 → 4w/1 → 1/1 with LeakyReLU(0.2) and instance
        norm after all but the first, a map of real/fake scores for overlapping patches (about 22x22 pixels here).
Departure from the paper: one training batch holds images of both domains (labels domain_a, domain_b) drawn
together from one dataset, and is split by label; the paper draws one image of each domain per step (batch 1).
"""
import random
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core import losses, metrics
from core.config import TrainConfig, option
from core.data import FASHION_CLASSES, Batch, ImageData
from core.metrics import Yardstick
from core.model import TrainableModel


@dataclass(frozen=True)
class CycleGANConfig:
    domain_a: int = option(7, "label of domain A in the dataset (Fashion-MNIST 7: sneaker; a folder pair: 0)")
    domain_b: int = option(9, "label of domain B (Fashion-MNIST 9: ankle boot; a folder pair: 1)")
    channels: int = option(1, "image channels")
    width: int = option(32, "channels of the first generator conv (and 2x that in the discriminator's first)")
    residual_blocks: int = option(6, "residual blocks in each generator (Zhu et al.: 6 at 128x128, 9 at 256x256)")
    cycle_weight: float = option(10.0, "λ_cyc")
    identity_weight: float = option(0.5, "λ_idt, relative to λ_cyc (0: no identity loss)")
    pool_size: int = option(50, "images kept in each discriminator's history buffer (0: none)")
    beta1: float = option(0.5, "Adam β₁")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
                                  nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                                  nn.InstanceNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet_generator(channels: int, width: int, blocks: int) -> nn.Sequential:
    norm_relu = lambda c: [nn.InstanceNorm2d(c), nn.ReLU(True)]
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7), *norm_relu(width),                      # c7s1-w
        nn.Conv2d(width, 2 * width, 3, 2, 1), *norm_relu(2 * width),                                  # d2w: S/2
        nn.Conv2d(2 * width, 4 * width, 3, 2, 1), *norm_relu(4 * width),                              # d4w: S/4
        *[ResidualBlock(4 * width) for _ in range(blocks)],
        nn.ConvTranspose2d(4 * width, 2 * width, 3, 2, 1, output_padding=1), *norm_relu(2 * width),   # u2w: S/2
        nn.ConvTranspose2d(2 * width, width, 3, 2, 1, output_padding=1), *norm_relu(width),           # uw: S
        nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh())                              # c7s1-C


def patch_discriminator(channels: int, width: int) -> nn.Sequential:
    w = 2 * width
    return nn.Sequential(
        nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w), nn.LeakyReLU(0.2, True),
        nn.Conv2d(2 * w, 4 * w, 4, 1, 1), nn.InstanceNorm2d(4 * w), nn.LeakyReLU(0.2, True),
        nn.Conv2d(4 * w, 1, 4, 1, 1))                                                   # (B, 1, h, w) patch scores


class ImagePool:
    """The history buffer (Shrivastava et al. 2017, Sec. 2.3): until full, return and store each new image; then
    with probability ½ return a stored image (replacing it by the new one), else the new image."""

    def __init__(self, size: int, rng: random.Random | None = None):
        self.size, self.images, self.rng = size, [], rng or random.Random(0)

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() < 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k])
                self.images[k] = image
            else:
                out.append(image)
        return torch.stack(out)


def l1(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).abs().mean()


def domain_name(label: int) -> str:
    """A domain's name: its Fashion-MNIST class, or its label (a folder pair's 0 and 1)."""
    return FASHION_CLASSES[label] if isinstance(label, int) and 0 <= label < len(FASHION_CLASSES) else str(label)


class CycleGAN(TrainableModel):
    """CycleGAN: unpaired translation between two image domains."""
    config_class = CycleGANConfig
    pipeline_tag = "image-to-image"
    card_description = """
A CycleGAN (Zhu et al. 2017) trained from scratch with genlab (`core/models/cyclegan.py`) to translate between two
unpaired image domains. Domain accuracy is the share of translated test images that genlab's Fashion-MNIST
classifier (`checkpoints/classifier`) assigns to the target class; the cycle error is the mean absolute difference
between a test image and its reconstruction F(G(a)) (or G(F(b))) in [0, 1] pixel units; FID compares translated
test images with real test images of the target domain on that classifier's features.
"""
    grid_columns = 8
    card_samples_caption = ("Rows: test images of A, G(A), F(G(A)); then test images of B, F(B), G(F(B)). "
                            "The evaluation images are the first 8 of each domain in the test set.")

    def __init__(self, config: CycleGANConfig = CycleGANConfig()):
        super().__init__()
        if config.domain_a == config.domain_b:
            raise ValueError("domain_a and domain_b must be different labels")
        self.config = c = config
        self.generator_ab = resnet_generator(c.channels, c.width, c.residual_blocks)    # G
        self.generator_ba = resnet_generator(c.channels, c.width, c.residual_blocks)    # F
        self.discriminator_a = patch_discriminator(c.channels, c.width)
        self.discriminator_b = patch_discriminator(c.channels, c.width)
        self.pool_a, self.pool_b = ImagePool(c.pool_size), ImagePool(c.pool_size)

    # ---------------------------------------------------------------------------------------------- training
    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, 0.999)
        generators = [*self.generator_ab.parameters(), *self.generator_ba.parameters()]
        discriminators = [*self.discriminator_a.parameters(), *self.discriminator_b.parameters()]
        self.generator_optimizer = torch.optim.Adam(generators, lr=cfg.lr, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(discriminators, lr=cfg.lr, betas=betas)
        return {"generators": self.generator_optimizer, "discriminators": self.discriminator_optimizer}

    def split(self, batch: Batch) -> tuple[Tensor, Tensor]:
        a, b = batch.labels == self.config.domain_a, batch.labels == self.config.domain_b
        if not bool((a | b).all()):
            raise ValueError(f"a CycleGAN batch holds labels other than domain_a={self.config.domain_a} and "
                             f"domain_b={self.config.domain_b}: train with --classes {self.config.domain_a},"
                             f"{self.config.domain_b}")
        return batch.images[a], batch.images[b]

    def training_subset(self, data: ImageData) -> ImageData:
        """A labelled dataset's rows of the two domains (Fashion-MNIST: sneakers and ankle boots by default)."""
        domains = {self.config.domain_a, self.config.domain_b}
        has_both = domains <= set(data.labels.unique().tolist())
        return data.subset(sorted(domains)) if has_both else data          # else check_data says why

    def check_data(self, data: ImageData) -> None:
        super().check_data(data)
        _, height, width = data.image_shape
        if min(height, width) < 16 or height % 4 or width % 4:
            raise ValueError(f"CycleGAN needs images of at least 16x16 with sides divisible by 4 (the PatchGAN and "
                             f"the two stride-2 stages), got {height}x{width}: pass --pad-to 16 (or larger)")
        domains, present = {self.config.domain_a, self.config.domain_b}, set(data.labels.unique().tolist())
        if present != domains:
            raise ValueError(f"CycleGAN learns between the two domains {sorted(domains)} (--domain-a, --domain-b: "
                             f"labels of {list(data.classes)}) but the data holds labels {sorted(present)}: pick two "
                             "of its labels (a folder pair: --domain-a 0 --domain-b 1)")

    def generator_losses(self, real_a: Tensor, real_b: Tensor) -> dict[str, Tensor]:
        """Eq. 3 for the generators: adversarial (least squares), cycle and identity terms."""
        c = self.config
        fake_b, fake_a = self.generator_ab(real_a), self.generator_ba(real_b)
        adversarial = 2 * (losses.generator_loss("lsgan", self.discriminator_b, real_b, fake_b)    # ×2: the paper's
                           + losses.generator_loss("lsgan", self.discriminator_a, real_a, fake_a))  # G term has no ½
        cycle = l1(self.generator_ba(fake_b), real_a) + l1(self.generator_ab(fake_a), real_b)
        identity = (l1(self.generator_ab(real_b), real_b) + l1(self.generator_ba(real_a), real_a)
                    if c.identity_weight > 0 else torch.zeros((), device=real_a.device))
        total = adversarial + c.cycle_weight * cycle + c.identity_weight * c.cycle_weight * identity
        return {"total": total, "adversarial": adversarial, "cycle": cycle, "identity": identity,
                "fake_a": fake_a, "fake_b": fake_b}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        real_a, real_b = self.split(batch)
        if len(real_a) == 0 or len(real_b) == 0:      # a batch drawn from one domain only: nothing to pair
            return {}
        for d in (self.discriminator_a, self.discriminator_b):
            d.requires_grad_(False)                   # G's step must not accumulate gradients into D
        parts = self.generator_losses(real_a, real_b)
        g_loss = self.optimizer_step(self.generator_optimizer, parts["total"])
        for d in (self.discriminator_a, self.discriminator_b):
            d.requires_grad_(True)
        fake_a, fake_b = self.pool_a.query(parts["fake_a"]), self.pool_b.query(parts["fake_b"])
        d_loss = (losses.discriminator_loss("lsgan", self.discriminator_a, real_a, fake_a)
                  + losses.discriminator_loss("lsgan", self.discriminator_b, real_b, fake_b))
        d_loss = self.optimizer_step(self.discriminator_optimizer, d_loss)
        return {"loss/generators": g_loss, "loss/discriminators": d_loss, "loss/cycle": parts["cycle"].detach(),
                "loss/identity": parts["identity"].detach(), "loss/adversarial": parts["adversarial"].detach()}

    # ---------------------------------------------------------------------------------------- translation API
    @torch.no_grad()
    def translate(self, images: Tensor, direction: str = "a2b", batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) or (C, H, W) in [-1, 1], H and W divisible by 4 -> (translation, cycle
        reconstruction): for "a2b", (G(x), F(G(x))); for "b2a", (F(x), G(F(x)))."""
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
        single = images.ndim == 3
        images = images[None] if single else images
        if images.ndim != 4 or images.shape[1] != self.config.channels or images.shape[2] % 4 or images.shape[3] % 4:
            raise ValueError(f"images must be (B, {self.config.channels}, H, W) with H and W divisible by 4, "
                             f"got {tuple(images.shape)}")
        forward, backward = ((self.generator_ab, self.generator_ba) if direction == "a2b"
                             else (self.generator_ba, self.generator_ab))
        device = next(self.parameters()).device
        out, back = [], []
        for chunk in images.split(batch_size):
            translated = forward(chunk.to(device))
            out.append(translated.cpu())
            back.append(backward(translated).cpu())
        out, back = torch.cat(out), torch.cat(back)
        return (out[0], back[0]) if single else (out, back)

    # -------------------------------------------------------------------------------------------- evaluation
    def domains(self, data: ImageData) -> tuple[Tensor, Tensor]:
        images = data.batch(slice(None))
        return (images.images[images.labels == self.config.domain_a],
                images.images[images.labels == self.config.domain_b])

    def eval_images(self, data: ImageData) -> Tensor:
        a, b = (x[:8] for x in self.domains(data))
        rows = [a, *self.translate(a, "a2b"), b, *self.translate(b, "b2a")]
        return torch.cat(rows)

    def evaluate(self, data: ImageData, yardstick: Yardstick | None) -> dict[str, float]:
        """Both directions: domain accuracy, cycle L1 error ([0, 1] pixel units) and FID against the target domain.
        Classifier-based figures only on Fashion-MNIST (the metric classifier knows nothing else)."""
        a, b = self.domains(data)
        results = {}
        classifier = yardstick.network if yardstick is not None and data.name == "fashion-mnist" else None
        for name, source, target, label, direction in (("a2b", a, b, self.config.domain_b, "a2b"),
                                                       ("b2a", b, a, self.config.domain_a, "b2a")):
            translated, reconstructed = self.translate(source, direction)
            results[f"{name}_cycle_l1"] = float((reconstructed - source).abs().mean() / 2)
            if classifier is not None:
                feats, logits = metrics.features(classifier, translated)
                real_feats, _ = metrics.features(classifier, target)
                results[f"{name}_domain_accuracy"] = float((logits.argmax(1) == label).float().mean())
                results[f"{name}_fid"] = metrics.frechet_distance(*metrics.gaussian_stats(real_feats),
                                                                  *metrics.gaussian_stats(feats))
        return results
