"""Sample-quality metrics on the features of a feature network (genlab's own Fashion-MNIST classifier).

Features. A classifier's penultimate layer is trained to ignore what does not change the class, so a speckled
shirt is still a shirt there. The yardstick therefore reads the network at every depth: the spatial mean and
standard deviation of the activations after the first two conv stages (edges and texture: speckle raises their
spread), the mean after the third (parts), and the penultimate features (the class); each of the six parts is
divided by its mean norm on the real reference images and multiplied by FEATURE_SCALE, so they weigh alike ("stages"
features, 448-d for the shipped classifier). The choice was
made by measurement: bench/metric_validation.py scores degraded real images (noise, blur, speckle, saturation,
single classes, uniform noise) against the real floor. The penultimate-only figures of earlier cards are still
reported, as `*_penultimate`. All figures are in-domain: they compare genlab models with each other and are NOT
comparable with published Inception-FIDs.
    FID (Heusel et al. 2017):   ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})
    KID (Bińkowski et al. 2018): unbiased MMD² with the kernel k(a, b) = (aᵀb / d + 1)³, averaged over subsets
    Precision / recall (Kynkäänniemi et al. 2019): the share of generated samples inside the k-NN balls of the real
    features, and of real samples inside the k-NN balls of the generated ones (k = 3).
    Realism (Kynkäänniemi et al. 2019, Sec. 5, Eq. 3): R(φ_g) = max_r NND_k(φ_r) / ‖φ_g − φ_r‖ over the real
    features whose k-NN radius is at most the median (the pruned manifold); R ≥ 1 lies inside a ball. The
    off-manifold share is the fraction of samples with R below the threshold at which 99% of the real reference
    images pass (each scored leave-one-out against the others): about 1% for real images, by construction.
    Copies: each sample's RMS distance (pixels in [0, 1]) to its nearest training image; the copy share is the
    fraction closer than the 1st percentile of the real test images' own nearest-training distances (the base rate
    of near-duplicates inside Fashion-MNIST is 1% by construction), reported with the median distance.
    Class coverage: the histogram of the classifier's predicted classes over generated samples; a class counts as
    covered when it gets at least a quarter of its uniform share (2.5% of samples for 10 classes), with the
    smallest class share, and KL(histogram ‖ uniform) = log K − H(histogram) is 0 for perfect balance.
    Conditional accuracy: the share of samples asked for class k that the classifier labels k.
Calibration of a classifier (Guo et al. 2017): predictions are put in M = 15 equal bins of their confidence (the top
softmax probability); ECE = Σ_m (n_m / n) |accuracy_m − confidence_m|, and the bins are the reliability diagram.
Paired figures (image-to-image translation, outputs against their targets, pixels in [0, 1], averaged per image):
    L1 = mean |y − ŷ|;   PSNR = 10 log₁₀(1 / MSE) dB;
    SSIM (Wang et al. 2004) = mean over 11x11 Gaussian windows (σ = 1.5, valid positions) of
        (2 μ_y μ_ŷ + C₁)(2 σ_yŷ + C₂) / ((μ_y² + μ_ŷ² + C₁)(σ_y² + σ_ŷ² + C₂)),   C₁ = 0.01², C₂ = 0.03².

This module loads nothing: the feature network comes in as an argument (a `Yardstick`, built by whoever evaluates;
core.evaluate.metric_yardstick loads the shipped classifier, its stored scales and thresholds and the training
images for the copy check).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

REFERENCE_FILE = "reference_stats.safetensors"
STORED_FOR = ("fashion-mnist", "test", 10_000, None)     # (dataset, split, images, pad_to) the stored stats describe
FEATURE_SCALE = 10.0           # each stage's pooled features have this mean norm on the real reference images
REAL_PASS = 0.99               # off-manifold and copy thresholds: the share of real images that pass them
K_NEAREST = 3


@torch.no_grad()
def stage_features(network, images: Tensor, batch_size: int = 1000) -> tuple[list[Tensor], Tensor]:
    """The network's `stage_features` (pooled activations of each stage, penultimate features) and logits."""
    network.eval()
    device = next(network.parameters()).device
    parts, logits = [], []
    for chunk in images.split(batch_size):
        chunk_parts, chunk_logits = network.stage_features(chunk.to(device))
        parts.append([p.float().cpu() for p in chunk_parts])
        logits.append(chunk_logits.float().cpu())
    return [torch.cat(column) for column in zip(*parts)], torch.cat(logits)


