"""What genlab's diffusion family shares, whatever its objective: the denoising network, its moving average,
guidance, labels, the sampling loop, checkpoints and evaluation. The objectives are one file each:
ddpm.py (ε, x_0 or v prediction, Ho et al. 2020), flow_matching.py (Lipman et al. 2023) and edm.py (Karras et al.
2022), and consistency.py, a few-step student of a diffusion teacher (Song et al. 2023); the checkpoint class `DDPM`
(ddpm.py) picks one by the config's prediction_type (or its `consistency`).

Every objective trains one network f_θ(x_t, τ, y) (core/models/unet.py) on noisy images x_t of a path from the data
x_0 (t = 0) to noise (t = T), and sampling runs that path backwards. What an objective adds (an `Objective`):
    its path and target:   x_t and the regression target for a batch x_0 and noise ε, t drawn its way, and the
                           per-image weights λ of   L = λ ‖target − f_θ(x_t, τ(t), y)‖²
    its network time:      τ(t), the timestep the network sees (t itself, or EDM's 1000 c_noise)
    its x̂_0:               the clean image that the network's output at (x_t, t) stands for
    its samplers:          the schedulers (core/schedulers/) that integrate its path, and their options
The sampling loop (`denoising_loop`, Ho et al. Algorithm 2 with any scheduler):
    x_T = σ_init · z,  z ~ N(0, I);   for each timestep t of the scheduler:
        f = f̃_θ(c_in x_t, τ(t), y),   x̂_0 = x̂_0(f, x_t, t),   x_{t−1} = step(f, t, x_t)
(c_in and σ_init are the scheduler's `scale_model_input` and `init_noise_sigma`: 1 except for EDM).
Classifier-free guidance (Ho & Salimans 2022): labels are dropped to a null label ∅ = K with probability p in
training, so that one network is both conditional and unconditional, and sampling uses
    f̃ = f_θ(x_t, ∅) + w (f_θ(x_t, y) − f_θ(x_t, ∅))        (Eq. 6; w here = 1 + their w: w = 1 is no guidance)
Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"): an unconditional model
D is guided by a guide G, the same objective trained smaller and shorter, which makes D's errors, only more of them:
    D̃ = G + w (D − G)
Departures: both guidances mix the network outputs, not the denoisers or ε's of the papers; that is the same
thing because ε, x_0, v, the flow velocity and EDM's F are all affine in D (and in ε) at fixed x_t and t, with the
same coefficients for both terms (the guide must share the model's objective and schedule: `with_guide`).
Weights are an exponential moving average of the trained ones (core.nn.EMA); the exported folder holds the EMA only.
"""
import dataclasses
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import TrainConfig
from core.data import Batch, ImageData
from core.model import TrainableModel
from core.models.unet import UNet
from core.nn import EMA
from core.schedulers import SCHEDULER_OPTIONS, SCHEDULERS
from core.schedulers.base import Scheduler, as_scheduler

MAX_STEPS = 1000                 # sampling steps: at most the training timesteps of the default schedule
GUIDANCE_RANGE = (0.0, 20.0)     # classifier-free guidance scale w (1: no guidance)
ETA_RANGE = (0.0, 1.0)           # DDIM's η: 0 deterministic, 1 DDPM-like


