"""VQ-VAE with a PixelCNN prior (van den Oord et al. 2017, "Neural Discrete Representation Learning").

An encoder maps an image x to a grid of D-dim vectors z_e(x) (here 28x28 -> 7x7: two stride-2 convolutions and
residual blocks). Each vector is replaced by its nearest entry of a codebook e ∈ R^{K×D} (Eq. 1-2):
    k = argmin_j ‖z_e(x) − e_j‖₂,    z_q(x) = e_k
and the decoder maps the grid z_q back to the image. The argmin has no gradient: the straight-through estimator copies
the decoder's gradient at z_q to z_e (Sec. 3.2), z_q = z_e + sg[e_k − z_e] in the forward pass.
The loss (Eq. 3), with a Gaussian decoder of fixed variance, i.e. the mean squared error on the loop's [-1, 1] pixels:
    L = ‖x − D(z_q)‖² + ‖sg[z_e] − e‖² + β ‖z_e − sg[e]‖²,    β = 0.25
Codebook: the middle term is replaced by the exponential moving averages of Appendix A.1 (γ = 0.99), with n_i the
number of encoder outputs assigned to code i in the batch and z_{i,j} those outputs:
    N_i ← γ N_i + (1 − γ) n_i,    m_i ← γ m_i + (1 − γ) Σ_j z_{i,j},    e_i = m_i / N_i
Departures, flagged:
  * N_i is Laplace-smoothed before the division, N_i ← (N_i + ε) / (Σ N + K ε) · Σ N (ε = 1e-5, as in the
    authors' Sonnet code), so a code that was never used does not divide by zero.
  * dead-code restarts (not in the paper; Dhariwal et al. 2020, Jukebox, Sec. 2.2 use random restarts): a code
    unused for `restart_after` consecutive training steps is set to a random encoder output of the current batch
    (and its N_i, m_i to 1, that output), so the codebook does not collapse onto a few entries. The counters start
    at `restart_after`, so the first step sets every code it leaves unused to an encoder output: a data-dependent
    initialisation of the codebook by the same rule.
  * the EMA statistics are kept per process: train with one process.
Codebook use is reported as the perplexity exp(−Σ_i p̄_i log p̄_i) of the average assignment p̄ (K if every code
is used equally, 1 if one code takes everything) and the share of codes used at least once.

The prior (Sec. 3.1 and 4.2): the codes are a 7x7 grid of indices k ∈ {0, …, K−1}, modelled autoregressively by a
class-conditional Gated PixelCNN (core/models/autoregressive.py) over the 49 positions in raster order:
    p(k | y) = Π_{i=1}^{49} p(k_i | k_<i, y)
Its input is a learned embedding of each index (nn.Embedding(K, d), (B, H, W) -> (B, d, H, W)); its output K logits
per position. The prior's figure is bits per code, −log₂ p(k | y) / 49 (a uniform prior gives log₂ K).
Sampling: draw k from the prior position by position (the cached raster loop), then decode D(e_k).

Two stages, one model class, one config (`stage`), as in the paper where the prior is fit after the autoencoder:
    stage "autoencoder": the encoder, decoder and codebook train on L (the prior is left untouched);
    stage "prior": the autoencoder is frozen and only the prior trains, by maximum likelihood on the codes of the
                   training images, found on the fly by the frozen encoder. Start it with `--init-from` the stage-1
                   model folder, which makes "prior" the default stage and loads the autoencoder.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.metrics import Yardstick
from core.model import TrainableModel
from core.models.autoregressive import GatedPixelCNN, raster_loop

STAGES = ("autoencoder", "prior")


@dataclass(frozen=True)
class VQVAEConfig:
    stage: str = option("autoencoder", "what trains: autoencoder (encoder, decoder, codebook) or prior (the PixelCNN "
                        "over codes, the autoencoder frozen; start it with --init-from a stage-1 folder)",
                        choices=STAGES)
    codes: int = option(256, "K, codebook entries (paper: 512 on ImageNet)", low=2)
    code_dim: int = option(32, "D, size of each code vector (paper: 64)", low=1)
    width: int = option(64, "channels of the encoder and decoder convolutions (paper: 256)", low=1)
    residual_blocks: int = option(2, "residual blocks at the 7x7 grid on each side (paper: 2)", low=0)
    beta: float = option(0.25, "β, the commitment loss's weight (paper: 0.25)", low=0.0)
    ema_decay: float = option(0.99, "γ of the codebook's moving averages (Appendix A.1: 0.99)", low=0.0, high=0.9999)
    restart_after: int = option(100, "steps a code may go unused before it is restarted (0: never)", low=0)
    prior_hidden: int = option(64, "channels of every gated layer of the prior", low=1)
    prior_layers: int = option(10, "gated layers of the prior (paper: 15 on ImageNet's 32x32 codes)", low=1)
    prior_kernel: int = option(3, "k of the prior's stacks; odd", low=1)
    prior_embed: int = option(32, "d of the prior's learned embedding of each code index", low=1)
    num_classes: int = option(10, "0: unconditional prior; K > 0: p(codes | y), a class bias on every gate", low=0)
    temperature: float = option(1.0, "T of the evaluation samples (softmax of the prior's logits / T)", low=0.01,
                                high=2.0)
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side, a multiple of 4 (the code grid is image_size/4 on each side)")


class ResidualBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input (Sec. 4.1)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width // 2 or 1, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width // 2 or 1, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def encoder(c: VQVAEConfig) -> nn.Sequential:
    """(B, C, H, W) -> (B, D, H/4, W/4): two 4x4 stride-2 convolutions, residual blocks, 1x1 to D."""
    return nn.Sequential(nn.Conv2d(c.channels, c.width, 4, 2, 1), nn.ReLU(), nn.Conv2d(c.width, c.width, 4, 2, 1),
                         *[ResidualBlock(c.width) for _ in range(c.residual_blocks)], nn.ReLU(),
                         nn.Conv2d(c.width, c.code_dim, 1))


def decoder(c: VQVAEConfig) -> nn.Sequential:
    """(B, D, H/4, W/4) -> (B, C, H, W): the mirror, with 4x4 stride-2 transposed convolutions; linear output."""
    return nn.Sequential(nn.Conv2d(c.code_dim, c.width, 3, padding=1),
                         *[ResidualBlock(c.width) for _ in range(c.residual_blocks)], nn.ReLU(),
                         nn.ConvTranspose2d(c.width, c.width, 4, 2, 1), nn.ReLU(),
                         nn.ConvTranspose2d(c.width, c.channels, 4, 2, 1))


def nearest_codes(z_e: Tensor, codebook: Tensor) -> Tensor:
    """Eq. 1: k = argmin_j ‖z_e − e_j‖² for z_e (N, D) and the codebook (K, D), with ‖z‖² − 2 z·e + ‖e‖²."""
    z_e, codebook = z_e.float(), codebook.float()
    distances = z_e.pow(2).sum(1, keepdim=True) - 2 * z_e @ codebook.T + codebook.pow(2).sum(1)
    return distances.argmin(1)


def ema_update(cluster_size: Tensor, embed_sum: Tensor, counts: Tensor, sums: Tensor, decay: float,
               epsilon: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Appendix A.1: N ← γN + (1−γ)n, m ← γm + (1−γ)Σz, e = m / N (N Laplace-smoothed with ε; ε = 0 is the
    paper's formula). Returns the new (N, m, e)."""
    cluster_size = decay * cluster_size + (1 - decay) * counts
    embed_sum = decay * embed_sum + (1 - decay) * sums
    total = cluster_size.sum()
    smoothed = (cluster_size + epsilon) / (total + len(cluster_size) * epsilon) * total
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def perplexity(counts: Tensor) -> float:
    """exp(entropy) of the assignment frequencies counts / Σ counts: K for uniform use, 1 for one code."""
    p = counts.float() / counts.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


