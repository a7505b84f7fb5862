"""Likelihoods of 8-bit images in bits per dimension: one protocol for every family that has one.

Data. The images are 8-bit: pixel levels k ∈ {0, …, 255}^D (D = C·H·W = 784 for Fashion-MNIST). A figure is
−log₂ P(k) / D, the number of bits per pixel an ideal entropy coder driven by the model would spend; a model that
puts equal mass on every level scores exactly 8.

    discrete model (PixelCNN, a categorical decoder):  bpd = −log P(k) / (D ln 2),  exact.
    continuous density p on dequantized data (Theis et al. 2016, Sec. 3.1; Flow++ Eq. 11-12): with the data scaled
    to [lo, hi] and bins of width w = (hi − lo)/256, y = lo + (k + u)·w, u ~ U[0, 1)^D, Jensen gives
        log P(k) = log ∫_bin p(y) dy ≥ E_u[log p(y)] + D log w,   so   bpd ≤ E_u[−log p(y) − D log w] / (D ln 2).
    For y ∈ [0, 1]: w = 1/256, bpd = (−log p(y) + D log 256)/(D ln 2); for the models' [-1, 1]: w = 1/128,
    bpd = (−log p(x) + D log 128)/(D ln 2). The uniform density (p = 1, resp. 2^−D) scores 8 either way.
    DDPM (Ho et al. 2020, Eq. 5; Nichol & Dhariwal 2021, Sec. 2 and 3.3): with x_0 = k/127.5 − 1 and paper steps
    t = 1 … T (the code's timesteps are t − 1),
        −log p(x_0) ≤ L = L_T + Σ_{t=2}^{T} L_{t−1} + L_0,
        L_T     = KL(q(x_T|x_0) ‖ N(0, I)),                 q(x_T|x_0) = N(√ᾱ_T x_0, (1 − ᾱ_T) I)   (Eq. 4)
        L_{t−1} = E_q KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)),                                    (Eq. 6-7)
                  q(x_{t−1}|x_t, x_0) = N(μ̃_t(x_t, x_0), β̃_t I),  μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x_0
                                                                         + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,
                  β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t;  p_θ(x_{t−1}|x_t) = N(μ̃_t(x_t, x̂_0(x_t, t)), σ_t² I),
        L_0     = −log p_θ(x_0|x_1), a Gaussian N(μ̃_1(x_1, x̂_0), σ_1²) per pixel integrated over its 8-bit bin
                  [x − 1/255, x + 1/255], the outer bins stretched to ±∞, so the 256 bins sum to 1 (Eq. 13).
    σ_t² is fixed: β̃_t ("small", what the shipped `ddpm` samples with: scheduler variance_type fixed_small) or β_t
    ("large"). At t = 1 (the decoder) both take σ_1² = β̃_2, as Nichol & Dhariwal's code does: β̃_1 = 0, since
    ᾱ_0 = 1, and any fixed σ_1 gives a valid bound.
    The T − 1 KL terms are estimated by Monte Carlo over t (their Sec. 3.3, "importance sampling"): for t ~ r(t) on
    {2, …, T}, Σ_t L_{t−1} = E_r[L_{t−1}/r(t)], unbiased for any r with r > 0; uniform r gives (T − 1)·mean. L_T needs
    no network and L_0 one call, so both are computed exactly. The result is an upper bound on −log₂ P(k)/D.

Departures from Nichol & Dhariwal's `calc_bpd_loop` (read, not copied): it sums all T terms (T network calls per
image); here the KL terms are sampled per image with a standard error. Their normal CDF is a tanh approximation;
here it is the exact one (torch.special.log_ndtr), with each bin's mass computed as a difference of log-CDFs
on the side of the mean that keeps it from cancelling.

Out-of-distribution detection (Nalisnick et al. 2019) ranks images by a score, higher = more likely out of
distribution; `auroc` is the area under the ROC curve in its Mann-Whitney form,
    AUROC = P(s_out > s_in) + ½ P(s_out = s_in)   over all pairs (in-distribution image, out-of-distribution image),
so 0.5 is chance and below 0.5 the score points the wrong way. The complexity correction of Serrà et al. 2020 scores
    S(x) = bits/dim_M(x) − L(x)/D,   L(x) = the bits of x's lossless PNG file (`png_bits_per_dim`),
the log-ratio of a generic compressor's likelihood 2^−L(x) to the model's: a simple image (a thin digit on black)
is cheap for every coder, so its raw bits/dim are low whatever the model learnt; S asks whether the model codes it
better than a compressor that knows nothing of garments. A single image is judged against the test images' scores,
kept as percentiles (`percentiles`, `share_below`).

This is a base module: it takes the model's function (x̂_0 from (x_t, t), a log-density, a log-probability) as an
argument and loads no checkpoint.
"""
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

