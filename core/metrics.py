"""Sample-quality metrics on the features of a feature network (genlab's own Fashion-MNIST classifier).

These are in-domain scores: the features are the classifier's penultimate layer (128-d), not Inception-v3's pool3
(2048-d), so the numbers compare genlab models with each other and are NOT comparable with published Inception-FIDs.
    FID (Heusel et al. 2017):   ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})
    KID (Bińkowski et al. 2018): unbiased MMD² with the kernel k(a, b) = (aᵀb / d + 1)³, averaged over subsets
    Precision / recall (Kynkäänniemi et al. 2019): the share of generated samples inside the k-NN balls of the real
    features, and of real samples inside the k-NN balls of the generated ones (k = 3).
    Class coverage: the histogram of the classifier's predicted classes over generated samples; a class counts as
    covered when it gets at least a quarter of its uniform share (2.5% of samples for 10 classes), and
    KL(histogram ‖ uniform) = log K − H(histogram) is 0 for perfect balance. Our mode-collapse signal.
    Conditional accuracy: the share of samples asked for class k that the classifier labels k.

This module loads nothing: the feature network comes in as an argument (a `Yardstick`, built by whoever evaluates;
core.evaluate.metric_yardstick loads the shipped classifier and its stored test-set statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

REFERENCE_FILE = "reference_stats.safetensors"
STORED_FOR = ("fashion-mnist", "test", 10_000, None)     # (dataset, split, images, pad_to) the stored stats describe


@torch.no_grad()
def features(classifier, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Penultimate features and logits of the classifier for images in [-1, 1]."""
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, logits = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk.to(device))
        feats.append(f.cpu())
        logits.append(classifier.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def gaussian_stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance in float64."""
    feats = feats.double()
    return feats.mean(0), torch.cov(feats.T)


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance of two Gaussians. Tr((Σ1 Σ2)^{1/2}) = Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}): the inner matrix is
    symmetric PSD, so eigh gives a stable root where a general sqrtm of Σ1 Σ2 can turn complex."""
    root1 = sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    trace_root = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_root)


def fid(real: Tensor, fake: Tensor) -> float:
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the unbiased MMD² over random subsets (Bińkowski et al. 2018, Eq. 3)."""
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    generator = torch.Generator().manual_seed(seed)
    real, fake = real.double(), fake.double()
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:m]]
        y = fake[torch.randperm(len(fake), generator=generator)[:m]]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        off_diagonal = lambda k: (k.sum() - k.diagonal().sum()) / (m * (m - 1))
        values.append(off_diagonal(k_xx) + off_diagonal(k_yy) - 2 * k_xy.mean())
    values = torch.stack(values)
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0


def knn_radii(feats: Tensor, k: int, chunk: int = 1000) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return torch.cat([torch.cdist(part, feats).kthvalue(k + 1, dim=1).values for part in feats.split(chunk)])


def inside_manifold(points: Tensor, support: Tensor, radii: Tensor, chunk: int = 1000) -> Tensor:
    """For each point: does it fall in at least one ball B(support_j, radii_j)?"""
    return torch.cat([(torch.cdist(part, support) <= radii).any(1) for part in points.split(chunk)])


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = fake inside the real manifold, recall = real inside the fake manifold."""
    real, fake = real.float(), fake.float()
    precision = inside_manifold(fake, real, knn_radii(real, k)).float().mean()
    recall = inside_manifold(real, fake, knn_radii(fake, k)).float().mean()
    return float(precision), float(recall)


def class_coverage(predicted: Tensor, num_classes: int) -> dict[str, float]:
    """Classes covered (>= 1/(4K) of the samples) and KL(predicted-class histogram ‖ uniform) in nats."""
    histogram = torch.bincount(predicted, minlength=num_classes).double() / len(predicted)
    entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum()
    return {"classes_covered": int((histogram >= 1 / (4 * num_classes)).sum()),
            "kl_to_uniform": float(math.log(num_classes) - entropy)}


def conditional_accuracy(logits: Tensor, requested: Tensor) -> float:
    return float((logits.argmax(1) == requested).double().mean())


# --------------------------------------------------------------------------------------- reference statistics
def compute_reference(classifier, images: Tensor) -> dict[str, Tensor]:
    """Statistics of the real images (Fashion-MNIST test set): stored once, beside the classifier."""
    feats, _ = features(classifier, images)
    mu, sigma = gaussian_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats.half()}


def save_reference(reference: dict[str, Tensor], folder: Path, dataset: str = "fashion-mnist") -> Path:
    path = Path(folder) / REFERENCE_FILE
    metadata = {"dataset": dataset, "split": "test", "count": str(len(reference["features"]))}
    safetensors.torch.save_file({k: v.contiguous() for k, v in reference.items()}, str(path), metadata=metadata)
    return path


def load_reference(folder: Path) -> dict[str, Tensor]:
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: compute it with `python -m core.evaluate {folder} --reference`")
    return safetensors.torch.load_file(str(path))


def sample_quality(classifier, reference: dict[str, Tensor], images: Tensor, requested: Tensor | None = None,
                   kid_subset: int = 1000) -> dict[str, float]:
    """Every metric above for generated images in [-1, 1] (and the labels asked for, for conditional models)."""
    feats, logits = features(classifier, images)
    real = reference["features"].float()
    kid_mean, kid_std = kid(real, feats, subsets=50, subset_size=kid_subset)
    precision, recall = precision_recall(real, feats)
    scores = {"fid": frechet_distance(reference["mu"], reference["sigma"], *gaussian_stats(feats)),
              "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
              **class_coverage(logits.argmax(1), logits.shape[1])}
    if requested is not None:
        scores["conditional_accuracy"] = conditional_accuracy(logits, requested)
    return scores


@dataclass
class Yardstick:
    """A feature network (any module with `features(x)` and `head(features)`) and, when given, its stored statistics
    of the reference set STORED_FOR (the whole Fashion-MNIST test set), so 10k test images need no new pass."""
    network: torch.nn.Module
    stored: dict[str, Tensor] | None = None
    channels: int = 1                  # the image channels the network reads

    def fits(self, shape: tuple[int, int, int]) -> bool:
        """Whether images of shape (C, H, W) can be measured (the network pools over any size)."""
        return shape[0] == self.channels

    def reference_for(self, data) -> dict[str, Tensor]:
        """The stored statistics when `data` is the reference set they describe, else computed from `data`."""
        if self.stored is not None and (data.name, data.split, len(data), data.pad_to) == STORED_FOR:
            return self.stored
        return compute_reference(self.network, data.batch(slice(None)).images)

    def score(self, images: Tensor, data, requested: Tensor | None = None) -> dict[str, float]:
        """`sample_quality` of generated images against the real images of `data`."""
        return sample_quality(self.network, self.reference_for(data), images, requested)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return features(self.network, images)