class Objective:
    """What a training objective adds to the shared model (one subclass per file: ddpm.py, flow_matching.py,
    edm.py). It holds the model's config and its training noise scheduler, built from `scheduler_config`."""
    kind: str = ""                        # the objective's name in messages: "diffusion", "flow-matching", "EDM"
    samplers: dict = {}                   # the schedulers that fit it, by name, its default first
    training_scheduler: type[Scheduler]   # the scheduler whose path training draws x_t from

    def __init__(self, config):
        self.config = config
        self.noise_scheduler = self.training_scheduler(**self.scheduler_config())

    def scheduler_config(self) -> dict:
        """The options that the training scheduler and every sampler of it share (its noise schedule)."""
        raise NotImplementedError

    def training_inputs(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(x_t, t, target, per-image loss weights or None for the plain mean) for images x_0 and noise ε."""
        raise NotImplementedError

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x̂_0 from the network's output at (x_t, t), t a scheduler's timestep."""
        raise NotImplementedError

    def network_time(self, t: Tensor) -> Tensor:
        """The timestep the network sees for a scheduler's timestep t: t itself unless the objective maps it."""
        return t

    def sampler_options(self, name: str) -> dict:
        """Options this objective sets on the sampler of that name, beyond the name's own (none by default)."""
        return {}


def variance_preserving_schedule(config) -> dict:
    """The noise schedule of Ho et al.'s variance-preserving path as scheduler options (the ε/x_0/v objectives and a
    consistency student of them share it)."""
    c = config
    return dict(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
                beta_schedule=c.beta_schedule, prediction_type=c.prediction_type,
                rescale_betas_zero_snr=c.zero_terminal_snr)


def own_first(names: tuple[str, ...], own) -> tuple[str, ...]:
    """The scheduler names with `own` first when it is one of them (else as they are)."""
    return (own, *(n for n in names if n != own)) if own in names else names


def denoising_loop(network: Callable[[Tensor, Tensor], Tensor], scheduler, noise: Tensor, steps: int,
                   predicted_x0: Callable[[Tensor, Tensor, Tensor], Tensor], generator: torch.Generator | None = None,
                   eta: float = 0.0) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Ho et al. Algorithm 2 with any scheduler: x_T = σ_init · noise, then for each of the scheduler's timesteps t
    the output f = network(scale_model_input(x_t, t), t), x̂_0 = predicted_x0(f, x_t, t) and x_{t−1} = step(f, t,
    x_t). Yields (step index, x_{t−1}, x̂_0) once per step: a second-order scheduler (Heun) calls the network twice
    per step and yields after its correction (and after its last, Euler, call). `scheduler` is a genlab one or any
    with the diffusers API (wrapped once in `ForeignScheduler`); η goes to those that take it (DDIM), `generator`
    to every step (the noise of stochastic samplers)."""
    scheduler = as_scheduler(scheduler)
    x = noise * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    options = {"eta": eta} if scheduler.takes_eta else {}
    done = 0
    for i, t in enumerate(scheduler.timesteps):
        output = network(scheduler.scale_model_input(x, t), t)
        x0 = predicted_x0(output, x, t)
        x = scheduler.step(output, t, x, generator=generator, **options).prev_sample
        if scheduler.state_in_first_order or i == len(scheduler.timesteps) - 1:
            yield done, x, x0
            done += 1


class DiffusionModel(TrainableModel):
    """A U-Net denoiser trained and sampled by an `Objective`, unconditional or class-conditional with
    classifier-free guidance, or unconditional with an autoguidance guide."""
    channels_last = True           # trains 1.20x (fp32) / 1.48x (bf16) and samples faster (bench/channels_last.py)

    def __init__(self, config, objective: Objective):
        super().__init__()
        widths = tuple(int(w) for w in str(config.widths).split(","))
        self.config, self.objective = config, objective
        self.unet = UNet(config.channels, widths, config.layers_per_block, config.num_classes, dropout=config.dropout)
        self.ema = EMA(self.unet, config.ema_decay) if config.ema_decay > 0 else None
        self.guide = None
        if config.guide_widths:
            if config.num_classes:
                raise ValueError("autoguidance is built for unconditional models here; a class-conditional one has "
                                 "classifier-free guidance")
            guide_widths = tuple(int(w) for w in str(config.guide_widths).split(","))
            self.guide = UNet(config.channels, guide_widths, config.layers_per_block, 0).requires_grad_(False)
        self.teacher = None                      # a consistency student's frozen teacher (core/models/consistency.py)
        if config.teacher_widths:
            teacher_widths = tuple(int(w) for w in str(config.teacher_widths).split(","))
            self.teacher = UNet(config.channels, teacher_widths, config.layers_per_block, 0).requires_grad_(False)
            objective.teach(self.unet, self.teacher)
        side = 10 if config.num_classes else 8
        self.register_buffer("fixed_noise", self.noise(side * side, seed=1234))

    # ------------------------------------------------------------------------------------------ what it is
    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def guided(self) -> bool:
        """Samples with a guidance scale: classifier-free (class-conditional) or autoguidance (a guide attached)."""
        return self.conditional or self.guide is not None

    @property
    def guidance_scale(self) -> float:
        """The scale it samples at unless told otherwise: a guided model's eval_guidance (its card's), else 1."""
        return self.config.eval_guidance if self.guided else 1.0

    @property
    def noise_scheduler(self) -> Scheduler:
        """The training noise scheduler of its objective (saved as scheduler_config.json)."""
        return self.objective.noise_scheduler

    @property
    def samplers(self) -> dict:
        """The schedulers that can sample this model, by name, its own (eval_sampler) first."""
        return {name: SCHEDULERS[name] for name in own_first(tuple(self.objective.samplers), self.config.eval_sampler)}

    @property
    def default_sampler(self) -> str:
        return next(iter(self.samplers))

    @property
    def denoiser(self) -> UNet:
        return self.ema.average if self.ema is not None else self.unet

    def network_time(self, t: Tensor) -> Tensor:
        return self.objective.network_time(t)

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.objective.predicted_x0(output, x_t, t)

    def noise(self, n: int, seed: int) -> Tensor:
        c = self.config
        return torch.randn(n, c.channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))

    # ------------------------------------------------------------------------------------------------- training
    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        if self.guide is not None:
            raise ValueError("a model with a guide is for sampling: train the model and its guide as two runs, then "
                             "attach the guide (python -m core.hub guide MODEL GUIDE OUT)")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"unet": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Ho et al. Algorithm 1 for any objective: ε ~ N(0, I), (x_t, t, target, λ) from the objective, labels
        dropped to ∅ with probability p, one gradient step on λ ‖target − f_θ(x_t, τ(t), y)‖²."""
        x0 = batch.images
        eps = torch.randn_like(x0)
        x_t, t, target, weights = self.objective.training_inputs(x0, eps)
        labels = None
        if self.conditional:         # classifier-free guidance: train the null label K on a fraction of the batch
            drop = torch.rand(len(x0), device=x0.device) < self.config.label_dropout
            labels = torch.where(drop, torch.full_like(batch.labels, self.config.num_classes), batch.labels)
        prediction = self.unet(x_t, self.network_time(t), labels)
        if weights is not None:
            per_image = ((prediction.float() - target) ** 2).mean(dim=(1, 2, 3))
            loss = (weights * per_image).mean()
        else:
            loss = F.mse_loss(prediction.float(), target)
        loss = self.optimizer_step(self.optimizer, loss)
        if self.ema is not None:
            self.ema.update(self.unet)
        return {"loss/denoise": loss}

    def exported(self) -> "DiffusionModel":
        """The shipped folder: the EMA weights as the model's only weights (half the file, the same samples), without
        the teacher a consistency student carries while it trains."""
        if self.ema is None and self.teacher is None:
            return self
        export = type(self)(dataclasses.replace(self.config, ema_decay=0.0, teacher_widths=""))
        export.unet.load_state_dict(self.denoiser.state_dict())
        return export.to(self.fixed_noise.device)

    def fine_tuning_config(self):
        """A shipped folder's options, less what only sampling uses: no guide, and a moving average again (an
        exported model keeps its average as its weights: ema_decay 0)."""
        ema_decay = self.config.ema_decay or self.config_class.ema_decay
        return dataclasses.replace(self.config, guide_widths="", ema_decay=ema_decay)

    def init_from(self, saved: "DiffusionModel") -> None:
        """Fine-tune from a shipped folder: its sampling weights (the EMA it exported) become both the weights
        trained and the start of the moving average (and a consistency student's frozen teacher); a guide it
        carries is not trained and is dropped."""
        self.unet.load_state_dict(saved.denoiser.state_dict())
        if self.teacher is not None:
            self.teacher.load_state_dict(saved.denoiser.state_dict())
        if self.ema is not None:
            self.ema.average.load_state_dict(self.unet.state_dict())

    def with_guide(self, guide: "DiffusionModel", scale: float, sampler: str | None = None) -> "DiffusionModel":
        """This model's sampling weights with `guide` attached for autoguidance at scale w (the model's default
        guidance from then on; `sampler`, if given, its default scheduler): a new model, saved as one checkpoint.
        The guide must be an unconditional model of the same objective and noise schedule, without a guide of its
        own."""
        mine, theirs = dataclasses.asdict(self.config), dataclasses.asdict(guide.config)
        shared = ("channels", "image_size", "layers_per_block", "prediction_type", "num_train_timesteps",
                  "beta_schedule", "beta_start", "beta_end", "zero_terminal_snr", "sigma_data", "shift")
        differ = [name for name in shared if mine[name] != theirs[name]]
        if differ:
            raise ValueError(f"a guide must share the model's objective and schedule; these differ: {differ}")
        if self.conditional or guide.conditional or self.guide is not None or guide.guide is not None:
            raise ValueError("autoguidance takes an unconditional model without a guide and an unconditional guide")
        if not math.isfinite(scale) or not GUIDANCE_RANGE[0] <= scale <= GUIDANCE_RANGE[1]:
            raise ValueError(f"scale must lie in [{GUIDANCE_RANGE[0]:g}, {GUIDANCE_RANGE[1]:g}], got {scale}")
        guided = type(self)(dataclasses.replace(self.config, ema_decay=0.0, guide_widths=guide.config.widths,
                                                eval_guidance=float(scale),
                                                eval_sampler=sampler or self.config.eval_sampler))
        guided.unet.load_state_dict(self.denoiser.state_dict())
        guided.guide.load_state_dict(guide.denoiser.state_dict())
        return guided.to(self.fixed_noise.device)

    def _save_pretrained(self, save_directory) -> None:
        """Hub folder = config.json + model.safetensors + scheduler_config.json (readable by diffusers)."""
        super()._save_pretrained(save_directory)
        self.noise_scheduler.save_pretrained(save_directory)

    # ------------------------------------------------------------------------------------------------- sampling
    def scheduler(self, name: str | None = None, **options):
        """A genlab scheduler on this model's training noise schedule, by one of the names in `samplers` (None:
        the model's own, `default_sampler`), with the options its name and its objective set (`sampler_options`:
        why a diffusion model's samplers threshold, clip or start at t = T) under the ones given."""
        samplers = self.samplers
        name = next(iter(samplers)) if name is None else name
        if name not in samplers:
            raise ValueError(f"a {self.objective.kind} model samples with a scheduler of {sorted(samplers)}, "
                             f"got {name!r}")
        defaults = {**SCHEDULER_OPTIONS.get(name, {}), **self.objective.sampler_options(name)}
        return samplers[name].from_config(self.objective.scheduler_config(), **{**defaults, **options})

    def predict(self, x_t: Tensor, t: Tensor, labels: Tensor | None, guidance_scale: float) -> Tensor:
        """f̃_θ(x_t, t, y): classifier-free guidance (one batched forward pass for both halves when w ≠ 1) or
        autoguidance (the guide's pass beside the model's), in the model's precision; t a scheduler's timestep."""
        net = self.denoiser
        with self.autocast():
            if guidance_scale == 1.0 or (labels is None and self.guide is None):
                return net(x_t, self.network_time(t), labels).float()
            if labels is None:
                level = self.network_time(t)
                strong, weak = net(x_t, level).float(), self.guide(x_t, level).float()
                return weak + guidance_scale * (strong - weak)
            null = torch.full_like(labels, self.config.num_classes)
            conditional, unconditional = net(torch.cat([x_t, x_t]), self.network_time(t),
                                             torch.cat([labels, null])).float().chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def labels_for(self, n: int, label: int | Tensor | None) -> Tensor | None:
        """None (unconditional), one class for all n, or per-image labels; conditional models cycle 0..K−1 by default."""
        if not self.conditional:
            if label is not None:
                raise ValueError("this DDPM is unconditional: it takes no label")
            return None
        labels = torch.arange(n) % self.config.num_classes if label is None else torch.as_tensor(label).long()
        labels = labels.expand(n) if labels.ndim == 0 else labels
        if len(labels) != n or int(labels.min()) < 0 or int(labels.max()) >= self.config.num_classes:
            raise ValueError(f"labels must be {n} integers in [0, {self.config.num_classes - 1}]")
        return labels

    @torch.no_grad()
    def denoise(self, n: int = 16, steps: int | None = None, scheduler=None, seed: int = 0, guidance_scale: float | None = None,
                label: int | Tensor | None = None, eta: float = 0.0, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
        """`denoising_loop` on this model: yield (step index, x_{t−1}, x̂_0) after every reverse step, x̂_0 being
        what the network believes the final image to be at that step (before any clipping or thresholding).
        `scheduler` is a name (None: the model's default) or any object with the diffusers scheduler API (ours or
        diffusers' own). x_T comes from `seed` unless `noise` is given. steps and guidance_scale None: the model's
        own (its card's eval_steps, and its eval_guidance if it is guided). The steps' noise comes from `generator`,
        else from a fresh one seeded with `seed`; diffusers' pipelines draw x_T and then the steps' noise from one
        generator: pass `noise` drawn from it, and it, to sample as they do (tests/models/test_diffusers_export.py)."""
        guidance_scale = self.guidance_scale if guidance_scale is None else guidance_scale
        steps = self.config.eval_steps if steps is None else steps
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
        if not math.isfinite(guidance_scale) or not GUIDANCE_RANGE[0] <= guidance_scale <= GUIDANCE_RANGE[1]:
            raise ValueError(f"guidance_scale must lie in [{GUIDANCE_RANGE[0]:g}, {GUIDANCE_RANGE[1]:g}], got {guidance_scale}")
        if not ETA_RANGE[0] <= eta <= ETA_RANGE[1]:
            raise ValueError(f"eta must lie in [{ETA_RANGE[0]:g}, {ETA_RANGE[1]:g}], got {eta}")
        scheduler = self.scheduler(scheduler) if scheduler is None or isinstance(scheduler, str) else scheduler
        for net in (n for n in (self.denoiser, self.guide) if n is not None):
            net.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        device = self.fixed_noise.device
        labels = self.labels_for(n, label)
        labels = labels.to(device) if labels is not None else None
        start = noise if noise is not None else self.noise(n, seed)

        def network(x: Tensor, t: Tensor) -> Tensor:
            return self.predict(x, t.to(device), labels, guidance_scale)
        yield from denoising_loop(network, scheduler, start.to(device), steps, self.predicted_x0,
                                  generator or torch.Generator().manual_seed(seed), eta)

    def sample(self, n: int = 16, steps: int | None = None, scheduler=None, seed: int = 0, guidance_scale: float | None = None,
               label: int | Tensor | None = None, eta: float = 0.0, return_intermediates: bool = False,
               batch_size: int = 256) -> Tensor | tuple[Tensor, Tensor]:
        """n images in [-1, 1], by default with the model's own sampler, steps and guidance. With return_intermediates, also x_t after every step, (steps, n, C, H, W), for an
        animation of the denoising. Large n runs in chunks of batch_size with one seed per chunk."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        labels = self.labels_for(n, label)
        images, frames = [], []
        for c, start in enumerate(range(0, n, batch_size)):
            size = min(batch_size, n - start)
            part = labels[start:start + size] if labels is not None else None
            trajectory = []
            for _, x, _ in self.denoise(size, steps, scheduler, seed + c, guidance_scale, part, eta):
                if return_intermediates:
                    trajectory.append(x.cpu())
            if return_intermediates:
                frames.append(torch.stack(trajectory))
            images.append(x.clamp(-1, 1).cpu())
        images = torch.cat(images)
        return (images, torch.cat(frames, dim=1).clamp(-1, 1)) if return_intermediates else images

    # ----------------------------------------------------------------------------------------------- evaluation
    def eval_images(self, data: ImageData) -> Tensor:
        """The fixed noise through the default sampler; conditional models: row k is class k at the eval guidance."""
        side = int(math.isqrt(len(self.fixed_noise)))
        labels = torch.arange(side).repeat_interleave(side) if self.conditional else None
        for _, x, _ in self.denoise(len(self.fixed_noise), self.config.eval_steps, None, 0, None, labels,
                                    noise=self.fixed_noise):
            pass
        return x.clamp(-1, 1).cpu()

    def evaluation_samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        """The default sampler with eval_steps steps (and a guided model's eval guidance scale), seed 0."""
        return self.sample(n, self.config.eval_steps, None, 0), self.labels_for(n, None)