LEVELS = 256                                     # 8-bit pixels
KINDS = ("exact", "bound")
VARIANCES = ("small", "large")                   # σ_t² = β̃_t or β_t


# ------------------------------------------------------------------------------------------------ the result
@dataclass(frozen=True)
class BitsPerDim:
    """Mean bits/dim over test images with its standard error s/√n; kind "exact" or "bound" (an upper bound on
    −log₂ P(k)/D: dequantization, a variational bound)."""
    mean: float
    standard_error: float
    images: int
    kind: str

    @classmethod
    def of(cls, per_image: Tensor, kind: str) -> "BitsPerDim":
        """From each image's figure (its own Monte Carlo noise, if any, is part of the spread between images)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        values = per_image.detach().double().flatten()
        se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        return cls(float(values.mean()), se, len(values), kind)

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.standard_error:.3f} bits/dim ({self.kind}, {self.images} images)"


# ------------------------------------------------------------------------------------------ 8-bit bookkeeping
def pixel_levels(images: Tensor) -> Tensor:
    """k ∈ {0, …, 255} from the loop's x = k/127.5 − 1 (rounding undoes the float error), or from uint8."""
    if images.dtype == torch.uint8:
        return images.double()
    return torch.round((images.double() + 1) * 127.5).clamp(0, LEVELS - 1)


def dequantize(levels: Tensor, data_range: tuple[float, float] = (0.0, 1.0),
               generator: torch.Generator | None = None) -> Tensor:
    """y = lo + (k + u)·w with u ~ U[0, 1)^D and bin width w = (hi − lo)/256: uniform dequantization."""
    low, high = data_range
    noise = torch.rand(levels.shape, generator=generator, dtype=torch.float64).to(levels.device)
    return low + (levels.double() + noise) * (high - low) / LEVELS


def discrete_bits_per_dim(log_prob: Tensor, dims: int) -> Tensor:
    """(a) A discrete model: −log P(k)/(D ln 2) per image from log P(k) in nats (exact)."""
    return -log_prob.double() / (dims * math.log(2))


