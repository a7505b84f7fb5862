"""core/likelihood.py against answers known in closed form: a uniform model scores 8 bits/dim, factorised models
score their entropy, the 256 bins of the discretized Gaussian and logistic hold all the mass, and the DDPM bound of an oracle
denoiser on a one-image dataset is the sum its parts should be."""
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core import likelihood as lk
from core.schedulers import DDPMScheduler

D = 28 * 28


def images_from_levels(levels: torch.Tensor) -> torch.Tensor:
    return levels.float() / 127.5 - 1                                     # the loop's scale


def test_uniform_model_scores_eight_bits_every_way():
    levels = torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    discrete = lk.discrete_bits_per_dim(torch.full((5,), -D * math.log(256), dtype=torch.float64), D)
    torch.testing.assert_close(discrete, torch.full((5,), 8.0, dtype=torch.float64))
    for data_range, log_p in (((0.0, 1.0), 0.0), ((-1.0, 1.0), -D * math.log(2))):      # p = 1 on [0, 1]^D, 2^−D
        bpd = lk.continuous_bits_per_dim(images_from_levels(levels), lambda y: torch.full((len(y),), log_p),
                                         data_range, torch.Generator().manual_seed(1))
        torch.testing.assert_close(bpd, torch.full((5,), 8.0, dtype=torch.float64))
    assert lk.BitsPerDim.of(discrete, "exact").mean == 8.0


def test_dequantize_stays_in_its_bin():
    levels = torch.arange(256.0).view(1, 1, 16, 16)
    for low, high in ((0.0, 1.0), (-1.0, 1.0)):
        y = lk.dequantize(levels, (low, high), torch.Generator().manual_seed(0))
        assert torch.equal(torch.floor((y - low) / (high - low) * 256), levels.double())
    assert torch.equal(lk.pixel_levels(images_from_levels(levels)), levels.double())


