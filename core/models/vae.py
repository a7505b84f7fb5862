"""Autoencoders: the VAE (Kingma & Welling 2013), β-VAE (Higgins et al. 2017), and a plain MSE autoencoder.

Pixels are read as intensities x ∈ [0, 1] (the loop's [-1, 1] images, rescaled). With encoder q_φ(z|x) =
N(μ_φ(x), diag σ²_φ(x)), prior p(z) = N(0, I) and decoder p_θ(x|z), the VAE maximises the ELBO (Eq. 3 and 10):
    log p(x) ≥ ELBO = E_q[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z))
    KL = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)                                (Appendix B, closed form)
    z = μ + σ ⊙ ε,  ε ~ N(0, I)                                            (reparameterisation, Sec. 2.4)
Reconstruction terms, −log p_θ(x|z) summed over pixels (nats):
    bernoulli         Σ −x log x̂ − (1 − x) log(1 − x̂)        (x̂ = sigmoid(decoder logits); x is grey, not binary,
                                                             so this is a "nats" figure in the usual loose sense)
    gaussian          Σ (x − x̂)² / 2s² + ½ log 2πs²           with a fixed s (gaussian_sigma)
    gaussian_learned  the same with log s a learned scalar
    logistic          −Σ log P(k) of each pixel's 8-bit level k under a logistic of per-pixel location and scale
                      (the decoder's two output channels) integrated over k's bin (core.likelihood): a proper
                      distribution over the 256 levels, so −L_k/(D ln 2) bounds the bits/dim −log₂ P(k)/D from above
β-VAE: loss = −E_q[log p(x|z)] + β · w_t · KL, with w_t = min(1, t / kl_warmup_steps) (KL annealing, Bowman et al.
2016). The reported −ELBO always uses β = 1. The importance-weighted bound (Burda et al. 2015, Eq. 8) is tighter:
    log p(x) ≥ L_k = E[log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x)],  z_i ~ q(z|x),  so −L_k ≤ −ELBO (k = 100 here).
VampPrior (Tomczak & Welling 2018), prior="vamp": p(z) = (1/K) Σ_k q_φ(z|u_k), a mixture of the encoder's own
posteriors at K learned pseudo-inputs u_k (here u_k = tanh(w_k), in the image range; the paper passes learned
inputs through a hard tanh). It has no closed-form KL, so the KL term is the one-sample Monte Carlo
estimate log q(z|x) − log p(z) at the reparameterised z (its mean is the KL); sampling picks k uniformly and draws
z ~ q(z|u_k). Why here: N(0, I) leaves holes where the aggregate posterior has little mass, and decoding the
prior's draws there under-samples thin, rare shapes (Fashion-MNIST's sandals: 1.7% of the N(0, I) samples).
The plain autoencoder (kind="ae") maps x to z = μ(x) with no noise or KL and minimises the mean squared error; the
blur of its (and any MSE-trained model's) outputs is the conditional mean of all images that share a code.

Encoder: conv4x4/2 (w) → conv4x4/2 (2w) → linear 256 → (μ, log σ²);  decoder: the mirror with transposed convs.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.likelihood import discretized_logistic_log_likelihood
from core.metrics import Yardstick
from core.model import TrainableModel

KINDS = ("vae", "ae")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "logistic")
MIN_LOG_SCALE = -7.0             # the logistic decoder's scale floor (PixelCNN++ clamps at the same)
PRIORS = ("gaussian", "vamp")
PLANE_QUANTILES = (0.05, 0.95)   # the latent-plane grid spans these N(0, 1) quantiles on each axis


@dataclass(frozen=True)
class VAEConfig:
    kind: str = option("vae", "vae (Kingma & Welling 2013) or ae (plain autoencoder trained with MSE)", choices=KINDS)
    latent_dim: int = option(16, "size of z (2 for the latent-plane picture)")
    beta: float = option(1.0, "weight of the KL term (β-VAE, Higgins et al. 2017; 1 is the VAE)")
    kl_warmup_steps: int = option(0, "KL annealing: the KL weight rises linearly from 0 over this many steps")
    likelihood: str = option("bernoulli", "decoder distribution p(x|z)", choices=LIKELIHOODS)
    gaussian_sigma: float = option(0.1, "s of the fixed-variance Gaussian likelihood, in [0, 1] pixel units")
    width: int = option(32, "channels of the first conv (doubled in the second)")
    hidden: int = option(256, "size of the fully connected layer on each side")
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side, a multiple of 4 (8 for the digits)")
    iwae_samples: int = option(100, "k of the importance-weighted bound in evaluation (Burda et al.: 5000; 100 here)")
    prior: str = option("gaussian", "p(z): gaussian N(0, I), or vamp (VampPrior, a mixture over pseudo-inputs)",
                        choices=PRIORS)
    pseudo_inputs: int = option(500, "K, the VampPrior's number of learned pseudo-inputs (Tomczak & Welling: 500)")


class VAE(TrainableModel):
    """VAE, β-VAE or plain autoencoder with a convolutional encoder and decoder."""
    config_class = VAEConfig
    pipeline_tag = "unconditional-image-generation"
    likelihood_kind = "bound"          # what bits_per_dim gives: −L_k, with a logistic decoder only
    card_description = """