def dequantized_bits_per_dim(log_density: Tensor, dims: int, data_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """(b) A continuous density on dequantized data: (−log p(y) − D log w)/(D ln 2), w = (hi − lo)/256 (module
    docstring); one draw of u per image is an unbiased estimate of an upper bound."""
    low, high = data_range
    return (-log_density.double() - dims * math.log((high - low) / LEVELS)) / (dims * math.log(2))


def continuous_bits_per_dim(images: Tensor, log_density: Callable[[Tensor], Tensor],
                            data_range: tuple[float, float] = (0.0, 1.0),
                            generator: torch.Generator | None = None) -> Tensor:
    """(b) end to end: dequantize each image once into data_range, evaluate the model's log-density (nats per image),
    and convert. Per-image figures, each an upper bound in expectation."""
    y = dequantize(pixel_levels(images), data_range, generator)
    return dequantized_bits_per_dim(log_density(y), images[0].numel(), data_range)


# -------------------------------------------------------------------------------------- Gaussian building blocks
def normal_kl(mean_1: Tensor, log_var_1: Tensor, mean_2: Tensor, log_var_2: Tensor) -> Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) elementwise, in nats: ½(log σ₂²/σ₁² + (σ₁² + (μ₁ − μ₂)²)/σ₂² − 1)."""
    return 0.5 * (log_var_2 - log_var_1 + torch.exp(log_var_1 - log_var_2)
                  + (mean_1 - mean_2) ** 2 * torch.exp(-log_var_2) - 1.0)


def log_mass(low: Tensor, high: Tensor, log_cdf: Callable[[Tensor], Tensor]) -> Tensor:
    """log(F(high) − F(low)) for standardised ends low < high (either may be ∓∞) of a distribution symmetric about 0
    with log-CDF `log_cdf`, without cancellation: an interval right of 0 is mirrored to the left, where F is small
    and log F is exact."""
    mirror = low > 0
    low, high = torch.where(mirror, -high, low), torch.where(mirror, -low, high)
    log_high, log_low = log_cdf(high), log_cdf(low)
    return log_high + torch.log(-torch.expm1(log_low - log_high))


def log_normal_mass(low: Tensor, high: Tensor) -> Tensor:
    """log(Φ(high) − Φ(low)), Φ the standard normal CDF (log Φ: torch.special.log_ndtr)."""
    return log_mass(low, high, torch.special.log_ndtr)


def bin_ends(x: Tensor, mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The standardised ends (x ∓ 1/255 − mean)/scale of each 8-bit level's bin of [-1, 1] (x = k/127.5 − 1), the
    first bin from −∞ and the last to +∞, so that the 256 bins cover the line."""
    half_bin = 1.0 / (LEVELS - 1)
    inv_scale = torch.exp(-log_scale)
    low = torch.where(x < -1 + half_bin, torch.full_like(x, -math.inf), (x - half_bin - mean) * inv_scale)
    high = torch.where(x > 1 - half_bin, torch.full_like(x, math.inf), (x + half_bin - mean) * inv_scale)
    return low, high


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) elementwise for x on the 256 levels of [-1, 1] under N(mean, e^{2 log_scale}) integrated over x's
    bin (`bin_ends`; Ho et al. Eq. 13)."""
    return log_normal_mass(*bin_ends(x, mean, log_scale))


def discretized_logistic_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) elementwise for x on the 256 levels of [-1, 1] under the logistic distribution of location `mean`
    and scale e^{log_scale}, CDF σ((y − mean)/scale), integrated over x's bin (`bin_ends`; Salimans et al. 2017,
    PixelCNN++ Sec. 2.1, one component)."""
    return log_mass(*bin_ends(x, mean, log_scale), torch.nn.functional.logsigmoid)


# --------------------------------------------------------------------------------------------- the DDPM bound
@dataclass(frozen=True)
class DiffusionSchedule:
    """ᾱ for the code's timesteps 0 … T−1 (paper t = 1 … T), and what the bound needs from it, in float64."""
    alphas_cumprod: Tensor
    variance: str = "small"

    def __post_init__(self):
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")

    @property
    def steps(self) -> int:
        return len(self.alphas_cumprod)

    def coefficients(self, t: Tensor) -> tuple[Tensor, ...]:
        """For code timesteps t (paper t + 1): √ᾱ_t, √(1 − ᾱ_t), the two μ̃ coefficients, log β̃ and the model's
        log σ² (Eq. 6-7), each shaped (B, 1, 1, 1)."""
        abar = self.alphas_cumprod.double().to(t.device)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        beta = 1 - abar / abar_prev
        posterior_var = beta * (1 - abar_prev) / (1 - abar)
        # Paper t = 1: β̃_1 = 0 (q(x_0|x_1, x_0) is a point mass), so the decoder takes β̃_2 under either variance.
        model_var = torch.cat([posterior_var[1:2], (posterior_var if self.variance == "small" else beta)[1:]])
        coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
        coef_xt = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
        log_posterior_var = torch.log(posterior_var.clamp(min=1e-20))
        return tuple(v[t].view(-1, 1, 1, 1) for v in (abar.sqrt(), (1 - abar).sqrt(), coef_x0, coef_xt,
                                                      log_posterior_var, torch.log(model_var)))