def factorised_categorical(seed: int = 0, pixels: int = 16):
    """Per-pixel probabilities over 256 levels, images drawn from them, and the entropy in bits per pixel."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(pixels, 256, generator=gen, dtype=torch.float64), 1)
    entropy_bits = float(-(probs * probs.log()).sum() / (pixels * math.log(2)))
    return probs, entropy_bits, gen


def test_discrete_model_scores_its_entropy():
    """Images drawn from a factorised categorical model: mean −log₂ P(k)/D is its entropy per pixel."""
    probs, entropy_bits, gen = factorised_categorical()
    levels = torch.multinomial(probs, 4000, replacement=True, generator=gen).T           # (N, D)
    log_prob = probs.log().gather(1, levels.T).T.sum(1)
    result = lk.BitsPerDim.of(lk.discrete_bits_per_dim(log_prob, probs.shape[0]), "exact")
    assert abs(result.mean - entropy_bits) < 4 * result.standard_error
    assert result.kind == "exact" and result.images == 4000 and "bits/dim" in str(result)


def test_histogram_density_makes_dequantization_exact():
    """A density constant on each bin (P(k)·256 on [k/256, (k+1)/256)) gives −log₂ P(k)/D for every draw of u."""
    probs, _, gen = factorised_categorical(1)
    levels = torch.multinomial(probs, 50, replacement=True, generator=gen).T
    exact = lk.discrete_bits_per_dim(probs.log().gather(1, levels.T).T.sum(1), probs.shape[0])

    def log_density(y):
        bins = torch.floor(y * 256).long().clamp(0, 255)
        return (probs.log().gather(1, bins.T).T + math.log(256)).sum(1)
    torch.testing.assert_close(lk.continuous_bits_per_dim(levels.double() / 127.5 - 1, log_density, (0.0, 1.0)),
                               exact)


def test_factorised_gaussian_bound_is_above_and_near_the_exact_figure():
    """A Gaussian density N(128, 30²) in level units on [-1, 1]: its dequantized bound, averaged over draws of u,
    lies above −log₂ P(k)/D of the same Gaussian integrated over the bins (Jensen) and close to it (wide bins)."""
    mean, std = 128 / 128 - 1, 30 / 128                                  # in [-1, 1] units, bin width 1/128
    levels = torch.arange(256.0)
    edges = (torch.cat([levels, torch.tensor([256.0])]) / 128 - 1 - mean) / std
    mass = torch.special.ndtr(edges[1:].double()) - torch.special.ndtr(edges[:-1].double())
    mass = mass / mass.sum()                                             # the discretised model (truncated)
    exact_bits = float(-(mass * mass.log()).sum() / math.log(2))         # its entropy, per pixel
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), std)
    log_norm = math.log(float(mass.sum()) * (torch.special.ndtr(edges[-1]) - torch.special.ndtr(edges[0])))
    gen = torch.Generator().manual_seed(0)
    k = torch.multinomial(mass, 20000 * 4, replacement=True, generator=gen).view(20000, 4).double()
    bound = lk.continuous_bits_per_dim(images_from_levels(k), lambda x: (normal.log_prob(x) - log_norm).sum(1),
                                       (-1.0, 1.0), gen)
    result = lk.BitsPerDim.of(bound, "bound")
    assert exact_bits - 3 * result.standard_error < result.mean < exact_bits + 0.01


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.3, -6.0), (-1.0, -5.5), (1.0, 0.0), (4.0, -1.0),
                                             (-0.5, -9.0), (0.99, -7.0)])
@pytest.mark.parametrize("distribution", ["gaussian", "logistic"])
def test_discretized_distributions_sum_to_one_over_the_256_bins(mean, log_scale, distribution):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    log_likelihood = getattr(lk, f"discretized_{distribution}_log_likelihood")
    log_p = log_likelihood(x, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64))
    assert torch.isfinite(log_p).all() or log_scale <= -7.0          # tiny σ: far bins underflow to −∞, not NaN
    assert not torch.isnan(log_p).any()
    assert abs(float(log_p.exp().sum()) - 1) < 1e-9


def test_discretized_logistic_matches_sigmoid_differences_and_stays_finite_far_out():
    x, mean, log_scale = (torch.tensor(v, dtype=torch.float64) for v in ([0.2, -1.0, 1.0], [0.1, -0.9, 0.95], -2.0))
    h, cdf = 1 / 255, lambda value, i: torch.sigmoid((torch.tensor(value, dtype=torch.float64) - mean[i]) / math.exp(-2))
    expected = torch.stack([cdf(0.2 + h, 0) - cdf(0.2 - h, 0), cdf(-1 + h, 1), 1 - cdf(1 - h, 2)]).log()
    torch.testing.assert_close(lk.discretized_logistic_log_likelihood(x, mean, log_scale), expected)
    far = lk.discretized_logistic_log_likelihood(torch.tensor([0.9]), torch.tensor([-0.9]), torch.tensor(-3.0))
    z = (1.8 - h) / math.exp(-3.0)                      # 36 scales away: log P ≈ −z + log(1 − e^{−2h/s}), not −∞
    assert torch.isfinite(far).all() and float(far) == pytest.approx(-z + math.log(-math.expm1(-2 * h / math.exp(-3))),
                                                                   abs=1e-3)


def test_discretized_gaussian_matches_cdf_differences_and_stays_finite_far_out():
    x, mean, log_scale = torch.tensor([0.2, -1.0, 1.0]), torch.tensor([0.1, -0.9, 0.95]), torch.tensor(-2.0)
    scale, h = math.exp(-2.0), 1 / 255
    normal = torch.distributions.Normal(mean.double(), scale)
    def cdf(value, i):
        return normal.cdf(torch.tensor(value, dtype=torch.float64))[i]
    expected = torch.stack([cdf(0.2 + h, 0) - cdf(0.2 - h, 0), cdf(-1 + h, 1), 1 - cdf(1 - h, 2)]).log()
    torch.testing.assert_close(lk.discretized_gaussian_log_likelihood(x.double(), mean.double(),
                                                                      log_scale.double()), expected)
    far = lk.discretized_gaussian_log_likelihood(torch.tensor([0.9, -0.9], dtype=torch.float64),
                                                 torch.tensor([-0.9, 0.9], dtype=torch.float64),
                                                 torch.tensor(-3.0, dtype=torch.float64))
    near_edge = (1.8 - h) / math.exp(-3.0)                               # 36σ away: log P ≈ −z²/2, not −∞
    assert torch.isfinite(far).all() and (far < -near_edge ** 2 / 2).all() and (far > -near_edge ** 2 / 2 - 10).all()


def test_normal_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2, v1, v2 = (torch.randn(100, generator=gen, dtype=torch.float64) for _ in range(4))
    ours = lk.normal_kl(m1, v1, m2, v2)
    theirs = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * v1).exp()),
                                               torch.distributions.Normal(m2, (0.5 * v2).exp()))
    torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------------------------------ the DDPM bound
def schedule(variance: str = "small", steps: int = 20) -> lk.DiffusionSchedule:
    return lk.DiffusionSchedule(DDPMScheduler(num_train_timesteps=steps,
                                              beta_schedule="squaredcos_cap_v2").alphas_cumprod, variance)


def one_image() -> torch.Tensor:
    levels = torch.randint(0, 256, (1, 1, 6, 6), generator=torch.Generator().manual_seed(3))
    levels[0, 0, 0, :3] = torch.tensor([0, 255, 0])                       # both edge bins appear
    return images_from_levels(levels)


def oracle(x0: torch.Tensor):
    """On a one-image dataset the Bayes denoiser E[x_0|x_t] is that image, whatever x_t is."""
    return lambda x_t, t: x0.expand_as(x_t)


def step_terms(x0, denoise, sched, gen=None):
    return torch.stack([lk.step_bits(x0, torch.tensor([t]), denoise, sched, gen)[0] for t in range(sched.steps)])


def test_oracle_kl_terms_vanish_with_the_posterior_variance():
    x0, sched = one_image(), schedule("small")
    terms = step_terms(x0, oracle(x0), sched, torch.Generator().manual_seed(0))
    assert terms[1:].abs().max() < 1e-9                                   # μ_θ = μ̃ and σ_t² = β̃_t: KL = 0


def test_oracle_kl_terms_with_beta_are_the_variance_mismatch():
    """σ_t² = β_t ≠ β̃_t: each KL is ½(log β/β̃ + β̃/β − 1) per pixel, whatever x_t."""
    x0, sched = one_image(), schedule("large")
    abar = sched.alphas_cumprod.double()
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta = 1 - abar / abar_prev
    tilde = beta * (1 - abar_prev) / (1 - abar)
    expected = 0.5 * ((beta / tilde).log() + tilde / beta - 1) * x0.numel() / math.log(2)
    torch.testing.assert_close(step_terms(x0, oracle(x0), sched)[1:], expected[1:])


def test_oracle_decoder_and_prior_are_their_closed_forms():
    x0, sched = one_image(), schedule("small")
    abar = sched.alphas_cumprod.double()
    tilde_2 = (1 - abar[0]) * (1 - abar[1] / abar[0]) / (1 - abar[1])      # σ_1² = β̃_2
    h = (1 / 255) / tilde_2.sqrt()
    edge = (x0 == -1) | (x0 == 1)
    mass = torch.where(edge, torch.special.ndtr(h), torch.special.ndtr(h) - torch.special.ndtr(-h))
    torch.testing.assert_close(step_terms(x0, oracle(x0), sched)[0], -mass.log().sum() / math.log(2))
    abar_T = abar[-1]
    prior = 0.5 * (abar_T * x0.double() ** 2 + (1 - abar_T) - 1 - torch.log(1 - abar_T)).sum() / math.log(2)
    torch.testing.assert_close(lk.prior_bits(x0, sched)[0], prior)


def test_oracle_bound_is_its_decoder_and_prior():
    x0, sched = one_image(), schedule("small")
    bound = lk.diffusion_bound(x0, oracle(x0), sched, samples=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bound.bits_per_dim, bound.prior + bound.decoder)
    assert float(bound.kl_terms.abs().max()) < 1e-12 and float(bound.sampling_error.max()) < 1e-12


def shrinking_denoiser(x_t, t):
    """A poor but deterministic model: x̂_0 = clamp(0.8 x_t)."""
    return (0.8 * x_t).clamp(-1, 1)


@pytest.mark.parametrize("importance", [False, True])
def test_sampled_bound_agrees_with_the_full_sum(importance):
    """T = 20: the full sum (each term averaged over 400 draws of x_t) against 200 sampled timesteps per image,
    uniform or importance-sampled, within three standard errors."""
    x0, sched = one_image().expand(400, -1, -1, -1), schedule("large")
    full = float(lk.diffusion_bound_full(x0, shrinking_denoiser, sched, torch.Generator().manual_seed(0)).mean())
    proposal = None
    if importance:
        pilot_t = torch.tensor([1, 2, 4, 8, 16, 19])
        pilot = torch.stack([lk.step_bits(x0[:50], torch.full((50,), int(t)), shrinking_denoiser, sched)
                             .pow(2).mean().sqrt() for t in pilot_t])
        proposal = lk.importance_proposal(pilot_t, pilot, sched.steps)
    bound = lk.diffusion_bound(x0[:1], shrinking_denoiser, sched, samples=200, proposal=proposal,
                               generator=torch.Generator().manual_seed(1))
    assert abs(float(bound.bits_per_dim[0]) - full) < 3 * float(bound.sampling_error[0])
    assert float(bound.sampling_error[0]) < 0.05 * full


def test_importance_proposal_is_a_distribution_that_follows_the_pilot():
    proposal = lk.importance_proposal(torch.tensor([1, 10, 100, 999]), torch.tensor([1.0, 0.1, 0.01, 0.001]), 1000)
    assert proposal.shape == (999,) and abs(float(proposal.sum()) - 1) < 1e-12 and bool((proposal > 0).all())
    assert proposal[0] > 10 * proposal[500] and float(proposal.min()) >= 0.1 / 999 - 1e-15


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        lk.BitsPerDim.of(torch.ones(3), "approximate")
    with pytest.raises(ValueError):
        lk.DiffusionSchedule(torch.ones(3), "learned")
    with pytest.raises(ValueError):
        lk.diffusion_bound(one_image(), shrinking_denoiser, schedule(), 2, proposal=torch.ones(19))


def test_auroc_counts_pairs_and_ties_half():
    # in = (1, 2, 3), out = (2, 4): pairs out > in: 2>1, 4>1, 4>2, 4>3 = 4; ties: 2=2 counts ½; 6 pairs → 4.5/6.
    assert lk.auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0])) == pytest.approx(4.5 / 6)
    assert lk.auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0           # perfectly separated
    assert lk.auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0           # pointing the wrong way
    assert lk.auroc(torch.ones(3), torch.ones(4)) == 0.5                                  # all tied
    with pytest.raises(ValueError):
        lk.auroc(torch.tensor([]), torch.ones(2))


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    gen = torch.Generator().manual_seed(0)
    inside = torch.randint(0, 20, (300,), generator=gen).double()                        # many ties
    outside = torch.randint(3, 25, (200,), generator=gen).double()
    labels = [0] * len(inside) + [1] * len(outside)
    expected = roc_auc_score(labels, torch.cat([inside, outside]).numpy())
    assert lk.auroc(inside, outside) == pytest.approx(expected, abs=1e-12)


def test_png_length_is_the_files_bits_and_the_file_decodes_to_the_image():
    noise = torch.randint(0, 256, (28, 28), generator=torch.Generator().manual_seed(0))
    levels = torch.stack([torch.zeros(28, 28, dtype=torch.long), noise])
    bits = lk.png_bits_per_dim(levels)
    for image, figure in zip(levels, bits):
        file = io.BytesIO()
        Image.fromarray(image.to(torch.uint8).numpy(), "L").save(file, "PNG", optimize=True)
        assert figure == 8 * len(file.getvalue()) / D
        assert (torch.from_numpy(np.array(Image.open(file))) == image.to(torch.uint8)).all()
    assert bits[0] < 1 < 8 < bits[1]           # a black page costs little more than the header; noise over 8 bits
    torch.testing.assert_close(lk.png_bits_per_dim(levels[:, None]), bits, rtol=0, atol=0)   # (N, 1, H, W) too


def test_share_below_reads_the_percentiles():
    reference = lk.percentiles(torch.arange(1001, dtype=torch.float64))           # 0, 10, ..., 1000
    assert reference == pytest.approx([10.0 * k for k in range(101)])
    assert lk.share_below(reference, 500) == pytest.approx(0.5)
    assert lk.share_below(reference, 505) == pytest.approx(0.505)
    assert lk.share_below(reference, -1) == 0.0 and lk.share_below(reference, 2000) == 1.0
    with pytest.raises(ValueError, match="101 percentiles"):
        lk.share_below(reference[::-1], 5)
    with pytest.raises(ValueError, match="101 percentiles"):
        lk.share_below(reference[:50], 5)