class VQVAE(TrainableModel):
    """VQ-VAE (van den Oord et al. 2017): a quantised autoencoder, then a Gated PixelCNN prior over its codes."""
    config_class = VQVAEConfig
    pipeline_tag = "unconditional-image-generation"
    card_description = """
A VQ-VAE trained from scratch with genlab (`core/models/vqvae.py`; van den Oord et al. 2017, "Neural Discrete
Representation Learning"): a convolutional encoder maps each 28x28 image to a 7x7 grid of vectors, each replaced by
its nearest codebook entry (codebook learnt by exponential moving averages, Appendix A.1; dead codes restarted), and a
decoder trained with the mean squared error maps the codes back. A class-conditional Gated PixelCNN, trained in a
second stage with the autoencoder frozen, models the 49 codes in raster order; samples are its codes, decoded.
Bits per code are −log₂ p(codes | y) / 49 on the test images' codes. FID, KID and coverage use the features of
genlab's Fashion-MNIST classifier (`checkpoints/classifier`).
"""
    card_samples_caption = "Codes drawn from the PixelCNN prior (classes 0-9 in turn), decoded."

    def __init__(self, config: VQVAEConfig = VQVAEConfig()):
        super().__init__()
        c = self.config = config
        if c.stage not in STAGES or c.image_size % 4 or c.prior_kernel % 2 == 0:
            raise ValueError(f"stage must be one of {STAGES}, image_size a multiple of 4 and prior_kernel odd")
        self.encoder, self.decoder = encoder(c), decoder(c)
        self.register_buffer("codebook", torch.randn(c.codes, c.code_dim))
        self.register_buffer("cluster_size", torch.ones(c.codes))          # N_i
        self.register_buffer("embed_sum", self.codebook.clone())            # m_i
        self.register_buffer("idle_steps", torch.full((c.codes,), c.restart_after, dtype=torch.long))
        self.code_embedding = nn.Embedding(c.codes, c.prior_embed)
        self.prior = GatedPixelCNN(c.prior_embed, c.codes, c.prior_hidden, c.prior_layers, c.prior_kernel,
                                   c.num_classes)

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    @property
    def grid(self) -> int:
        return self.config.image_size // 4

    # ---------------------------------------------------------------------------------------------- autoencoder
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) -> z_e (B, D, h, w) and their codes k (B, h, w), Eq. 1."""
        z_e = self.encoder(x.to(self.device))
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])          # (B, D, h, w) -> (B·h·w, D)
        return z_e, nearest_codes(flat, self.codebook).view(z_e.shape[0], *z_e.shape[2:])

    def lookup(self, codes: Tensor) -> Tensor:
        """z_q = e_k: codes (B, h, w) -> (B, D, h, w)."""
        return self.codebook[codes.to(self.device)].permute(0, 3, 1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> images (B, C, H, W), clamped to [-1, 1]."""
        return self.decoder(self.lookup(codes)).float().clamp(-1, 1)

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Eq. 3 less the codebook term (the EMA learns the codebook): the reconstruction's MSE, the commitment
        ‖z_e − sg[e]‖², z_e and the codes. The decoder reads z_e + sg[z_q − z_e]: z_q forward, the straight-through
        gradient backward (Sec. 3.2)."""
        z_e, codes = self.encode(x)
        z_q = self.lookup(codes)
        reconstruction = self.decoder(z_e + (z_q - z_e).detach())
        mse = F.mse_loss(reconstruction.float(), x.float())
        commitment = F.mse_loss(z_e.float(), z_q.float())
        return mse, commitment, z_e.detach(), codes

    @torch.no_grad()
    def update_codebook(self, z_e: Tensor, codes: Tensor) -> int:
        """Appendix A.1's moving averages with this batch's assignments, then dead-code restarts; returns how many
        codes were restarted."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).float()   # (B, D, h, w) -> (B·h·w, D)
        one_hot = F.one_hot(codes.flatten(), self.config.codes).float()    # (B·h·w, K)
        counts, sums = one_hot.sum(0), one_hot.T @ flat
        new = ema_update(self.cluster_size, self.embed_sum, counts, sums, self.config.ema_decay)
        for buffer, value in zip((self.cluster_size, self.embed_sum, self.codebook), new):
            buffer.copy_(value)
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        return self.restart_dead_codes(flat)

    def restart_dead_codes(self, flat: Tensor) -> int:
        """Codes idle for `restart_after` steps become random encoder outputs of the batch (N = 1, m = e)."""
        if not self.config.restart_after:
            return 0
        dead = torch.nonzero(self.idle_steps >= self.config.restart_after).flatten()
        if len(dead):
            picks = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
            self.codebook[dead], self.embed_sum[dead], self.cluster_size[dead] = picks, picks, 1.0
            self.idle_steps[dead] = 0
        return len(dead)

    # ---------------------------------------------------------------------------------------------------- prior
    def embed(self, codes: Tensor) -> Tensor:
        """The prior's input: codes (B, h, w) -> (B, d, h, w), a learned embedding of each index."""
        return self.code_embedding(codes).permute(0, 3, 1, 2)

    def checked_labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        if not self.config.num_classes:
            return None
        if labels is None:
            raise ValueError("a class-conditional prior needs labels")
        if len(labels) != n or not (0 <= int(labels.min()) and int(labels.max()) < self.config.num_classes):
            raise ValueError(f"labels must be {n} integers in [0, {self.config.num_classes - 1}]")
        return labels.to(self.device)

    def code_nats(self, codes: Tensor, labels: Tensor | None) -> Tensor:
        """−ln p(k | y) per image, (B,): the sum of the 49 positions' cross-entropies, one forward pass."""
        logits = self.prior(self.embed(codes), self.checked_labels(labels, len(codes))).float()
        return F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(1)

    def bits_per_code(self, codes: Tensor, labels: Tensor | None) -> Tensor:
        """−log₂ p(k | y) / (h·w) per image."""
        return self.code_nats(codes, labels) / (codes[0].numel() * math.log(2))

    # ------------------------------------------------------------------------------------------------ training
    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        if self.config.stage == "prior":
            parameters = [*self.code_embedding.parameters(), *self.prior.parameters()]
        else:
            parameters = [*self.encoder.parameters(), *self.decoder.parameters()]
        self.optimizer = torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"model": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Stage "autoencoder": L of Eq. 3 (codebook term by EMA), then the codebook update. Stage "prior": the
        mean bits per code of the training images' codes (frozen encoder), p(k | y) with their labels."""
        if self.config.stage == "prior":
            with torch.no_grad():
                codes = self.encode(batch.images)[1]
            labels = batch.labels if self.config.num_classes else None
            loss = self.bits_per_code(codes, labels).mean()
            return {"loss/bits_per_code": self.optimizer_step(self.optimizer, loss)}
        mse, commitment, z_e, codes = self.losses(batch.images)
        logs = {"loss/total": self.optimizer_step(self.optimizer, mse + self.config.beta * commitment),
                "loss/reconstruction": mse.detach(), "loss/commitment": commitment.detach()}
        restarted = self.update_codebook(z_e, codes)
        counts = torch.bincount(codes.flatten(), minlength=self.config.codes)
        return {**logs, "codebook/perplexity": torch.tensor(perplexity(counts)),
                "codebook/restarts": torch.tensor(float(restarted))}

    def fine_tuning_config(self):
        """A saved model's options, with "prior" the stage: a stage-1 folder starts the prior's training."""
        return replace(self.config, stage="prior")

    def init_from(self, saved: "VQVAE") -> None:
        """The saved autoencoder (encoder, decoder, codebook and its statistics); the prior too if it was trained
        (saved stage "prior"), else the prior starts fresh."""
        keep = self.state_dict()
        for name, tensor in saved.state_dict().items():
            if saved.config.stage == "prior" or not name.startswith(("prior.", "code_embedding.")):
                if name not in keep or keep[name].shape != tensor.shape:
                    raise ValueError(f"the saved VQVAE does not match the model to train at {name}")
                keep[name] = tensor
        self.load_state_dict(keep)

    # ---------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def test_codes(self, data: ImageData, batch_size: int = 500) -> dict[str, float]:
        """Reconstruction MSE on [-1, 1], codebook perplexity and use, and (stage "prior") bits per code, over
        `data`."""
        sums, counts = {"reconstruction_mse": 0.0, "bits_per_code": 0.0}, torch.zeros(self.config.codes)
        for batch in data.batches(batch_size, seed=0, epoch=0, drop_last=False):
            x = batch.images.to(self.device)
            with self.autocast():
                codes = self.encode(x)[1]
                sums["reconstruction_mse"] += float(F.mse_loss(self.decode(codes), x.float(), reduction="sum"))
                if self.config.stage == "prior":
                    labels = batch.labels if self.config.num_classes else None
                    sums["bits_per_code"] += float(self.bits_per_code(codes, labels).sum())
            counts += torch.bincount(codes.flatten().cpu(), minlength=self.config.codes)
        figures = {"reconstruction_mse": sums["reconstruction_mse"] / (len(data) * x[0].numel()),
                   "codebook_perplexity": perplexity(counts), "codebook_usage": float((counts > 0).float().mean())}
        if self.config.stage == "prior":
            figures["bits_per_code"] = sums["bits_per_code"] / len(data)
        return figures

    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None,
                 samples: tuple[Tensor, Tensor | None] | None = None) -> dict[str, float]:
        """The test figures of `test_codes`, and (stage "prior") the yardstick's figures of len(data) samples."""
        return {**self.test_codes(data), **super().evaluate(data, yardstick, samples)}

    def default_labels(self, n: int) -> Tensor | None:
        return torch.arange(n) % self.config.num_classes if self.config.num_classes else None

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None] | None:
        """n seeded samples with their labels; none in stage "autoencoder" (the prior has not been trained)."""
        if self.config.stage != "prior":
            return None
        labels = self.default_labels(n)
        return self.sample(n, seed=0, labels=labels), labels

    def eval_images(self, data: ImageData) -> Tensor:
        """Stage "prior": 64 samples. Stage "autoencoder": 32 test images, each above its reconstruction."""
        if self.config.stage == "prior":
            return self.sample(64, seed=1234, labels=self.default_labels(64))
        return self.reconstruct_pairs(data.batch(torch.arange(min(32, len(data)))).images)

    @torch.no_grad()
    def reconstruct_pairs(self, images: Tensor, columns: int = 8) -> Tensor:
        """Rows of `columns` images, each row followed by its reconstructions D(z_q(x))."""
        out = self.decode(self.encode(images)[1]).cpu()
        rows = [t for i in range(0, len(images), columns) for t in (images[i:i + columns].cpu(), out[i:i + columns])]
        return torch.cat(rows)

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_codes(self, n: int, labels: Tensor | None, temperature: float, generator: torch.Generator,
                     fast: bool = True, on_row=None) -> Tensor:
        """(n, h, w) codes drawn position by position from softmax(logits / T) of the prior; `on_row(row, codes so
        far)` after each row of the grid (raster_loop)."""
        labels = self.checked_labels(labels, n)

        def draw(logits: Tensor, row: int, col: int) -> Tensor:
            probabilities = torch.softmax(logits.cpu() / temperature, 1)
            return torch.multinomial(probabilities, 1, generator=generator)[:, 0].to(self.device)

        blank = torch.zeros(n, self.grid, self.grid, dtype=torch.long, device=self.device)
        with self.autocast():
            return raster_loop(self.prior, self.embed, blank, labels, draw, fast, on_row)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None, temperature: float | None = None,
               batch_size: int = 500) -> Tensor:
        """n images in [-1, 1]: codes from the prior, decoded (labels default to 0, 1, …, K−1, 0, …)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        temperature = self.config.temperature if temperature is None else float(temperature)
        if not 0.01 <= temperature <= 2.0:
            raise ValueError(f"temperature must lie in [0.01, 2], got {temperature}")
        labels = labels if labels is not None else self.default_labels(n)
        generator, chunks = torch.Generator().manual_seed(seed), []
        for start in range(0, n, batch_size):
            part = labels[start:start + batch_size] if labels is not None else None
            codes = self.sample_codes(min(batch_size, n - start), part, temperature, generator)
            chunks.append(self.decode(codes).cpu())
        return torch.cat(chunks)
