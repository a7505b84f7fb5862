"""SimCLR, Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations", scaled to
28x28 grey images.

Each image x_k of a batch of N gets two random augmentations (Sec. 3: crop and resize, flip, intensity jitter, noise,
erasing): 2N views. An encoder f gives the representation h = f(x̃) (what downstream tasks use) and a projection
head g gives z = g(h) (Eq. 1: only for the loss). With sim(u, v) = uᵀv / (‖u‖ ‖v‖) and temperature τ, the loss of
the positive pair (i, j), the two views of one image, is the NT-Xent loss (Eq. 1)
    ℓ(i, j) = −log  exp(sim(z_i, z_j)/τ) / Σ_{k=1..2N, k≠i} exp(sim(z_i, z_k)/τ),
and L = 1/(2N) Σ_k [ℓ(2k−1, 2k) + ℓ(2k, 2k−1)]: every other view in the batch is a negative.

Departures from the paper (which trains a ResNet-50 with batches of 4096 and LARS on ImageNet): a 5-layer conv
encoder (the metric classifier's layout, 128-d representation), a 2-layer projection head to 64-d, batches of 256 with
Adam, τ = 0.5 (the paper's best for small batches on CIFAR-10, Appendix B.9), and no colour distortion (grey images):
the intensity jitter stands in for it. Augmentations run on whole batches as tensor ops (an affine grid for the crops
and flips), with no Python loop over images.
"""
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TrainConfig, option
from core.data import Batch, ImageData, to_float
from core.model import TrainableModel
from core.nn import conv_encoder


@dataclass(frozen=True)
class SimCLRConfig:
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side")
    width: int = option(32, "channels of the first conv stage (doubled at each of the next two)")
    projection_dim: int = option(64, "size of z, the projection head's output")
    temperature: float = option(0.5, "τ of the NT-Xent loss")
    min_crop: float = option(0.35, "smallest area share of a random crop (Chen et al.: 0.08 on ImageNet)")
    jitter: float = option(0.4, "strength of the contrast and brightness jitter")
    noise: float = option(0.1, "largest standard deviation of the added Gaussian noise")
    erase: float = option(0.5, "probability of erasing a random rectangle (Zhong et al. 2020)")
    gallery: int = option(0, "labelled images stored with the model to search by similarity (0 while training; "
                             "the shipped model holds test images, see `with_gallery`)")


def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """Eq. 1 averaged over the 2N views. z: (2N, D), rows k and k + N are the two views of image k.
    −log softmax over k ≠ i, taken at the positive j, is ℓ(i, j); so it is a cross-entropy with target j."""
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)     # float32 at least
    logits = z @ z.T / temperature                                             # sim(z_i, z_k)/τ, (2N, 2N)
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))   # k ≠ i
    positives = (torch.arange(len(z), device=z.device) + len(z) // 2) % len(z)
    return F.cross_entropy(logits, positives)


def augment(x: Tensor, config: SimCLRConfig, generator: torch.Generator | None = None) -> Tensor:
    """One random view of each image of x (B, C, H, W) in [-1, 1]: crop-and-resize with a random aspect ratio and a
    horizontal flip (one affine grid per image), contrast/brightness jitter, Gaussian noise, random erasing."""
    b, device = len(x), x.device
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(device)
    area = config.min_crop + (1 - config.min_crop) * rand(b)
    aspect = torch.exp((rand(b) - 0.5) * 2 * math.log(4 / 3))                    # log-uniform in [3/4, 4/3]
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)   # shares of the side
    centre_x, centre_y = (1 - width) * (2 * rand(b) - 1), (1 - height) * (2 * rand(b) - 1)    # crop inside the image
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0).to(device)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width * flip, centre_x, height, centre_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1 + config.jitter * (2 * rand(b, 1, 1, 1) - 1)
    brightness = config.jitter / 2 * (2 * rand(b, 1, 1, 1) - 1)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = (view - mean) * contrast + mean + brightness
    view = view + config.noise * rand(b, 1, 1, 1) * torch.randn(view.shape, generator=generator).to(device)
    h, w = x.shape[-2:]                                                          # random erasing: a rectangle of
    side_y, side_x = (rand(b) * 0.3 + 0.2) * h, (rand(b) * 0.3 + 0.2) * w        # 4-25% of the image, set to black
    top, left = rand(b) * (h - side_y), rand(b) * (w - side_x)
    rows, cols = torch.arange(h, device=device)[None, :, None], torch.arange(w, device=device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + side_y)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + side_x)[:, None, None]))     # (B, H, W)
    erased = inside & (rand(b) < config.erase)[:, None, None]
    return view.masked_fill(erased[:, None], -1.0).clamp(-1, 1)


