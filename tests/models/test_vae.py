import dataclasses
import json
import math

import pytest
import torch

from core.config import TrainConfig
from core.hub import load_model
from core.models.vae import VAE, VAEConfig
from core.train import train

TINY = dict(image_size=8, width=8, hidden=32)


def test_kl_closed_form_equals_a_monte_carlo_estimate():
    """KL(q ‖ p) = E_q[log q(z) − log p(z)], estimated with 200k draws."""
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -1.5, 0.7]])
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1).mean()
    assert abs(float(VAE.kl(mu, logvar)) - float(monte_carlo)) < 0.02 * float(VAE.kl(mu, logvar))


def test_vamp_prior_density_is_the_mixture_of_the_pseudo_input_posteriors():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY, latent_dim=3, prior="vamp", pseudo_inputs=7))
    z = torch.randn(5, 4, 3) * 2
    mu, logvar = model.prior_components()
    components = torch.distributions.Normal(mu, (0.5 * logvar).exp())                      # (K, D)
    brute = torch.logsumexp(components.log_prob(z[..., None, :]).sum(-1), -1) - math.log(7)
    torch.testing.assert_close(model.log_prior(z), brute, rtol=1e-4, atol=1e-4)
    samples = model.prior_sample(model.prior(4000, seed=0), seed=0)
    nearest = torch.cdist(samples, mu).argmin(1)                      # each draw comes from some component
    assert len(nearest.unique()) == 7 and samples.shape == (4000, 3)


def test_vamp_kl_estimate_is_unbiased_against_a_one_component_closed_form():
    """With K = 1 the VampPrior is one Gaussian N(m, s²): the mean of log q(z|x) − log p(z) over draws of z is
    KL(N(μ, σ²) ‖ N(m, s²)) = ½ Σ (log s²/σ² + (σ² + (μ − m)²)/s² − 1)."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY, latent_dim=3, prior="vamp", pseudo_inputs=1))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        mu, logvar = model.encode(x)
        m, logs2 = model.prior_components()
        exact = 0.5 * (logs2 - logvar + (logvar.exp() + (mu - m).pow(2)) / logs2.exp() - 1).sum(1)
        estimate = torch.stack([model.losses(x)["kl"] for _ in range(4000)]).mean()
    assert abs(float(estimate) - float(exact.mean())) < 0.02 * float(exact.mean()) + 0.01
    loss = model.losses(x)["loss"]
    loss.backward()
    assert model.pseudo_inputs.grad.abs().sum() > 0                   # the pseudo-inputs are learned


def test_reparameterisation_passes_gradients_to_mu_and_sigma():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    VAE.reparameterize(mu, logvar).pow(2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", ["gaussian", "vamp"])
def test_importance_weighted_bound_is_tighter_than_the_elbo(digits, prior):
    """L_k ≥ ELBO (Burda et al., Theorem 1): −L_100 ≤ −ELBO, the ELBO averaged over 100 draws of z as well."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY, latent_dim=4, prior=prior, pseudo_inputs=20)).eval()
    x = next(digits.batches(64, seed=0, epoch=0)).images
    with torch.no_grad():
        neg_elbo = torch.stack([model.losses(x)["neg_elbo"] for _ in range(100)]).mean()
        neg_iwae = model.iwae_bound(x, 100).mean()
        neg_iwae_1 = torch.stack([model.iwae_bound(x, 1).mean() for _ in range(100)]).mean()
    assert neg_iwae < neg_elbo
    assert abs(float(neg_iwae_1 - neg_elbo)) < 0.02 * float(neg_elbo)       # k = 1 is the ELBO itself


@pytest.mark.parametrize("options", [dict(), dict(kind="ae"), dict(likelihood="gaussian"),
                                     dict(likelihood="gaussian_learned"), dict(beta=4.0, kl_warmup_steps=10),
                                     dict(prior="vamp", pseudo_inputs=50)])
def test_reconstructions_improve_during_a_short_training(options, digits):
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY, latent_dim=8, **options))
    model.configure_optimizers(TrainConfig(lr=3e-3))
    test = next(digits.batches(128, seed=1, epoch=0)).images
    error = lambda: float((model.eval().reconstruct(test) - test).pow(2).mean())
    before = error()
    model.train()
    for step, batch in enumerate(list(digits.batches(64, seed=0, epoch=0)) * 6):
        logs = model.training_step(batch, step)
        assert all(math.isfinite(float(v)) for v in logs.values())
    assert error() < 0.6 * before
    if options.get("likelihood") == "gaussian_learned":
        assert model.log_sigma.item() != pytest.approx(math.log(0.1))       # the variance was learned


def test_kl_warmup_scales_the_kl_term(digits):
    model = VAE(VAEConfig(**TINY, kl_warmup_steps=100, beta=2.0))
    x = next(digits.batches(16, seed=0, epoch=0)).images
    torch.manual_seed(0)
    start = model.losses(x, step=0)
    torch.manual_seed(0)
    half = model.losses(x, step=50)
    torch.testing.assert_close(start["loss"], start["reconstruction"])
    torch.testing.assert_close(half["loss"], half["reconstruction"] + 2.0 * 0.5 * half["kl"])


def test_latent_grid_is_a_plot_of_the_plane():
    """Row-major, z₁ rising left to right, z₂ rising bottom to top, over N(0, 1) quantiles."""
    model = VAE(VAEConfig(**TINY, latent_dim=2))
    seen = []
    decode = model.decode
    model.decode = lambda z: seen.append(z) or decode(z)
    grid = model.latent_grid(side=5)
    assert grid.shape == (25, 1, 8, 8)
    z, q = seen[0], VAE.grid_coordinates(5)
    assert q[0] < 0 < q[-1] and abs(float(q[2])) < 1e-6
    torch.testing.assert_close(z[0], torch.stack([q[0], q[-1]]))      # top left: lowest z₁, highest z₂
    torch.testing.assert_close(z[4], torch.stack([q[-1], q[-1]]))     # top right
    torch.testing.assert_close(z[24], torch.stack([q[-1], q[0]]))     # bottom right