def prior_bits(x0: Tensor, schedule: DiffusionSchedule) -> Tensor:
    """L_T in bits per image: KL(N(√ᾱ_T x_0, (1 − ᾱ_T) I) ‖ N(0, I)) summed over pixels."""
    abar = schedule.alphas_cumprod.double()[-1]
    kl = normal_kl(abar.sqrt() * x0.double(), torch.log(1 - abar).expand_as(x0), torch.zeros_like(x0.double()),
                   torch.zeros_like(x0.double()))
    return kl.flatten(1).sum(1) / math.log(2)


def step_bits(x0: Tensor, t: Tensor, denoise: Callable[[Tensor, Tensor], Tensor], schedule: DiffusionSchedule,
              generator: torch.Generator | None = None) -> Tensor:
    """One term per image, in bits: L_{t−1} (paper t ≥ 2, a KL) or L_0 (t = 1, the decoder), for code timesteps t
    (B,), one x_t ~ q(x_t|x_0) each. `denoise(x_t, t)` returns x̂_0."""
    x0 = x0.double()
    alpha, sigma, coef_x0, coef_xt, log_posterior_var, log_model_var = schedule.coefficients(t)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
    x_t = alpha * x0 + sigma * eps                                                  # Eq. 4
    x0_hat = denoise(x_t.float(), t).double()
    model_mean = coef_x0 * x0_hat + coef_xt * x_t                                   # μ̃_t(x_t, x̂_0)
    kl = normal_kl(coef_x0 * x0 + coef_xt * x_t, log_posterior_var, model_mean, log_model_var)
    decoder = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_model_var)
    per_pixel = torch.where((t == 0).view(-1, 1, 1, 1), decoder, kl)
    return per_pixel.flatten(1).sum(1) / math.log(2)


@dataclass(frozen=True)
class DiffusionBound:
    """Per image, in bits/dim: the bound's Monte Carlo estimate, its standard error over the sampled timesteps,
    and its parts (prior L_T, decoder L_0, the sampled sum of the KL terms)."""
    bits_per_dim: Tensor
    sampling_error: Tensor
    prior: Tensor
    decoder: Tensor
    kl_terms: Tensor


def diffusion_bound(x0: Tensor, denoise: Callable[[Tensor, Tensor], Tensor], schedule: DiffusionSchedule,
                    samples: int, proposal: Tensor | None = None,
                    generator: torch.Generator | None = None) -> DiffusionBound:
    """(c) The variational bound per image with `samples` KL timesteps each, drawn from `proposal` (a probability
    over the code's timesteps 1 … T−1, length T − 1; None: uniform): Σ L_{t−1} ≈ mean of L_{t−1}/r(t)."""
    n, dims, T = len(x0), x0[0].numel(), schedule.steps
    proposal = torch.full((T - 1,), 1.0 / (T - 1), dtype=torch.float64) if proposal is None else proposal.double()
    if proposal.shape != (T - 1,) or not bool((proposal > 0).all()) or abs(float(proposal.sum()) - 1) > 1e-6:
        raise ValueError("proposal must be a positive probability vector over the T − 1 KL timesteps")
    prior = prior_bits(x0, schedule)
    decoder = step_bits(x0, torch.zeros(n, dtype=torch.long, device=x0.device), denoise, schedule, generator)
    weighted = []
    for _ in range(samples):
        index = torch.multinomial(proposal, n, replacement=True, generator=generator)    # timestep t = index + 1
        term = step_bits(x0, (index + 1).to(x0.device), denoise, schedule, generator)
        weighted.append(term / proposal[index].to(x0.device))
    weighted = torch.stack(weighted, 1)                                             # (B, samples)
    kl_sum = weighted.mean(1)
    spread = weighted.std(1) / math.sqrt(samples) if samples > 1 else torch.full_like(kl_sum, math.nan)
    total = prior + decoder + kl_sum
    return DiffusionBound(total / dims, spread / dims, prior / dims, decoder / dims, kl_sum / dims)