def joined(parts: list[Tensor], scales: Tensor) -> Tensor:
    """The "stages" features: each part divided by its scale (its mean norm on the real images), times FEATURE_SCALE."""
    return torch.cat([part / scale * FEATURE_SCALE for part, scale in zip(parts, scales)], dim=1)


def features(network, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Penultimate features and logits of the network for images in [-1, 1]."""
    parts, logits = stage_features(network, images, batch_size)
    return parts[-1], logits


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


def realism(points: Tensor, support: Tensor, radii: Tensor, exclude_self: bool = False, chunk: int = 1000) -> Tensor:
    """Kynkäänniemi et al. 2019, Eq. 3: max_j radii_j / ‖point − support_j‖ over the support points whose radius is at
    most the median (the paper prunes the largest half, which outliers inflate). With exclude_self, `points` is
    `support` itself and each point is scored against the others (leave-one-out)."""
    keep = radii <= radii.median()
    support, radii = support[keep], radii[keep]
    scores = []
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start:start + chunk], support)
        if exclude_self:
            distances[distances == 0] = math.inf
        scores.append((radii / distances.clamp(min=1e-12)).max(1).values)
    return torch.cat(scores)


def nearest_distance(images: Tensor, memory: Tensor, chunk: int = 500) -> Tensor:
    """RMS distance in [0, 1] pixel units from each image to its nearest image of `memory` (both in [-1, 1])."""
    queries, memory = images.flatten(1).float(), memory.flatten(1).float()
    memory_norms = memory.square().sum(1)
    nearest = []
    for part in queries.split(chunk):                             # ‖a − b‖² = ‖a‖² + ‖b‖² − 2 aᵀb, by one matmul
        squared = (part.square().sum(1, keepdim=True) + memory_norms - 2 * part @ memory.T).clamp(min=0)
        nearest.append(squared.min(1).values)
    return (torch.cat(nearest) / queries.shape[1]).sqrt() / 2     # /2: [-1, 1] units -> [0, 1] units


def class_coverage(predicted: Tensor, num_classes: int) -> dict[str, float]:
    """Classes covered (>= 1/(4K) of the samples), the smallest class share, and KL(predicted-class histogram ‖
    uniform) in nats."""
    histogram = torch.bincount(predicted, minlength=num_classes).double() / len(predicted)
    entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum()
    return {"classes_covered": int((histogram >= 1 / (4 * num_classes)).sum()),
            "smallest_class_share": float(histogram.min()), "kl_to_uniform": float(math.log(num_classes) - entropy)}


def conditional_accuracy(logits: Tensor, requested: Tensor) -> float:
    return float((logits.argmax(1) == requested).double().mean())


@dataclass(frozen=True)
class Calibration:
    """Per confidence bin: its count, mean confidence and accuracy (a reliability diagram), and the ECE."""
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]
    ece: float


def calibration(probabilities: Tensor, labels: Tensor, bins: int = 15) -> Calibration:
    """Reliability bins of (N, K) class probabilities against (N,) labels; empty bins report 0."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)          # bin m holds confidences in [m/M, (m+1)/M)
    counts = torch.bincount(which, minlength=bins).double()
    mean_conf = torch.zeros(bins, dtype=torch.double).index_add_(0, which, confidence.double()) / counts.clamp(min=1)
    mean_acc = torch.zeros(bins, dtype=torch.double).index_add_(0, which, correct.double()) / counts.clamp(min=1)
    ece = float((counts / len(labels) * (mean_acc - mean_conf).abs()).sum())
    return Calibration(counts.long().tolist(), mean_conf.tolist(), mean_acc.tolist(), ece)


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM of each image pair (B, C, H, W) in [0, 1] (see the module docstring), averaged over channels: (B,).
    Images smaller than the window (8x8 digits) use the largest odd window that fits."""
    x, y = x.double(), y.double()
    window = min(window, (min(x.shape[-2:]) - 1) // 2 * 2 + 1)
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)
    blur = lambda t: torch.nn.functional.conv2d(t, kernel, groups=x.shape[1])
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    index = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3))


def paired_figures(outputs: Tensor, targets: Tensor) -> dict[str, float]:
    """L1, PSNR (dB) and SSIM of outputs against their targets, both in [-1, 1], averaged over the pairs."""
    x, y = (outputs.double().clamp(-1, 1) + 1) / 2, (targets.double() + 1) / 2
    mse = (x - y).square().mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return {"l1": float((x - y).abs().mean()), "psnr": float((10 * torch.log10(1 / mse)).mean()),
            "ssim": float(ssim(x, y).mean())}


# --------------------------------------------------------------------------------------- reference statistics
def compute_reference(network, images: Tensor, memory: Tensor | None = None,
                      stored: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Statistics of the real images: the scales and Gaussian statistics of the stages features and of the
    penultimate ones, the features themselves, their k-NN radii, the realism threshold that REAL_PASS of them pass
    and, given `memory` (the training images), the copy threshold: the (1 − REAL_PASS) quantile of the real images'
    distances to their nearest training image. `stored` (scales and thresholds, see `stored_part`) is reused as is,
    so every evaluation against the stored reference set reads the same scales and thresholds."""
    parts, _ = stage_features(network, images)
    stored = stored or {}
    scales = stored.get("scales", torch.stack([part.norm(dim=1).mean() for part in parts]))
    feats, penultimate = joined(parts, scales), parts[-1]
    radii = knn_radii(feats, K_NEAREST)
    mu, sigma = gaussian_stats(feats)
    mu_p, sigma_p = gaussian_stats(penultimate)
    reference = {"scales": scales, "mu": mu, "sigma": sigma, "features": feats, "radii": radii,
                 "penultimate_mu": mu_p, "penultimate_sigma": sigma_p, "penultimate_features": penultimate}
    reference["realism_threshold"] = stored["realism_threshold"] if "realism_threshold" in stored else \
        torch.quantile(realism(feats, feats, radii, exclude_self=True), 1 - REAL_PASS)
    if "copy_threshold" in stored:
        reference["copy_threshold"] = stored["copy_threshold"]
    elif memory is not None:
        reference["copy_threshold"] = torch.quantile(nearest_distance(images, memory), 1 - REAL_PASS)
    return reference


def stored_part(reference: dict[str, Tensor]) -> dict[str, Tensor]:
    """What is stored beside the classifier: the scales and thresholds (the features are recomputed: 10k test
    images take seconds, and a weight-sized file would stay in the repository's history for good)."""
    return {k: reference[k] for k in ("scales", "realism_threshold", "copy_threshold") if k in reference}


def save_reference(reference: dict[str, Tensor], folder: Path, dataset: str = "fashion-mnist") -> Path:
    path = Path(folder) / REFERENCE_FILE
    metadata = {"dataset": dataset, "split": "test", "count": str(len(reference["features"])),
                "feature_scale": str(FEATURE_SCALE), "real_pass": str(REAL_PASS)}
    tensors = {k: v.float().reshape(-1).contiguous() if v.ndim == 0 else v.float().contiguous()
               for k, v in stored_part(reference).items()}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


def load_reference(folder: Path) -> dict[str, Tensor]:
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: compute it with `python -m core.evaluate {folder} --reference`")
    return {k: v.reshape(()) if k.endswith("threshold") else v for k, v in safetensors.torch.load_file(str(path)).items()}


def sample_quality(network, reference: dict[str, Tensor], images: Tensor, requested: Tensor | None = None,
                   memory: Tensor | None = None, kid_subset: int = 1000) -> dict[str, float]:
    """Every metric above for generated images in [-1, 1] (and the labels asked for, for conditional models); the
    copy figures need `memory` (the training images) and a reference with a copy threshold."""
    parts, logits = stage_features(network, images)
    scores = {}
    for suffix, feats, real, mu, sigma in (
            ("", joined(parts, reference["scales"]), reference["features"].float(), reference["mu"], reference["sigma"]),
            ("_penultimate", parts[-1], reference["penultimate_features"].float(), reference["penultimate_mu"],
             reference["penultimate_sigma"])):
        kid_mean, kid_std = kid(real, feats, subsets=50, subset_size=kid_subset)
        precision, recall = precision_recall(real, feats, K_NEAREST)
        scores.update({f"fid{suffix}": frechet_distance(mu, sigma, *gaussian_stats(feats)), f"kid{suffix}": kid_mean,
                       f"kid_std{suffix}": kid_std, f"precision{suffix}": precision, f"recall{suffix}": recall})
        if not suffix:
            realness = realism(feats, real, reference["radii"])
            scores["off_manifold"] = float((realness < reference["realism_threshold"]).double().mean())
            scores["realism_median"] = float(realness.median())
    if memory is not None and "copy_threshold" in reference:
        distances = nearest_distance(images, memory)
        scores["copies"] = float((distances < reference["copy_threshold"]).double().mean())
        scores["nearest_train_rms_median"] = float(distances.median())
    scores.update(class_coverage(logits.argmax(1), logits.shape[1]))
    if requested is not None:
        scores["conditional_accuracy"] = conditional_accuracy(logits, requested)
    return scores


def sample_realism(network, reference: dict[str, Tensor], images: Tensor) -> Tensor:
    """Realism of each image (see `realism`): for finding a generator's worst and best samples."""
    parts, _ = stage_features(network, images)
    return realism(joined(parts, reference["scales"]), reference["features"].float(), reference["radii"])


@dataclass
class Yardstick:
    """A feature network (any module with `stage_features(x)`) and, when given, its stored statistics of the
    reference set STORED_FOR (the whole Fashion-MNIST test set: scales and thresholds) and the training images of
    that set (`memory`), for the copy figures."""
    network: torch.nn.Module
    stored: dict[str, Tensor] | None = None
    channels: int = 1                  # the image channels the network reads
    memory: Tensor | None = None
    _references: dict = field(default_factory=dict, repr=False)

    def fits(self, shape: tuple[int, int, int]) -> bool:
        """Whether images of shape (C, H, W) can be measured (the network pools over any size)."""
        return shape[0] == self.channels

    def is_stored(self, data) -> bool:
        return self.stored is not None and (data.name, data.split, len(data), data.pad_to) == STORED_FOR

    def reference_for(self, data) -> dict[str, Tensor]:
        """Statistics of `data`, computed once per data set; for the stored reference set with the stored scales
        and thresholds (and the copy threshold)."""
        key = (data.name, data.split, len(data), data.pad_to, id(data))
        if key not in self._references:
            stored = self.stored if self.is_stored(data) else None
            self._references = {key: compute_reference(self.network, data.batch(slice(None)).images, stored=stored)}
        return self._references[key]

    def score(self, images: Tensor, requested: Tensor | None = None, *, data) -> dict[str, float]:
        """`sample_quality` of generated images against the real images of `data` (copies: on the stored set)."""
        memory = self.memory if self.is_stored(data) else None
        return sample_quality(self.network, self.reference_for(data), images, requested, memory)

    def realism(self, images: Tensor, data) -> Tensor:
        return sample_realism(self.network, self.reference_for(data), images)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features and logits (e.g. for class shares)."""
        return features(self.network, images)
