"""Energy-based models: JEM, a classifier that is also a generator (Grathwohl et al. 2019, "Your classifier is secretly
an energy based model and you should treat it like one").

A classifier's logits f_θ(x) ∈ R^K define a joint energy, and with it three distributions:
    E_θ(x, y) = −f_θ(x)[y]                    p_θ(x, y) = exp(−E_θ(x, y)) / Z(θ)
    E_θ(x) = −logsumexp_y f_θ(x)[y]          p_θ(x) = Σ_y p_θ(x, y) = exp(−E_θ(x)) / Z(θ)
    p_θ(y | x) = p_θ(x, y) / p_θ(x) = softmax(f_θ(x))_y       (the classifier: Z cancels)
JEM maximises log p_θ(y | x) + log p_θ(x). Z(θ) is intractable, but the gradient of log p_θ(x) is a difference of
two expectations (contrastive divergence, Hinton 2002):
    ∇_θ log p_θ(x) = −∇_θ E_θ(x) + E_{x' ~ p_θ}[∇_θ E_θ(x')]
so the loss of a batch is, with x' drawn from the model by SGLD,
    L = CE(f_θ(x), y) + w (mean E_θ(x) − mean E_θ(x')) + λ (mean E_θ(x)² + mean E_θ(x')²)
w = `px_weight` is 1 in JEM; w = 0 trains the same network as a plain classifier, without SGLD: the baseline the
paper compares with, and on a CPU budget a quick start for JEM (`--init-from`), which from scratch spends its first
hundreds of steps at chance while the energies move.
The last term (λ = `energy_l2`, Du & Mordatch 2019) keeps the energies near 0, one of the remedies for the runs that
diverge (wgrathwohl/JEM issues 4 and 8); a run stops with a clear message when the gap |E(x') − E(x)| exceeds
`max_energy_gap` or turns NaN, before a checkpoint of the diverged weights is written.

Samples come from stochastic gradient Langevin dynamics (Welling & Teh 2011), from a start x_0:
    x_{k+1} = x_k − (α/2) ∇_x E_θ(x_k) + σ ε_k,    ε_k ~ N(0, I)
which samples p_θ as α → 0 with σ = √α. JEM does not use that pairing: α/2 = 1 and σ = 0.01 (the paper, Sec. 4 and
App. H, says so), a biased sampler that trains well in few steps. Chains start from a replay buffer of past samples
(10,000; Du & Mordatch 2019), 5% of them from uniform noise, and their ends go back into it. Class-conditional samples
follow E_θ(x, y) instead, the y-th logit.

The network is the classifier's (core/models/classifier.py: the same conv stages and widths) without batch norm, whose
batch statistics would change under the chains, and with SiLU, a smooth function for the chains' gradients.
"""
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.metrics import Yardstick, calibration
from core.model import TrainableModel
from core.models.classifier import augment
from core.nn import conv_encoder

Energy = Callable[[Tensor], Tensor]        # (B, C, H, W) -> (B,)
PERCENTILES = 101                          # of the test images' energies, kept for the out-of-distribution verdict


@dataclass(frozen=True)
class JEMConfig:
    channels: int = option(1, "image channels")
    num_classes: int = option(10, "number of classes")
    image_size: int = option(28, "image side (of the replay buffer's samples)", low=4)
    width: int = option(32, "channels of the first conv stage (doubled at each of the next two)", low=1)
    hidden: int = option(128, "size of the penultimate layer", low=1)
    px_weight: float = option(1.0, "weight of log p(x) in the loss (0: a plain classifier of the same network, no "
                              "SGLD; a quick start for --init-from)", low=0.0)
    sgld_steps: int = option(20, "SGLD steps per training batch (JEM: 20)", low=1)
    sgld_step: float = option(1.0, "α/2: the step along −∇E (JEM: 1)", low=0.0)
    sgld_noise: float = option(0.01, "σ: the noise of each SGLD step (JEM: 0.01; √α would be exact Langevin)", low=0.0)
    buffer_size: int = option(10_000, "replay buffer of chain ends (JEM: 10,000)", low=1)
    reinit: float = option(0.05, "share of chains started from uniform noise instead of the buffer (JEM: 0.05)",
                           low=0.0, high=1.0)
    data_noise: float = option(0.03, "std of the Gaussian noise added to training images (JEM: 0.03)", low=0.0)
    augment: bool = option(True, "random 2-pixel shifts and horizontal flips of the training images")
    energy_l2: float = option(0.0, "λ of the penalty on squared energies (0: off)", low=0.0)
    max_energy_gap: float = option(50.0, "stop the run when |E(samples) − E(data)| exceeds this (divergence; "
                                   "healthy runs here stay under 10)", low=0.0)
    sample_steps: int = option(100, "SGLD steps of samples drawn from noise (evaluation, the app)", low=1)
    shipped_buffer: int = option(1000, "buffer samples kept in the shipped folder (the rest stays in the run)", low=0)