def importance_proposal(timesteps: Tensor, rms_bits: Tensor, steps: int, uniform_share: float = 0.1) -> Tensor:
    """r(t) ∝ √E[L_{t−1}²] over the code's timesteps 1 … T−1 (Nichol & Dhariwal Sec. 3.3, Eq. 18), from a pilot's
    root-mean-square term at a few increasing `timesteps` (all ≥ 1), interpolated linearly in log t / log L, mixed
    with a uniform share so that no weight 1/r(t) exceeds (T − 1)/uniform_share. Fixed before the evaluation's
    draws, it leaves the estimate unbiased whatever the pilot got wrong; it only changes the variance."""
    grid = torch.arange(1, steps, dtype=torch.float64).log()
    known_t, known = timesteps.double().log(), rms_bits.double().clamp(min=1e-12).log()
    slot = torch.searchsorted(known_t, grid).clamp(1, len(known_t) - 1)
    left, right = known_t[slot - 1], known_t[slot]
    weight = ((grid - left) / (right - left)).clamp(0, 1)            # flat beyond the pilot's first and last t
    shape = (known[slot - 1] + weight * (known[slot] - known[slot - 1])).exp()
    return (1 - uniform_share) * shape / shape.sum() + uniform_share / (steps - 1)


def diffusion_bound_full(x0: Tensor, denoise: Callable[[Tensor, Tensor], Tensor], schedule: DiffusionSchedule,
                         generator: torch.Generator | None = None) -> Tensor:
    """The bound's full sum over all T terms, per image in bits/dim (T network calls per image: small T only)."""
    n = len(x0)
    total = prior_bits(x0, schedule)
    for step in range(schedule.steps):
        total = total + step_bits(x0, torch.full((n,), step, dtype=torch.long, device=x0.device), denoise,
                                  schedule, generator)
    return total / x0[0].numel()


# ------------------------------------------------------------------------------------ out-of-distribution scores
def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """P(s_out > s_in) + ½ P(s_out = s_in) over all pairs (Mann-Whitney U / (n_in n_out)): higher score = more
    out-of-distribution. For each out-of-distribution score, the in-distribution scores below it and tied with it
    are counted by binary search in the sorted in-distribution scores."""
    inside, outside = torch.sort(in_scores.detach().double().flatten()).values, out_scores.detach().double().flatten()
    if len(inside) == 0 or len(outside) == 0:
        raise ValueError("auroc needs at least one score on each side")
    below = torch.searchsorted(inside, outside, side="left").double()
    tied = torch.searchsorted(inside, outside, side="right").double() - below
    return float((below + 0.5 * tied).sum() / (len(inside) * len(outside)))


def png_bits_per_dim(levels: Tensor) -> Tensor:
    """L(x)/D for each grey image of levels 0..255, (N, H, W) or (N, 1, H, W): the bits of its PNG file alone (Pillow,
    optimize=True: zlib's best level and filter search; the file's header and checksums included), per pixel."""
    images = levels.reshape(len(levels), *levels.shape[-2:]).round().clamp(0, LEVELS - 1).to(torch.uint8).numpy()
    sizes = []
    for image in images:
        file = io.BytesIO()
        Image.fromarray(image, "L").save(file, "PNG", optimize=True)
        sizes.append(8 * len(file.getvalue()) / image.size)
    return torch.tensor(sizes, dtype=torch.float64)


def percentiles(values: Tensor) -> list[float]:
    """The 0th, 1st, …, 100th percentiles of reference scores (linear interpolation between order statistics)."""
    return torch.quantile(values.detach().double().flatten(), torch.linspace(0, 1, 101, dtype=torch.float64)).tolist()


def share_below(reference: list[float], value: float) -> float:
    """The share of the reference scores below `value`, from their 101 percentiles: piecewise linear between two
    percentiles, 0 below the smallest and 1 above the largest."""
    if len(reference) != 101 or any(b < a for a, b in zip(reference, reference[1:])):
        raise ValueError("reference must be the 101 percentiles 0, 1, ..., 100, in order")
    return float(np.interp(value, reference, np.linspace(0, 1, 101)))
