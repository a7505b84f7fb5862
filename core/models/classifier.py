"""A small CNN classifier for 28x28 images, the FGSM target, and the feature network of core.metrics.

    conv3x3(32) ×2 → maxpool → conv3x3(64) ×2 → maxpool → conv3x3(128) → global average pool → fc(128) → fc(K)
Each conv is followed by batch norm and ReLU; global pooling makes the net work on any image size (8x8 digits too).
The 128-d output of fc(128) (after ReLU) is the penultimate feature vector; `stage_features` adds the pooled
activations of the three conv stages, and core.metrics measures sample quality on all of them.
Training minimises cross-entropy J(θ, x, y) = −log softmax(f_θ(x))_y on augmented images (random shifts of up to
2 pixels and horizontal flips, both fine for clothes and drawn as whole-batch tensor ops).

Adversarial training (adversarial_eps > 0) follows Wong et al. 2020, "Fast is better than free", Algorithm 3:
each batch is replaced by FGSM examples with a random start, δ ~ U(−ε, ε), δ ← Π_ε(δ + α sign(∇_δ J)), α = 1.25 ε,
and the model is trained on x + δ only. ε is a fraction of the pixel range (see core.attacks).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.attacks import fgsm, pgd, robustness_curve
from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.metrics import Yardstick
from core.model import TrainableModel
from core.nn import conv_encoder


@dataclass(frozen=True)
class ClassifierConfig:
    channels: int = option(1, "image channels")
    num_classes: int = option(10, "number of classes")
    width: int = option(32, "channels of the first conv stage (doubled at each of the next two)")
    hidden: int = option(128, "size of the penultimate (feature) layer")
    dropout: float = option(0.3, "dropout before the last layer")
    augment: bool = option(True, "random 2-pixel shifts and horizontal flips during training")
    adversarial_eps: float = option(0.0, "FGSM adversarial training budget (fraction of pixel range; 0: off)")
    adversarial_alpha: float = option(1.25, "FGSM step as a multiple of eps (Wong et al.: 1.25)")


def augment(x: Tensor, shift: int = 2) -> Tensor:
    """Random translation by up to `shift` pixels (pad with black, crop) and horizontal flip, per image."""
    b, c, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, value=-1.0)                                  # (B, C, H+2s, W+2s)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]                   # (B, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]                   # (B, 1, W)
    shifted = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
    shifted = shifted.permute(0, 3, 1, 2)
    flip = torch.rand(b, 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, shifted.flip(-1), shifted)


class Classifier(TrainableModel):
    """CNN image classifier with optional FGSM adversarial training."""
    config_class = ClassifierConfig
    pipeline_tag = "image-classification"
    uses_yardstick = False
    card_description = """
A small CNN classifier trained from scratch with genlab (`core/models/classifier.py`). It is the target of the FGSM
and PGD attacks in `core/attacks.py` and the feature network of genlab's in-domain FID/KID/precision/recall,
realism and off-manifold share (`core/metrics.py`, features from every depth); the scales and thresholds those
metrics use for the Fashion-MNIST test set are stored beside the weights in `reference_stats.safetensors`.
Attack budgets ε are fractions of the pixel range (ε = 0.1 moves a pixel by at most 25.5 grey levels of 255).
"""

    card_samples_caption = "Top two rows: test images. Bottom two rows: the same images after FGSM at ε = 0.1."

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(*conv_encoder(config.channels, w), nn.Linear(4 * w, config.hidden),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.hidden, config.num_classes))

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, hidden) penultimate features."""
        return self.body(x)

    def stage_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """What core.metrics measures images with: the spatial mean and standard deviation of the activations after
        the first two conv stages ((B, w) each, then (B, 2w) each: edges and texture), the mean after the third
        ((B, 4w): parts), the penultimate features (B, hidden: the class), and the logits (B, K)."""
        pooled = []
        for index, layer in enumerate(self.body):
            x = layer(x)
            if index in self.stage_ends:
                pooled.append(x.mean((2, 3)))
                if index != self.stage_ends[-1]:
                    pooled.append(x.std((2, 3)))
        return pooled + [x], self.head(x)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Indices in `body` of the last ReLU of each conv stage (before the max-pools and the global pool)."""
        relus = [i for i, layer in enumerate(self.body) if isinstance(layer, nn.ReLU)]
        return relus[1], relus[3], relus[4]

    def head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K)."""
        return self.head(self.features(x))

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"classifier": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        x, y = batch.images, batch.labels
        if self.config.augment:
            x = augment(x)
        if self.config.adversarial_eps > 0:       # Wong et al. 2020, Alg. 3: FGSM from a random start in B_ε(x)
            eps = self.config.adversarial_eps
            x = pgd(self, x, y, eps, steps=1, alpha=self.config.adversarial_alpha * eps, random_start=True)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        return {"loss/train": self.optimizer_step(self.optimizer, loss),
                "accuracy/train": (logits.detach().argmax(1) == y).float().mean()}

    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None, batch_size: int = 1000) -> dict[str, float]:
        """Test loss, accuracy, and accuracy under FGSM at ε = 0.1 (core.attacks.robustness_curve)."""
        device = next(self.parameters()).device
        loss = sum(F.cross_entropy(self(b.images.to(device)), b.labels.to(device), reduction="sum").item()
                   for b in (data.batch(slice(i, i + batch_size)) for i in range(0, len(data), batch_size)))
        with torch.enable_grad():        # the loop evaluates under no_grad; the attack needs input gradients
            curve = robustness_curve(self, data, [0.0, 0.1], batch_size=batch_size)
        return {"loss": loss / len(data), "accuracy": curve[0.0], "fgsm_accuracy_eps0.1": curve[0.1]}

    def eval_images(self, data: ImageData) -> Tensor:
        """Two rows of fixed test images over two rows of their FGSM (ε = 0.1) versions."""
        batch = data.batch(slice(0, 8))
        x, y = batch.images.to(next(self.parameters()).device), batch.labels.to(next(self.parameters()).device)
        with torch.enable_grad():
            x_adv = fgsm(self, x, y, 0.1)
        return torch.cat([x, x_adv]).cpu()