An autoencoder family model trained from scratch with genlab (`core/models/vae.py`): a variational autoencoder
(Kingma & Welling 2013; β-VAE when β ≠ 1) or a plain autoencoder trained with mean squared error. Negative ELBO and
the importance-weighted bound are in nats per image on the test set, with pixels read as intensities in [0, 1]
(Fashion-MNIST is grey, not binary, so these nats compare genlab models with each other, not with binarised-MNIST
papers). FID, KID and coverage use the features of genlab's Fashion-MNIST classifier (`checkpoints/classifier`).
"""
    card_samples_caption = "Decoder means of z ~ p(z) (N(0, I), or the VampPrior) at the run's fixed latent points."

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        if config.kind not in KINDS or config.likelihood not in LIKELIHOODS or config.image_size % 4:
            raise ValueError(f"kind must be one of {KINDS}, likelihood one of {LIKELIHOODS}, image_size a multiple of 4")
        if config.prior not in PRIORS or (config.prior == "vamp" and (config.kind != "vae" or config.pseudo_inputs < 1)):
            raise ValueError(f"prior must be one of {PRIORS}; the VampPrior needs kind='vae' and pseudo_inputs >= 1")
        if config.kind == "ae" and config.likelihood == "logistic":
            raise ValueError("the autoencoder decodes one image (its MSE loss), not a logistic distribution: "
                             "likelihood='logistic' needs kind='vae'")
        self.config = c = config
        s, w = c.image_size // 4, c.width
        self.encoder = nn.Sequential(
            nn.Conv2d(c.channels, w, 4, 2, 1), nn.LeakyReLU(0.2),                                  # (B, w, S/2, S/2)
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),                         # (B, 2w·S²/16)
            nn.Linear(2 * w * s * s, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, c.latent_dim * (2 if c.kind == "vae" else 1)))
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim, c.hidden), nn.LeakyReLU(0.2),
            nn.Linear(c.hidden, 2 * w * s * s), nn.LeakyReLU(0.2), nn.Unflatten(1, (2 * w, s, s)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(w, c.channels * (2 if c.likelihood == "logistic" else 1), 4, 2, 1))  # (and log s)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(c.gaussian_sigma)),
                                      requires_grad=c.likelihood == "gaussian_learned")
        if c.prior == "vamp":             # u_k = tanh(w_k), images in [-1, 1]; w_k start near 0 (grey images)
            self.pseudo_inputs = nn.Parameter(0.1 * torch.randn(c.pseudo_inputs, c.channels, c.image_size,
                                                                c.image_size, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("fixed_latents", self.prior(64, seed=1234))     # ε of the grids' fixed latent points

    # -------------------------------------------------------------------------------------------- the model
    def prior(self, n: int, seed: int) -> Tensor:
        """Standard normal noise ε (n, D): z itself for the N(0, I) prior; see prior_sample for the VampPrior."""
        return torch.randn(n, self.config.latent_dim, generator=torch.Generator().manual_seed(seed))

    def prior_components(self) -> tuple[Tensor, Tensor]:
        """VampPrior: (μ_k, log σ²_k) of q(z|u_k) at the K pseudo-inputs, each (K, D)."""
        return self.encode(torch.tanh(self.pseudo_inputs))

    def prior_sample(self, noise: Tensor, seed: int) -> Tensor:
        """z ~ p(z) from ε ~ N(0, I): z = ε, or for the VampPrior z = μ_k + σ_k ε with k uniform in 1..K."""
        if self.config.prior == "gaussian":
            return noise
        mu, logvar = self.prior_components()
        k = torch.randint(len(mu), (len(noise),), generator=torch.Generator().manual_seed(seed)).to(mu.device)
        return mu[k] + (0.5 * logvar[k]).exp() * noise.to(mu.device)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) for z of shape (..., D). VampPrior: log (1/K) Σ_k N(z; μ_k, σ²_k), the squared distances to
        all K components as matrix products, in float32 (bf16 would cancel them away)."""
        log_2pi = math.log(2 * math.pi)
        if self.config.prior == "gaussian":
            return -0.5 * (z.pow(2) + log_2pi).sum(-1)
        with torch.autocast(z.device.type, enabled=False):
            mu, logvar = (t.float() for t in self.prior_components())
            flat, precision = z.float().reshape(-1, z.shape[-1]), (-logvar).exp()                # (N, D), (K, D)
            squared = flat.pow(2) @ precision.T - 2 * flat @ (mu * precision).T + (mu.pow(2) * precision).sum(1)
            log_normal = -0.5 * (squared + logvar.sum(1) + z.shape[-1] * log_2pi)                # (N, K)
            return (torch.logsumexp(log_normal, 1) - math.log(len(mu))).reshape(z.shape[:-1])

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x in [-1, 1] -> (μ, log σ²) of q(z|x); for the plain autoencoder, (z, None)."""
        h = self.encoder(x)
        if self.config.kind == "ae":
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean E[x|z], as an image in [-1, 1]."""
        out = self.decode_logits(z)
        if self.config.likelihood == "logistic" and self.config.kind == "vae":
            return out[:, :self.config.channels].clamp(-1, 1)                 # the location, already in [-1, 1]
        sigmoid = self.config.likelihood == "bernoulli" or self.config.kind == "ae"
        mean = torch.sigmoid(out) if sigmoid else out.clamp(0, 1)
        return mean * 2 - 1

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """z = μ + σ ⊙ ε (Sec. 2.4): the sample is a differentiable function of μ and σ."""
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) per image, closed form (Appendix B)."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)

    def reconstruction_nll(self, out: Tensor, x01: Tensor) -> Tensor:
        """−log p(x|z) per image, summed over pixels (nats); `out` is the decoder output, x01 the target in [0, 1]."""
        if self.config.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, x01, reduction="none").flatten(1).sum(1)
        if self.config.likelihood == "logistic":
            mean, log_scale = out.chunk(2, dim=1)
            x = torch.round(x01 * 255) / 127.5 - 1                                 # the pixel's level, exactly
            log_p = discretized_logistic_log_likelihood(x, mean, log_scale.clamp(min=MIN_LOG_SCALE))
            return -log_p.flatten(1).sum(1)
        log_s = self.log_sigma
        return (0.5 * (x01 - out).pow(2) / (2 * log_s).exp() + log_s + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    # ------------------------------------------------------------------------------------------- training
    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        return {"model": self.optimizer}

    def losses(self, x: Tensor, step: int | None = None) -> dict[str, Tensor]:
        """Per-batch means: the training loss, and (VAE) its reconstruction and KL parts."""
        x01 = (x + 1) / 2
        mu, logvar = self.encode(x)
        if self.config.kind == "ae":
            mse = F.mse_loss(torch.sigmoid(self.decode_logits(mu)), x01)
            return {"loss": mse, "mse": mse.detach()}
        z = self.reparameterize(mu, logvar)
        nll = self.reconstruction_nll(self.decode_logits(z), x01)
        if self.config.prior == "gaussian":
            kl = self.kl(mu, logvar)
        else:                                               # one-sample estimate log q(z|x) − log p(z)
            log_q = -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(1)
            kl = log_q - self.log_prior(z)
        warm = 1.0 if step is None or not self.config.kl_warmup_steps else min(1.0, step / self.config.kl_warmup_steps)
        loss = (nll + self.config.beta * warm * kl).mean()
        return {"loss": loss, "reconstruction": nll.mean().detach(), "kl": kl.mean().detach(),
                "neg_elbo": (nll + kl).mean().detach()}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        parts = self.losses(batch.images, step)
        loss = self.optimizer_step(self.optimizer, parts.pop("loss"))
        return {"loss/total": loss, **{f"loss/{k}": v for k, v in parts.items()}}

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def iwae_bound(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """−L_k per image (Burda et al., Eq. 8), with log-sum-exp over the k importance samples."""
        x01 = (x + 1) / 2
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn(k, *mu.shape, generator=generator).to(x.device)
        z = mu + std * eps                                                         # (k, B, D)
        out = self.decode_logits(z.flatten(0, 1))
        log_px_z = -self.reconstruction_nll(out, x01.repeat(k, 1, 1, 1)).view(k, -1)
        log_pz = self.log_prior(z)
        log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
        return -(torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k))

    @torch.no_grad()
    def bits_per_dim(self, images: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None,
                     k: int | None = None) -> Tensor:
        """−L_k / (D ln 2) per image (k: the config's iwae_samples): an upper bound on −log₂ P(k)/D, for a decoder that
        is a distribution over the 8-bit levels (likelihood="logistic"); labels are not used."""
        if self.config.likelihood != "logistic" or self.config.kind != "vae":
            raise ValueError(f"bits/dim needs a VAE whose decoder is a distribution over 8-bit levels (likelihood="
                             f"'logistic'), not {self.config.likelihood!r}: that is a density of grey values")
        bound = torch.cat([self.iwae_bound(images[i:i + 1], k or self.config.iwae_samples, generator)
                           for i in range(len(images))])
        return bound.double() / (images[0].numel() * math.log(2))

    @torch.no_grad()
    def likelihood_bounds(self, data: ImageData, batch_size: int = 100, iwae: bool = True) -> dict[str, float]:
        """Test-set −ELBO and −L_k in nats per image (VAE), and the mean squared error of decode(μ(x)) per pixel in
        [0, 1] units (both kinds), on `data`."""
        device = self.fixed_latents.device
        sums = {}
        for batch in data.batches(batch_size, seed=0, epoch=0, drop_last=False):
            x = batch.images.to(device)
            parts = self.losses(x)
            mse = ((self.decode(self.encode(x)[0]) - x) / 2).pow(2).mean()        # decode(μ(x)) in [0, 1] units
            values = {"mse": mse} if self.config.kind == "ae" else {
                "neg_elbo": parts["neg_elbo"], "reconstruction": parts["reconstruction"], "kl": parts["kl"], "mse": mse}
            if iwae and self.config.kind == "vae":
                values["neg_iwae"] = self.iwae_bound(x, self.config.iwae_samples).mean()
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(x)
        return {name: total / len(data) for name, total in sums.items()}

    def eval_images(self, data: ImageData) -> Tensor:
        return self.decode(self.prior_sample(self.fixed_latents, seed=1234)).cpu()

    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None,
                 samples: tuple[Tensor, None] | None = None) -> dict[str, float]:
        """Likelihood bounds (or MSE), and the yardstick's figures of len(data) prior samples."""
        return {**self.likelihood_bounds(data), **super().evaluate(data, yardstick, samples)}

    def evaluation_samples(self, n: int) -> tuple[Tensor, None]:
        return self.sample(n, seed=0), None

    # ------------------------------------------------------------------------------- latent tools for the apps
    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch_size: int = 1000) -> Tensor:
        """Decoder means of n draws z ~ p(z). For the plain autoencoder (N(0, I)) this shows why it is no generator."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        z = self.prior_sample(self.prior(n, seed).to(self.fixed_latents.device), seed)
        return torch.cat([self.decode(z[i:i + batch_size]).cpu() for i in range(0, n, batch_size)])

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(μ(x)): the mean reconstruction, no sampling."""
        return self.decode(self.encode(x.to(self.fixed_latents.device))[0]).cpu()

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
        """decode((1 − t) μ(a) + t μ(b)) for t from 0 to 1: a path between two real images through the latent space."""
        mu = self.encode(torch.stack([x_a, x_b]).to(self.fixed_latents.device))[0]
        t = torch.linspace(0, 1, steps, device=mu.device)[:, None]
        return self.decode(mu[0] + t * (mu[1] - mu[0])).cpu()

    @torch.no_grad()
    def traverse(self, x: Tensor, dim: int, span: float = 3.0, steps: int = 9) -> Tensor:
        """Vary latent coordinate `dim` of μ(x) from −span to span, the others fixed (Higgins et al., Fig. 1)."""
        if not 0 <= dim < self.config.latent_dim:
            raise ValueError(f"dim must lie in [0, {self.config.latent_dim - 1}], got {dim}")
        mu = self.encode(x[None].to(self.fixed_latents.device))[0].repeat(steps, 1)
        mu[:, dim] = torch.linspace(-span, span, steps)
        return self.decode(mu).cpu()

    @torch.no_grad()
    def latent_grid(self, side: int = 15, low: float = PLANE_QUANTILES[0], high: float = PLANE_QUANTILES[1]) -> Tensor:
        """2-D latent only: decoded z on a side x side grid of N(0, 1) quantiles (Kingma & Welling, Fig. 4), in
        row-major order with z₁ rising left to right and z₂ rising bottom to top, as in a plot of the plane."""
        if self.config.latent_dim != 2:
            raise ValueError("the latent-plane grid needs a 2-D latent space (latent_dim = 2)")
        q = self.grid_coordinates(side, low, high)
        z = torch.stack([q.repeat(side), q.flip(0).repeat_interleave(side)], dim=1)   # (side², 2)
        return self.decode(z.to(self.fixed_latents.device)).cpu()

    @staticmethod
    def grid_coordinates(side: int, low: float = PLANE_QUANTILES[0], high: float = PLANE_QUANTILES[1]) -> Tensor:
        return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(low, high, side))

    @torch.no_grad()
    def encode_means(self, data: ImageData, batch_size: int = 1000) -> Tensor:
        """μ(x) for every image of `data`, in the data's order (the scatter of test encodings)."""
        device = self.fixed_latents.device
        return torch.cat([self.encode(data.batch(slice(i, i + batch_size)).images.to(device))[0].cpu()
                          for i in range(0, len(data), batch_size)])