class SimCLR(TrainableModel):
    """Contrastive representation learning: encoder f (the representation) and projection head g (the loss only)."""
    config_class = SimCLRConfig
    pipeline_tag = "image-feature-extraction"
    channels_last = True          # trains 1.75x fp32, 1.46x bf16 faster than NCHW (bench/channels_last.py)
    uses_yardstick = False
    card_description = """
A SimCLR encoder (Chen et al. 2020) trained from scratch with genlab (`core/models/simclr.py`) on unlabelled
images: two augmentations of each image are pulled together and pushed away from every other image of the batch by
the NT-Xent loss. The representation is the encoder's 4·width-dimensional output (before the projection head); the
card's table measures it with a linear probe and k nearest neighbours on few labels. `knn_accuracy` is the
leave-one-out 20-nearest-neighbour accuracy within the test set (cosine similarity, majority vote).
"""

    def __init__(self, config: SimCLRConfig = SimCLRConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.encoder = nn.Sequential(*conv_encoder(config.channels, w))          # the classifier's body, (B, 4w)
        self.projection = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True),
                                        nn.Linear(4 * w, config.projection_dim))
        if config.gallery:                                                      # (none while training)
            side = config.image_size
            self.register_buffer("gallery_images", torch.zeros(config.gallery, config.channels, side, side,
                                                               dtype=torch.uint8))
            self.register_buffer("gallery_labels", torch.zeros(config.gallery, dtype=torch.long))

    def with_gallery(self, data: ImageData, per_class: int) -> "SimCLR":
        """A copy of this model that also holds the first `per_class` images of each class of `data` (uint8, in
        the weights file), so that a loaded model can find similar images without the dataset."""
        index = torch.cat([(data.labels == k).nonzero().flatten()[:per_class] for k in range(len(data.classes))])
        index = index.sort().values
        copy = SimCLR(dataclasses.replace(self.config, gallery=len(index)))
        copy.load_state_dict({**self.state_dict(), "gallery_images": data.images[index],
                              "gallery_labels": data.labels[index]})
        return copy.to(next(self.parameters()).device)

    def gallery_features(self) -> Tensor:
        """The representations of the gallery images (G, 4·width)."""
        if self.config.gallery == 0:
            raise ValueError("this model holds no gallery: make one with with_gallery(data, per_class)")
        return self.representations(to_float(self.gallery_images))

    def nearest(self, images: Tensor, k: int = 8, bank: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The k gallery images most similar to each image (cosine similarity of the representations):
        (indices (B, k), similarities (B, k)), most similar first. `bank`: gallery_features(), if already known."""
        bank = F.normalize(self.gallery_features() if bank is None else bank, dim=1)
        similarity = F.normalize(self.representations(images), dim=1) @ bank.T
        top = similarity.topk(min(k, len(bank)), dim=1)
        return top.indices, top.values


    def forward(self, x: Tensor) -> Tensor:
        """h = f(x), the representation (B, 4·width)."""
        return self.encoder(x)

    @torch.no_grad()
    def representations(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        """h for many images, in eval mode (batch-norm running statistics), float32."""
        was_training = self.training
        self.eval()
        with self.autocast():
            parts = [self(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(parts)

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"simclr": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Two views per image, z = g(f(view)) for all 2N, the NT-Xent loss, one optimizer step. Labels unused."""
        x = batch.images
        views = torch.cat([augment(x, self.config), augment(x, self.config)])      # rows k and k + N: image k
        loss = nt_xent(self.projection(self(views)), self.config.temperature)
        return {"loss/nt_xent": self.optimizer_step(self.optimizer, loss)}

    def evaluate(self, data: ImageData, yardstick=None, samples=None) -> dict[str, float]:
        """Leave-one-out 20-nearest-neighbour accuracy of the representation within `data` (cosine similarity,
        majority vote): a label-free training signal turned into a number without a probe."""
        batch = data.batch(slice(None))
        return {"knn_accuracy": knn_accuracy(self.representations(batch.images), batch.labels)}


def knn_accuracy(features: Tensor, labels: Tensor, k: int = 20, bank: Tensor | None = None,
                 bank_labels: Tensor | None = None, chunk: int = 1000) -> float:
    """Share of `features` whose k nearest (cosine) neighbours in `bank` vote for their label; without a bank,
    leave-one-out within `features`."""
    query = F.normalize(features.float(), dim=1)
    leave_one_out = bank is None
    bank = query if bank is None else F.normalize(bank.float(), dim=1)
    bank_labels = labels if bank_labels is None else bank_labels
    classes = int(max(labels.max(), bank_labels.max())) + 1
    k = min(k, len(bank) - int(leave_one_out))
    right = 0
    for start in range(0, len(query), chunk):
        similarity = query[start:start + chunk] @ bank.T
        if leave_one_out:
            similarity[torch.arange(len(similarity)), torch.arange(start, start + len(similarity))] = -2.0
        neighbours = bank_labels[similarity.topk(k, dim=1).indices]                     # (chunk, k)
        votes = F.one_hot(neighbours, classes).sum(1)
        right += int((votes.argmax(1) == labels[start:start + chunk]).sum())
    return right / len(query)


def principal_plane(features: Tensor) -> tuple[Tensor, Tensor]:
    """PCA to 2-D: (mean (D,), basis (D, 2)) of the features; x ↦ (x − mean) @ basis are the coordinates along the
    two directions of largest variance (the right singular vectors of the centred features)."""
    mean = features.mean(0)
    _, _, v = torch.linalg.svd(features - mean, full_matrices=False)
    return mean, v[:2].T