def test_latent_tools_shapes_and_errors(digits):
    model = VAE(VAEConfig(**TINY, latent_dim=3)).eval()
    images = next(digits.batches(4, seed=0, epoch=0)).images
    assert model.sample(5, seed=1).shape == (5, 1, 8, 8)
    assert torch.equal(model.sample(5, seed=1), model.sample(5, seed=1))
    assert model.reconstruct(images).shape == images.shape
    path = model.interpolate(images[0], images[1], steps=6)
    assert path.shape == (6, 1, 8, 8)
    torch.testing.assert_close(path[0], model.reconstruct(images[:1])[0])
    torch.testing.assert_close(path[-1], model.reconstruct(images[1:2])[0])
    assert model.traverse(images[0], dim=2, steps=7).shape == (7, 1, 8, 8)
    means = model.encode_means(digits)
    assert means.shape == (len(digits), 3)                  # in the data's order, so labels line up with points
    torch.testing.assert_close(means[5], model.encode(digits.batch(slice(5, 6)).images)[0][0])
    with pytest.raises(ValueError, match=r"dim must lie in \[0, 2\]"):
        model.traverse(images[0], dim=3)
    with pytest.raises(ValueError, match="2-D latent"):
        model.latent_grid()
    with pytest.raises(ValueError, match="positive integer"):
        model.sample(0)


def test_training_run_round_trips_through_the_hub_folder(tiny_config):
    cfg = dataclasses.replace(tiny_config, eval_size=32)
    model = VAE(VAEConfig(**TINY, latent_dim=2, iwae_samples=5))
    run = train(model, cfg, "vae")
    loaded = load_model(run / "model")
    torch.testing.assert_close(loaded.sample(3, seed=2), model.eval().sample(3, seed=2))
    evaluation = json.loads((run / "model" / "eval.json").read_text())
    assert evaluation["neg_iwae"] <= evaluation["neg_elbo"] + 1.0 and "fid" in evaluation


def test_the_iwae_bound_rises_with_k_towards_the_exact_likelihood_of_a_tiny_vae():
    """A 1-D latent and 16 pixels: log p(x) = log ∫ N(z; 0, 1) p(x|z) dz by the trapezoid rule on [-12, 12] (two
    grids agree to 1e-9) is the exact answer; the importance-weighted bound L_k (mean over 20 draws) stays below it
    and rises with k: ELBO = L_1 < L_10 < L_100 < L_1000 ≤ log p(x) (Burda et al. 2015, Theorem 1)."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=1, likelihood="logistic", image_size=4, width=4, hidden=16)).double().eval()
    with torch.no_grad():                 # a decoder that depends strongly on z, with sharp pixels: a real gap
        model.decoder[0].weight.mul_(10)
        model.decoder[-1].bias[1] = -3.0
    x = torch.randint(0, 256, (1, 1, 4, 4), generator=torch.Generator().manual_seed(1)).double() / 127.5 - 1

    def exact(points: int) -> float:
        z = torch.linspace(-12, 12, points, dtype=torch.float64)[:, None]
        with torch.no_grad():
            log_px_z = -model.reconstruction_nll(model.decode_logits(z), ((x + 1) / 2).repeat(points, 1, 1, 1))
        weights = torch.ones(points, dtype=torch.float64)
        weights[[0, -1]] = 0.5
        log_joint = log_px_z - 0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi) + weights.log()
        return float(torch.logsumexp(log_joint, 0)) + math.log(24 / (points - 1))

    log_px = exact(48001)
    assert log_px == pytest.approx(exact(24001), abs=1e-9)
    bounds = [float(torch.stack([-model.iwae_bound(x, k, torch.Generator().manual_seed(r)) for r in range(20)]).mean())
              for k in (1, 10, 100, 1000)]
    assert bounds == sorted(bounds) and bounds[-1] <= log_px and log_px - bounds[-1] < 0.15 < log_px - bounds[0]


def test_a_logistic_decoder_gives_bits_per_dim_and_a_grey_value_density_refuses():
    """The logistic decoder's −log P(k|z) sums over pixels to what core.likelihood gives pixel by pixel; bits/dim is
    −L_k/(D ln 2) and only for a decoder over 8-bit levels."""
    from core.likelihood import discretized_logistic_log_likelihood
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=2, likelihood="logistic", image_size=8, width=4, hidden=16)).eval()
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1
    out = model.decode_logits(torch.randn(3, 2))
    expected = -discretized_logistic_log_likelihood(x, out[:, :1], out[:, 1:].clamp(min=-7)).flatten(1).sum(1)
    torch.testing.assert_close(model.reconstruction_nll(out, (x + 1) / 2), expected)
    bits = model.bits_per_dim(x, generator=torch.Generator().manual_seed(0), k=8)
    first = model.iwae_bound(x[:1], 8, torch.Generator().manual_seed(0))
    assert bits.shape == (3,) and float(bits[0]) == pytest.approx(float(first) / (64 * math.log(2)), rel=1e-6)
    assert model.decode(torch.zeros(1, 2)).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="distribution over 8-bit levels"):
        VAE(VAEConfig(latent_dim=2, image_size=8, width=4, hidden=16)).bits_per_dim(x)
    with pytest.raises(ValueError, match="likelihood='logistic' needs kind='vae'"):     # its decoder has one output
        VAE(VAEConfig(latent_dim=2, likelihood="logistic", kind="ae", image_size=8, width=4, hidden=16))
