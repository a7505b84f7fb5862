"""PixelCNN over 8-bit pixels: exact likelihood, samples, completions (van den Oord et al. 2016a Sec. 3.5; the gated,
class-conditional network of 2016b). The networks and the raster sampling loop are in core/models/autoregressive.py.

A grey image is D = H·W pixel levels k_i ∈ {0, …, 255}. The network reads k/127.5 − 1 and gives at every pixel a
256-way softmax, p(k_i | k_<i, y) (2016a Sec. 5.3: a categorical, no assumption on the shape of the distribution).
The likelihood is exact and discrete, so no dequantization enters:
    bits/dim = −log₂ p(k | y) / D = Σ_i CE(logits_i, k_i) / (D ln 2)
Class-conditional (2016b Sec. 2.3): y adds a learned bias to every gate. Its unconditional likelihood is exact too,
with the uniform class prior of the balanced training set:
    p(k) = Σ_y p(k | y) / 10
Why a 256-way softmax and not a discretized logistic mixture (Salimans et al. 2017): one grey channel costs 256
logits per pixel, small next to the network, and the categorical is what the entropy coder of core/compress.py reads
directly (its probabilities are the model's, with no discretisation of a continuous density).
Sampling draws k_i from softmax(logits_i / T), pixel by pixel; T = 1 is the model. A completion keeps the known
pixels (the top rows of an image) and draws the rest.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.metrics import Yardstick
from core.model import TrainableModel
from core.models.autoregressive import GatedPixelCNN, PlainPixelCNN, raster_loop

KINDS = ("gated", "plain")
LEVELS = 256                             # 8-bit pixels


@dataclass(frozen=True)
class PixelCNNConfig:
    kind: str = option("gated", "gated (2016b: two stacks, no blind spot) or plain (2016a: masked convolutions)",
                       choices=KINDS)
    hidden: int = option(64, "channels of every layer (2016b: 384 on ImageNet)", low=1)
    layers: int = option(12, "gated layers, or mask-B residual blocks of the plain network (2016b: 20)", low=1)
    kernel: int = option(5, "k: the vertical stack's kernel is (k//2 + 1) x k, the horizontal's 1 x (k//2 + 1); odd",
                         low=1)
    num_classes: int = option(0, "0: unconditional; K > 0: p(x | y), a learned class bias on every gate", low=0)
    temperature: float = option(1.0, "T of the evaluation samples and grids (softmax of logits / T)", low=0.01,
                                high=2.0)
    channels: int = option(1, "image channels (grey images only: colour needs 2016a's channel masks)", low=1, high=1)
    image_size: int = option(28, "image side")


def pixel_levels(images: Tensor) -> Tensor:
    """k ∈ {0, …, 255} (B, H, W) int64 from the loop's x = k/127.5 − 1, (B, 1, H, W)."""
    return torch.round((images.float() + 1) * 127.5).clamp(0, LEVELS - 1).long()[:, 0]


def embed(levels: Tensor) -> Tensor:
    """The network's input for pixel levels (B, H, W): k/127.5 − 1, (B, 1, H, W)."""
    return (levels.float() / 127.5 - 1)[:, None]