class Diverged(RuntimeError):
    """The energies of data and samples drifted apart (or became NaN): the JEM run stops before a checkpoint."""


def sgld(energy: Energy, x: Tensor, steps: int, step: float, noise: float, generator: torch.Generator | None = None,
         on_step: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """`steps` SGLD steps x ← x − step ∇_x E(x) + noise ε from x (B, C, H, W); the chain carries no graph."""
    for k in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(energy(x).sum(), x)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = (x - step * grad + noise * eps).detach()
        if on_step is not None:
            on_step(k + 1, x)
    return x


def uniform_noise(n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """Chains' starts: U(−1, 1), the pixel range."""
    return torch.rand((n, *shape), generator=generator, device=device) * 2 - 1


class JEM(TrainableModel):
    """A classifier trained as an energy-based model of p(x, y): classifies, samples by SGLD, scores log p(x)."""
    config_class = JEMConfig
    pipeline_tag = "image-classification"
    card_description = """
A Joint Energy-based Model (Grathwohl et al. 2019) trained from scratch with genlab (`core/models/energy.py`): a CNN
classifier whose logits f(x) are also an energy, E(x) = −logsumexp_y f(x)[y]. It classifies (softmax of the logits),
scores how typical an image is (−E(x) = log p(x) + log Z), and generates by Langevin dynamics (SGLD) on the energy,
from noise or from the replay buffer of past samples kept beside the weights.
"""
    card_samples_caption = "Samples of the replay buffer (top rows) and SGLD chains from noise, one class per column."

    def __init__(self, config: JEMConfig = JEMConfig()):
        super().__init__()
        self.config = config
        c = config
        self.network = nn.Sequential(*conv_encoder(c.channels, c.width, batch_norm=False),
                                     nn.Linear(4 * c.width, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.num_classes))
        shape = (c.buffer_size, c.channels, c.image_size, c.image_size)
        self.register_buffer("replay", uniform_noise(shape[0], shape[1:], torch.Generator().manual_seed(0)))
        self.register_buffer("test_energy", torch.zeros(PERCENTILES))   # E(x)'s percentiles 0-100 on test images

    @property
    def device(self) -> torch.device:
        return self.replay.device

    def forward(self, x: Tensor) -> Tensor:
        """Logits f(x), (B, K)."""
        return self.network(x)

    def energy(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """E(x) = −logsumexp_y f(x)[y], or E(x, y) = −f(x)[y] for given labels; (B,)."""
        logits = self(x)
        if labels is None:
            return -logits.logsumexp(1)
        return -logits.gather(1, labels[:, None])[:, 0]

    def chain(self, x: Tensor, steps: int, labels: Tensor | None = None, generator: torch.Generator | None = None,
              on_step: Callable[[int, Tensor], None] | None = None) -> Tensor:
        """SGLD with the configured step and noise on E(x) (or E(x, y)) from x."""
        c = self.config
        return sgld(lambda v: self.energy(v, labels), x, steps, c.sgld_step, c.sgld_noise, generator, on_step)

    def chain_starts(self, n: int) -> tuple[Tensor, Tensor]:
        """n starts drawn from the buffer, a share `reinit` of them replaced by noise, and their buffer indices."""
        index = torch.randint(0, len(self.replay), (n,), device=self.device)
        starts = self.replay[index]
        fresh = torch.rand(n, device=self.device) < self.config.reinit
        noise = uniform_noise(n, starts.shape[1:], device=self.device)
        return torch.where(fresh[:, None, None, None], noise, starts), index

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"jem": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        c = self.config
        x, y = batch.images, batch.labels
        if c.augment:
            x = augment(x)
        x = x + c.data_noise * torch.randn_like(x)
        if c.px_weight == 0:
            logits = self(x)
            return {"loss/train": self.optimizer_step(self.optimizer, F.cross_entropy(logits, y)),
                    "accuracy/train": (logits.detach().argmax(1) == y).float().mean()}
        starts, index = self.chain_starts(len(x))
        self.requires_grad_(False)                      # the chains need ∇_x E only
        samples = self.chain(starts, c.sgld_steps)
        self.requires_grad_(True)
        self.replay[index] = samples
        logits = self(torch.cat([x, samples]))
        data_logits, energies = logits[:len(x)], -logits.logsumexp(1)
        e_data, e_samples = energies[:len(x)], energies[len(x):]
        gap = e_samples.mean() - e_data.mean()
        self.check_gap(float(gap.detach()), step)
        loss = (F.cross_entropy(data_logits, y) + c.px_weight * (e_data.mean() - e_samples.mean())
                + c.energy_l2 * (e_data.pow(2).mean() + e_samples.pow(2).mean()))
        return {"loss/train": self.optimizer_step(self.optimizer, loss),
                "accuracy/train": (data_logits.detach().argmax(1) == y).float().mean(),
                "energy/data": e_data.detach().mean(), "energy/samples": e_samples.detach().mean(),
                "energy/gap": gap.detach()}

    def check_gap(self, gap: float, step: int) -> None:
        if not abs(gap) <= self.config.max_energy_gap:     # also catches NaN
            raise Diverged(f"JEM diverged at step {step}: E(samples) − E(data) = {gap:.4g} (limit "
                           f"{self.config.max_energy_gap:g}). Stopping before any checkpoint of these weights. "
                           "Resume from the last checkpoint with a lower --lr, a penalty --energy-l2 0.01, or "
                           "more --sgld-steps.")

    @torch.no_grad()
    def evaluate(self, data: ImageData, yardstick: Yardstick | None = None, batch_size: int = 1000) -> dict[str, float]:
        """Test loss, accuracy, expected calibration error (15 bins), the mean energy of test images and of the
        buffer, and the yardstick's figures of the buffer's samples (`buffer_fid`, ...; as many as test images, at
        most the buffer).
        Keeps the test energies' percentiles (`test_energy`), which the shipped folder carries for OOD verdicts."""
        logits, labels = [], []
        for i in range(0, len(data), batch_size):
            b = data.batch(slice(i, i + batch_size))
            logits.append(self(b.images.to(self.device)))
            labels.append(b.labels.to(self.device))
        logits, labels = torch.cat(logits), torch.cat(labels)
        self.test_energy.copy_(torch.quantile(-logits.logsumexp(1), torch.linspace(0, 1, PERCENTILES)))
        figures = {"loss": F.cross_entropy(logits, labels).item(),
                   "accuracy": (logits.argmax(1) == labels).float().mean().item(),
                   "ece": calibration(logits.softmax(1), labels).ece,
                   "energy_test": -logits.logsumexp(1).mean().item(),
                   "energy_buffer": self.energy(self.replay[:batch_size]).mean().item()}
        if yardstick is not None:
            score = yardstick.score(self.replay[:len(data)].clamp(-1, 1), None, data=data)
            figures |= {f"buffer_{name}": value for name, value in score.items()}
        return figures

    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None, steps: int | None = None,
               on_step: Callable[[int, Tensor], None] | None = None) -> Tensor:
        """n samples by SGLD from uniform noise (`sample_steps` steps), on E(x, y) for given labels (n,)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        c = self.config
        x = uniform_noise(n, (c.channels, c.image_size, c.image_size), generator, self.device)
        if labels is not None:
            labels = labels.to(self.device)
        return self.chain(x, steps or c.sample_steps, labels, generator, on_step).clamp(-1, 1)

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        """n class-conditional samples from noise, the classes in turn (seed 0)."""
        labels = torch.arange(n) % self.config.num_classes
        return self.sample(n, 0, labels), labels

    def eval_images(self, data: ImageData) -> Tensor:
        """Two rows of buffer samples over two rows of chains from noise (classes 0-7, then 0-7 again)."""
        chains = self.sample(16, 0, torch.arange(16) % 8, steps=self.config.sample_steps)
        return torch.cat([self.replay[:16].clamp(-1, 1), chains]).cpu()

    def exported(self) -> "JEM":
        """The shipped folder: the weights and the first `shipped_buffer` samples of the replay buffer."""
        kept = min(self.config.shipped_buffer, self.config.buffer_size)
        export = type(self)(dataclasses.replace(self.config, buffer_size=max(kept, 1)))
        export.network.load_state_dict(self.network.state_dict())
        export.replay.copy_(self.replay[:len(export.replay)])
        export.test_energy.copy_(self.test_energy)
        return export.to(self.device)

    def fine_tuning_config(self):
        return dataclasses.replace(self.config, buffer_size=self.config_class.buffer_size)

    def init_from(self, saved: "JEM") -> None:
        """Fine-tune from a shipped folder: its network; the buffer starts with its samples, the rest noise."""
        self.network.load_state_dict(saved.network.state_dict())
        self.test_energy.copy_(saved.test_energy)
        kept = min(len(saved.replay), len(self.replay))
        self.replay[:kept] = saved.replay[:kept]