class PixelCNN(TrainableModel):
    """A (Gated) PixelCNN over 8-bit grey images: maximum likelihood, exact bits per dimension."""
    config_class = PixelCNNConfig
    pipeline_tag = "unconditional-image-generation"
    likelihood_kind = "exact"          # what bits_per_dim gives: −log₂ P(k)/D itself
    card_description = """
An autoregressive model trained from scratch with genlab (`core/models/pixelcnn.py`): a Gated PixelCNN (van den Oord
et al. 2016, "Conditional Image Generation with PixelCNN Decoders": vertical and horizontal stacks without the blind
spot, gated units, a class bias on every gate) with a 256-way softmax per pixel. Its likelihood is exact and
discrete: bits per dimension are −log₂ p(x)/784 on the 8-bit test images, no dequantization, no bound. Samples are
drawn pixel by pixel with the cached fast path (Ramachandran et al. 2017). FID, KID and coverage use the features of
genlab's Fashion-MNIST classifier (`checkpoints/classifier`).
"""
    card_samples_caption = "Samples drawn pixel by pixel at the configured temperature (softmax of logits / T)."

    def __init__(self, config: PixelCNNConfig = PixelCNNConfig()):
        super().__init__()
        c = self.config = config
        if c.kind not in KINDS or c.kernel % 2 == 0:
            raise ValueError(f"kind must be one of {KINDS} and kernel odd, got {c.kind!r}, {c.kernel}")
        if c.kind == "gated":
            self.network = GatedPixelCNN(c.channels, LEVELS, c.hidden, c.layers, c.kernel, c.num_classes)
        else:
            if c.num_classes:
                raise ValueError("the plain PixelCNN is unconditional: use --kind gated for --num-classes")
            self.network = PlainPixelCNN(c.channels, LEVELS, c.hidden, c.layers, c.kernel)

    @property
    def dimensions(self) -> int:
        return self.config.channels * self.config.image_size ** 2

    def logits(self, levels: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, H, W) pixel levels -> (B, 256, H, W) logits of p(k_i | k_<i, y), one forward pass."""
        return self.network(embed(levels), self.checked_labels(labels, len(levels)))

    def checked_labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        if not self.config.num_classes:
            return None
        if labels is None:
            raise ValueError("a class-conditional PixelCNN needs labels")
        if len(labels) != n or not (0 <= int(labels.min()) and int(labels.max()) < self.config.num_classes):
            raise ValueError(f"labels must be {n} integers in [0, {self.config.num_classes - 1}]")
        return labels.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------------ likelihood
    def nats(self, levels: Tensor, labels: Tensor | None = None) -> Tensor:
        """−ln p(k | y) per image, (B,): the sum of the pixels' cross-entropies."""
        logits = self.logits(levels, labels).float()
        return F.cross_entropy(logits, levels.to(logits.device), reduction="none").flatten(1).sum(1)

    def bits_per_dim(self, images: Tensor, labels: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """−log₂ p(k | y) / D per image for images in [-1, 1]. A conditional model without labels gives the
        unconditional −log₂ Σ_y p(k | y)/K / D (K forward passes). Exact: `generator` (a flow's dequantization noise)
        is not used, and is taken so that every likelihood model is called alike."""
        levels = pixel_levels(images)
        if self.config.num_classes and labels is None:
            classes = self.config.num_classes
            per_class = torch.stack([self.nats(levels, torch.full((len(levels),), y)) for y in range(classes)])
            nats = -(torch.logsumexp(-per_class, 0) - math.log(classes))
        else:
            nats = self.nats(levels, labels)
        return nats / (self.dimensions * math.log(2))

    @torch.no_grad()
    def test_bits_per_dim(self, data: ImageData, conditional: bool = True, batch_size: int = 500) -> float:
        """Mean bits per dimension over `data`: p(x | y) with the true labels, or p(x) (`conditional=False`)."""
        total = 0.0
        for batch in data.batches(batch_size, seed=0, epoch=0, drop_last=False):
            labels = batch.labels if conditional and self.config.num_classes else None
            with self.autocast():
                total += float(self.bits_per_dim(batch.images.to(self.device), labels).sum())
        return total / len(data)

    # ------------------------------------------------------------------------------------------------ training
    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"model": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Maximum likelihood: minimise the batch's mean bits per dimension, p(x | y) with its labels."""
        labels = batch.labels if self.config.num_classes else None
        bpd = self.bits_per_dim(batch.images, labels).mean()
        return {"loss/bits_per_dim": self.optimizer_step(self.optimizer, bpd)}

    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None,
                 samples: tuple[Tensor, Tensor | None] | None = None) -> dict[str, float]:
        """Test bits per dimension (conditional on the true labels for a conditional model) and the yardstick's
        figures of len(data) samples."""
        return {"bits_per_dim": self.test_bits_per_dim(data), **super().evaluate(data, yardstick, samples)}

    def default_labels(self, n: int) -> Tensor | None:
        return torch.arange(n) % self.config.num_classes if self.config.num_classes else None

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        labels = self.default_labels(n)
        return self.sample(n, seed=0, labels=labels), labels

    def eval_images(self, data: ImageData) -> Tensor:
        return self.sample(64, seed=1234, labels=self.default_labels(64))

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def fill(self, levels: Tensor, known_rows: int, labels: Tensor | None, temperature: float,
             generator: torch.Generator, fast: bool = True, on_row=None) -> Tensor:
        """Keep rows < known_rows of `levels` (B, H, W) and draw the others pixel by pixel from softmax(logits/T);
        `on_row(row, levels so far)` after each row (raster_loop)."""
        labels = self.checked_labels(labels, len(levels))

        def draw(logits: Tensor, row: int, col: int) -> Tensor:
            if row < known_rows:
                return levels[:, row, col]
            probabilities = torch.softmax(logits.cpu() / temperature, 1)
            return torch.multinomial(probabilities, 1, generator=generator)[:, 0].to(levels.device)

        with self.autocast():
            return raster_loop(self.network, embed, levels.to(self.device), labels, draw, fast, on_row)

    def check_temperature(self, temperature: float | None) -> float:
        temperature = self.config.temperature if temperature is None else float(temperature)
        if not 0.01 <= temperature <= 2.0:
            raise ValueError(f"temperature must lie in [0.01, 2], got {temperature}")
        return temperature

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None, temperature: float | None = None,
               batch_size: int = 500, on_row=None) -> Tensor:
        """n images in [-1, 1], drawn pixel by pixel (labels default to 0, 1, …, K−1, 0, … for a conditional
        model); `on_row(row, levels)` after each row of each batch of at most `batch_size` images."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        temperature, labels = self.check_temperature(temperature), (
            labels if labels is not None else self.default_labels(n))
        generator, side, chunks = torch.Generator().manual_seed(seed), self.config.image_size, []
        for start in range(0, n, batch_size):
            part = labels[start:start + batch_size] if labels is not None else None
            blank = torch.zeros(min(batch_size, n - start), side, side, dtype=torch.long)
            chunks.append(self.fill(blank, 0, part, temperature, generator, on_row=on_row).cpu())
        return torch.cat(chunks)[:, None].float() / 127.5 - 1

    @torch.no_grad()
    def complete(self, images: Tensor, known_rows: int, per_image: int = 4, seed: int = 0,
                 labels: Tensor | None = None, temperature: float | None = None, on_row=None) -> Tensor:
        """`per_image` completions of each image (B, 1, H, W) in [-1, 1] given its rows < known_rows:
        (B · per_image, 1, H, W), the completions of image b at rows b·per_image … (`on_row`: as in fill)"""
        if not 0 <= known_rows <= self.config.image_size:
            raise ValueError(f"known_rows must lie in [0, {self.config.image_size}], got {known_rows}")
        levels = pixel_levels(images).repeat_interleave(per_image, 0)
        labels = labels.repeat_interleave(per_image, 0) if labels is not None else self.default_labels(len(levels))
        generator = torch.Generator().manual_seed(seed)
        filled = self.fill(levels, known_rows, labels, self.check_temperature(temperature), generator,
                           on_row=on_row)
        return filled.cpu()[:, None].float() / 127.5 - 1
