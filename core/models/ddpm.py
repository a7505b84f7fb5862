"""DDPM, Ho et al. 2020, "Denoising Diffusion Probabilistic Models", with classifier-free guidance (Ho & Salimans
2022). The network is core/models/unet.py; the samplers are core/schedulers/ (DDPM, DDIM, DPM-Solver++).

Forward process (Eq. 4):  x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε,   ε ~ N(0, I),  t ~ U{0, …, T−1}.
Training (Algorithm 1):   minimise λ(t) ‖target − f_θ(x_t, t)‖² (Eq. 14 with the "simple" weighting λ = 1), where
                          the prediction type sets the target: ε ("epsilon", the paper), x_0 ("sample"), or
                          v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 ("v_prediction", Salimans & Ho 2022).
Min-SNR-γ weighting:      (Hang et al. 2023) with SNR(t) = ᾱ_t / (1 − ᾱ_t), weight each image's loss so that, in
                          x_0 terms, it is min(SNR, γ) ‖x_0 − x̂_0‖²: the low-noise steps, which are easy, no longer
                          dominate the gradient. Since ‖ε − ε̂‖² = SNR ‖x_0 − x̂_0‖² and
                          ‖v − v̂‖² = (SNR + 1) ‖x_0 − x̂_0‖², λ = min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v
                          and min(SNR, γ) for x_0.
Zero terminal SNR:        (Lin et al. 2024) the linear and cosine schedules leave √ᾱ_T > 0, so x_T in training still
                          holds a trace of x_0 that sampling's pure noise lacks; rescaling β to √ᾱ_T = 0 removes that
                          mismatch (then only v or x_0 prediction are defined at t = T; samplers start at t = T).
Sampling (Algorithm 2):   x_T ~ N(0, I), then x_{t−1} from x_t by a scheduler's `step`, down to x_0.
Flow matching:            (Lipman et al. 2023; rectified flow, Liu et al. 2023) with prediction type
                          "flow_prediction" the same U-Net learns another path from data to noise, the straight line
                          x_σ = (1 − σ) x_0 + σ ε, σ ∈ [0, 1] (the network sees t = σ T), and predicts its velocity:
                          minimise ‖(ε − x_0) − v_θ(x_σ, σ T)‖², σ drawn uniformly (Liu et al.) or logit-normal,
                          σ = sigmoid(u), u ~ N(0, 1) (Esser et al. 2024, Sec. 3.1: more weight on the middle, where
                          the velocity is hardest to guess). Sampling integrates dx/dσ = v_θ from σ = 1 to 0 with the
                          Euler or Heun scheduler (core/schedulers/flow_match.py); x̂_0 = x_σ − σ v̂.
EDM:                      (Karras et al. 2022) with prediction type "edm" the U-Net is the F of EDM's preconditioned
                          denoiser D(x; σ) = c_skip x + c_out F(c_in x; c_noise) on the path x_σ = x_0 + σ ε
                          (core/schedulers/edm.py has the c's), trained on ‖F − (x_0 − c_skip x_σ)/c_out‖², which is
                          their loss λ(σ) ‖D − x_0‖² with λ = 1/c_out² (Eq. 8, Table 1), at log-normal noise levels
                          ln σ ~ N(−1.2, 1.2²) (P_mean, P_std: most training where the denoiser can still learn
                          something). The network sees t = 1000 c_noise = 250 ln σ (about the span of the diffusion
                          timesteps, which its sinusoidal embedding was made for). Sampling: EDM's Heun (Algorithm 1,
                          the default) or Euler, from σ_max = 80; x̂_0 = D(x_σ; σ).
Guidance:                 with labels dropped to a null label with probability p during training, one network is
                          both conditional and unconditional, and sampling uses
                          ε̃ = ε_θ(x_t, ∅) + w (ε_θ(x_t, y) − ε_θ(x_t, ∅))      (Ho & Salimans, Eq. 6; w = 1 + their w)
                          (applied to whatever the network predicts: ε, x_0 and v are all affine in ε at fixed x_t).
Autoguidance:             (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") an
                          unconditional model can be guided too: a guide G, the same objective trained smaller and
                          shorter, makes the errors the main model D makes, only more of them, so
                          D̃ = G + w (D − G)      (on the denoisers; here on the network outputs, which are affine
                          in D at fixed x and t when both share the objective and schedule) pushes samples away from
                          what the weak model would draw. `with_guide` stores G beside D in one checkpoint.

This is not the often-copied "diffusion" blog snippet (an autoencoder without a timestep input whose reverse step
returns its x_0 guess): here every step samples from q(x_{t−1} | x_t, x̂_0), and the network knows t.
Weights are an exponential moving average of the trained ones (core.nn.EMA); the exported folder holds the EMA only.
"""
import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import TrainConfig, option
from core.data import Batch, ImageData
from core.model import TrainableModel
from core.models.unet import UNet
from core.nn import EMA
from core.schedulers import (DIFFUSION_SCHEDULERS, EDM_SCHEDULERS, FLOW_SCHEDULERS, SCHEDULER_OPTIONS, SCHEDULERS,
                             DDPMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler,
                             FlowMatchEulerDiscreteScheduler)
from core.schedulers.base import BETA_SCHEDULES, PREDICTION_TYPES, expand, predicted_x0
from core.schedulers.edm import edm_noise_level, edm_scalings
from core.schedulers.flow_match import flow_x0

MAX_STEPS = 1000                 # sampling steps: at most the training timesteps of the default schedule
GUIDANCE_RANGE = (0.0, 20.0)     # classifier-free guidance scale w (1: no guidance)
ETA_RANGE = (0.0, 1.0)           # DDIM's η: 0 deterministic, 1 DDPM-like
FLOW = "flow_prediction"         # the prediction type of flow matching (diffusers' name)
EDM = "edm"                      # Karras et al.'s preconditioned denoiser
OBJECTIVES = (*PREDICTION_TYPES, FLOW, EDM)
EDM_LOG_SIGMA = (-1.2, 1.2)      # training noise levels: ln σ ~ N(P_mean, P_std²) (Karras et al., Table 1)
EDM_TIME_SCALE = 1000.0          # the network sees t = 1000 c_noise = 250 ln σ
TIME_SAMPLINGS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class DDPMConfig:
    channels: int = option(1, "image channels")
    image_size: int = option(28, "image side (28; 32 with --pad-to 32; 8 for the digits)")
    widths: str = option("32,64,128", "U-Net width of each resolution level, comma separated")
    layers_per_block: int = option(1, "residual blocks per level on the way down (one more on the way up)")
    dropout: float = option(0.0, "dropout in the residual blocks (Ho et al.: 0.1 on CIFAR-10)")
    num_classes: int = option(0, "0: unconditional; K > 0: class-conditional with classifier-free guidance")
    label_dropout: float = option(0.1, "probability of training a label as the null label (Ho & Salimans: 0.1-0.2)")
    prediction_type: str = option("epsilon", "what the network predicts: ε, x_0, v, the velocity ε − x_0 of flow "
                                             "matching (flow_prediction), or EDM's preconditioned F (edm)",
                             choices=OBJECTIVES)
    num_train_timesteps: int = option(1000, "T")
    beta_schedule: str = option("linear", "β schedule", choices=BETA_SCHEDULES)
    beta_start: float = option(0.0001, "β_1 of the linear schedules")
    beta_end: float = option(0.02, "β_T of the linear schedules")
    zero_terminal_snr: bool = option(False, "rescale β so that x_T is pure noise (Lin et al. 2024; v or x_0 prediction)")
    snr_gamma: float = option(0.0, "min-SNR-γ loss weighting (Hang et al. 2023: γ = 5); 0: the simple loss")
    time_sampling: str = option("uniform", "flow_prediction: how training draws σ (logit_normal: Esser et al. 2024)",
                                choices=TIME_SAMPLINGS)
    sigma_data: float = option(0.5, "edm: the data's standard deviation σ_d in the preconditioning (Fashion-MNIST in "
                                    "[-1, 1]: 0.71; Karras et al.: 0.5)")
    shift: float = option(1.0, "flow_prediction: the samplers' σ shift s σ / (1 + (s − 1) σ) (1: none)")
    ema_decay: float = option(0.9995, "decay of the weights' moving average used for sampling (0: no EMA)")
    eval_steps: int = option(20, "steps of the model's own sampler (training logs, the card's metrics, the "
                                 "sampler's default)")
    eval_guidance: float = option(2.0, "guidance scale of a guided model's own samples (training logs, the card's "
                                       "metrics, the sampler's default): class-conditional or autoguided")
    guide_widths: str = option("", "autoguidance: widths of the guide U-Net stored with the model (empty: none); "
                                   "set by DDPM.with_guide, not trained here")
    eval_sampler: str = option("", "the scheduler of the model's own samples (training logs, the card's metrics, the "
                                   "sampler's default), a name from samplers_for (empty: its prediction type's first)")

    def scheduler_config(self) -> dict:
        if self.prediction_type == FLOW:
            return dict(num_train_timesteps=self.num_train_timesteps, shift=self.shift)
        if self.prediction_type == EDM:
            return dict(num_train_timesteps=self.num_train_timesteps, sigma_data=self.sigma_data)
        return dict(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start,
                    beta_end=self.beta_end, beta_schedule=self.beta_schedule, prediction_type=self.prediction_type,
                    rescale_betas_zero_snr=self.zero_terminal_snr)


def samplers_for(prediction_type: str) -> dict:
    """The schedulers that can sample a model of this prediction type, by name, the type's default first: Euler and
    Heun for flow matching; DPM-Solver++, Heun and Euler for EDM; DPM-Solver++ (ODE, then SDE), DDIM and DDPM for
    diffusion."""
    if prediction_type == FLOW:
        return FLOW_SCHEDULERS
    if prediction_type == EDM:
        return EDM_SCHEDULERS
    return {name: DIFFUSION_SCHEDULERS[name] for name in ("dpm_solver", "dpm_solver_sde", "ddim", "ddpm")}


def own_samplers(config: dict) -> tuple[str, ...]:
    """The names of the schedulers that can sample a model with this config (as a dict), its own first: its
    eval_sampler when that names one of them, else its prediction type's default."""
    names = tuple(samplers_for(config.get("prediction_type")))
    own = config.get("eval_sampler")
    return (own, *(n for n in names if n != own)) if own in names else names


def own_guidance(config: dict) -> float:
    """The guidance scale a model with this config (as a dict) samples at unless told otherwise: its eval_guidance
    if it is guided (class-conditional, or a guide attached), else 1."""
    guided = config.get("num_classes") or config.get("guide_widths")
    return config.get("eval_guidance", DDPMConfig.eval_guidance) if guided else 1.0


class DDPM(TrainableModel):
    """DDPM: a U-Net denoiser, unconditional or class-conditional with classifier-free guidance."""
    config_class = DDPMConfig
    channels_last = True           # trains 1.20x (fp32) / 1.48x (bf16) and samples faster (bench/channels_last.py)
    pipeline_tag = "unconditional-image-generation"
    card_description = """
A denoising diffusion probabilistic model (Ho et al. 2020) trained from scratch with genlab (`core/models/ddpm.py`,
U-Net in `core/models/unet.py`). The weights are the exponential moving average kept during training. Any of
genlab's schedulers, or diffusers' `DDPMScheduler`, `DDIMScheduler` and `DPMSolverMultistepScheduler`, samples it
(a flow-matching model, prediction type `flow_prediction`: `FlowMatchEulerDiscreteScheduler` and
`FlowMatchHeunDiscreteScheduler`; an EDM model, prediction type `edm`: `EDMEulerScheduler` and genlab's
`EDMHeunScheduler`); `scheduler_config.json` holds the training noise schedule. FID, KID, precision
and recall use the features of genlab's Fashion-MNIST classifier (`checkpoints/classifier`): they compare genlab
models with each other and are not comparable with Inception-FIDs from papers.
"""
    card_samples_caption = "Samples at the run's fixed noise (for a conditional model, row k is class k)."

    def __init__(self, config: DDPMConfig = DDPMConfig()):
        super().__init__()
        widths = tuple(int(w) for w in str(config.widths).split(","))
        if config.prediction_type not in OBJECTIVES or config.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"prediction_type must be one of {OBJECTIVES}, beta_schedule one of {BETA_SCHEDULES}")
        if not config.snr_gamma >= 0:
            raise ValueError(f"snr_gamma must be 0 (off) or positive, got {config.snr_gamma}")
        if config.prediction_type in (FLOW, EDM) and config.snr_gamma:
            raise ValueError("min-SNR weighting is defined for diffusion (ε, x_0, v); use snr_gamma 0 with flow "
                             "matching and EDM (which weights its loss by λ(σ) = 1/c_out²)")
        if config.zero_terminal_snr and config.prediction_type not in ("v_prediction", "sample"):
            raise ValueError("zero terminal SNR needs v or x_0 prediction: at t = T, x̂_0 = (x_T − σ ε̂)/0 (Lin et al.)")
        if config.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {config.time_sampling!r}")
        fitting = sorted(samplers_for(config.prediction_type))
        if config.eval_sampler and config.eval_sampler not in fitting:      # a list (bad JSON): unequal, not unhashable
            raise ValueError(f"eval_sampler must be one of {fitting} for {config.prediction_type}, "
                             f"got {config.eval_sampler!r}")
        self.config = config
        self.unet = UNet(config.channels, widths, config.layers_per_block, config.num_classes, dropout=config.dropout)
        self.ema = EMA(self.unet, config.ema_decay) if config.ema_decay > 0 else None
        self.guide = None
        if config.guide_widths:
            if config.num_classes:
                raise ValueError("autoguidance is built for unconditional models here; a class-conditional one has "
                                 "classifier-free guidance")
            guide_widths = tuple(int(w) for w in str(config.guide_widths).split(","))
            self.guide = UNet(config.channels, guide_widths, config.layers_per_block, 0).requires_grad_(False)
        training_path = {FLOW: FlowMatchEulerDiscreteScheduler, EDM: EDMEulerScheduler}.get(config.prediction_type,
                                                                                               DDPMScheduler)
        self.noise_scheduler = training_path(**config.scheduler_config())
        side = 10 if config.num_classes else 8
        self.register_buffer("fixed_noise", self.noise(side * side, seed=1234))

    # ------------------------------------------------------------------------------------------------- training
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
        return own_guidance(dataclasses.asdict(self.config))

    @property
    def flow(self) -> bool:
        """A flow-matching model (prediction type flow_prediction) rather than a diffusion model."""
        return self.config.prediction_type == FLOW

    @property
    def edm(self) -> bool:
        """An EDM model (prediction type edm): the U-Net is the F of Karras et al.'s preconditioned denoiser."""
        return self.config.prediction_type == EDM

    def network_time(self, t: Tensor) -> Tensor:
        """The timestep the U-Net sees for a scheduler's timestep t: t itself, or 1000 c_noise for EDM."""
        return t * EDM_TIME_SCALE if self.edm else t

    @property
    def samplers(self) -> dict:
        """The schedulers that can sample this model, by name, its own first."""
        return {name: SCHEDULERS[name] for name in own_samplers(dataclasses.asdict(self.config))}

    @property
    def default_sampler(self) -> str:
        return next(iter(self.samplers))

    def noise(self, n: int, seed: int) -> Tensor:
        c = self.config
        return torch.randn(n, c.channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))

    def configure_optimizers(self, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        if self.guide is not None:
            raise ValueError("a model with a guide is for sampling: train the model and its guide as two runs, then "
                             "attach the guide (python -m core.hub guide MODEL GUIDE OUT)")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"unet": self.optimizer}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Algorithm 1: t ~ U, ε ~ N(0, I), x_t by Eq. 4, one gradient step on ‖target − f_θ(x_t, t, y)‖².
        Flow matching: σ drawn by `time_sampling`, x_σ on the straight path, target ε − x_0, t = σ T.
        EDM: ln σ ~ N(P_mean, P_std²), x_σ = x_0 + σ ε, input c_in x_σ at t = c_noise, target (x_0 − c_skip x_σ)/c_out."""
        x0 = batch.images
        eps = torch.randn_like(x0)
        if self.edm:
            mean, std = EDM_LOG_SIGMA
            sigma = (mean + std * torch.randn(len(x0))).exp().to(x0.device)
            per_image = expand(sigma, x0)                                       # (B, 1, 1, 1)
            c_skip, c_out, c_in = edm_scalings(per_image, self.noise_scheduler.config.sigma_data)
            x_sigma = x0 + per_image * eps
            t, x_t, target = edm_noise_level(sigma), c_in * x_sigma, (x0 - c_skip * x_sigma) / c_out
        elif self.flow:
            logit_normal = self.config.time_sampling == "logit_normal"
            sigma = torch.sigmoid(torch.randn(len(x0))) if logit_normal else torch.rand(len(x0))
            sigma = sigma.to(x0.device)
            t = sigma * self.config.num_train_timesteps
            x_t, target = self.noise_scheduler.scale_noise(x0, t, eps), eps - x0
        else:
            t = torch.randint(0, self.config.num_train_timesteps, (len(x0),), device=x0.device)
            x_t = self.noise_scheduler.add_noise(x0, eps, t)
            target = {"epsilon": eps, "sample": x0,
                      "v_prediction": self.noise_scheduler.get_velocity(x0, eps, t)}[self.config.prediction_type]
        labels = None
        if self.conditional:         # classifier-free guidance: train the null label K on a fraction of the batch
            drop = torch.rand(len(x0), device=x0.device) < self.config.label_dropout
            labels = torch.where(drop, torch.full_like(batch.labels, self.config.num_classes), batch.labels)
        prediction = self.unet(x_t, self.network_time(t), labels)
        if self.config.snr_gamma > 0:
            per_image = ((prediction.float() - target) ** 2).mean(dim=(1, 2, 3))
            loss = (self.loss_weights(t) * per_image).mean()
        else:
            loss = F.mse_loss(prediction.float(), target)
        loss = self.optimizer_step(self.optimizer, loss)
        if self.ema is not None:
            self.ema.update(self.unet)
        return {"loss/denoise": loss}

    def loss_weights(self, t: Tensor) -> Tensor:
        """Min-SNR-γ: λ(t) = min(SNR, γ) / {SNR for ε, SNR + 1 for v, 1 for x_0}, SNR = ᾱ_t / (1 − ᾱ_t)."""
        abar = self.noise_scheduler.alphas_cumprod.to(t.device)[t]
        snr = abar / (1 - abar)
        clipped = snr.clamp(max=self.config.snr_gamma)
        weights = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
        return weights[self.config.prediction_type]

    def exported(self) -> "DDPM":
        """The shipped folder: the EMA weights as the model's only weights (half the file, the same samples)."""
        if self.ema is None:
            return self
        export = DDPM(dataclasses.replace(self.config, ema_decay=0.0))
        export.unet.load_state_dict(self.ema.average.state_dict())
        return export.to(self.fixed_noise.device)

    def fine_tuning_config(self) -> DDPMConfig:
        """A shipped folder's options, less what only sampling uses: no guide, and a moving average again (an
        exported model keeps its average as its weights: ema_decay 0)."""
        ema_decay = self.config.ema_decay or DDPMConfig.ema_decay
        return dataclasses.replace(self.config, guide_widths="", ema_decay=ema_decay)

    def init_from(self, saved: "DDPM") -> None:
        """Fine-tune from a shipped folder: its sampling weights (the EMA it exported) become both the weights
        trained and the start of the moving average; a guide it carries is not trained and is dropped."""
        self.unet.load_state_dict(saved.denoiser.state_dict())
        if self.ema is not None:
            self.ema.average.load_state_dict(self.unet.state_dict())

    def with_guide(self, guide: "DDPM", scale: float, sampler: str | None = None) -> "DDPM":
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
        guided = DDPM(dataclasses.replace(self.config, ema_decay=0.0, guide_widths=guide.config.widths,
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
    @property
    def denoiser(self) -> UNet:
        return self.ema.average if self.ema is not None else self.unet

    def scheduler(self, name: str | None = None, **options):
        """A genlab scheduler on this model's training noise schedule: "dpm_solver" (default), "dpm_solver_sde",
        "ddim" or "ddpm" for a diffusion model, "euler" (default) or "heun" for a flow-matching one, "edm_dpm_solver"
        (default), "edm_heun" or "edm_euler" for an EDM one; None: the model's own (`default_sampler`: its
        eval_sampler if set). DPM-Solver++ (ODE or SDE) uses dynamic thresholding for an ε-prediction model, as
        diffusers advises for pixel-space models: there x̂_0 = (x_t − σ_t ε̂)/α_t at the first, noisiest steps
        (α_T ≈ 0.006 for the linear schedule) turns small errors in ε̂ into saturated speckle; DDPM and DDIM clip its
        x̂_0 to [-1, 1] (diffusers' default). A v-prediction model needs neither (x̂_0 = α_t x_t − σ_t v̂ amplifies
        nothing) and samples better without them: DPM-Solver++ without thresholding (bench/diffusion_recipes.py:
        recall 0.45 against 0.37 with it); DDPM and DDIM without clipping, which changes x̂_0 but not ε̂ and so bends
        every step, and from t = T ("trailing" spacing, Lin et al. 2024: diffusers' "leading" starts 50 steps at t =
        980 and 20 at t = 950, where pure noise stands in for an x_t that still holds 3% and 8% of the image, √ᾱ_t):
        the shipped `ddpm` with DDIM 50 steps, FID 23.5 with clipping from t = 980, 6.1 without (500 samples at its
        guidance)."""
        samplers = self.samplers
        name = next(iter(samplers)) if name is None else name
        if name not in samplers:
            kind = "flow-matching" if self.flow else "EDM" if self.edm else "diffusion"
            raise ValueError(f"a {kind} model samples with a scheduler of {sorted(samplers)}, got {name!r}")
        defaults = dict(SCHEDULER_OPTIONS.get(name, {}))
        if samplers[name] is DPMSolverMultistepScheduler and self.config.prediction_type == "epsilon":
            defaults["thresholding"] = True
        if name in ("ddpm", "ddim") and self.config.prediction_type == "v_prediction":
            defaults.update(clip_sample=False, timestep_spacing="trailing")
        if self.config.zero_terminal_snr and name in ("ddpm", "ddim"):
            defaults["timestep_spacing"] = "trailing"             # start at t = T, the pure noise (Lin et al.)
        return samplers[name].from_config(self.config.scheduler_config(), **{**defaults, **options})

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x̂_0 from the network's output at (x_t, t): Ho et al. Eq. 15 and its v / x_0 forms, x_σ − σ v̂ (flow), or
        D(x_σ; σ) with σ = exp(4 t) (EDM)."""
        if self.flow:
            return flow_x0(output, x_t, float(t) / self.config.num_train_timesteps)
        if self.edm:
            return self.noise_scheduler.precondition_outputs(x_t, output, torch.exp(4 * t.float().cpu()))
        abar = self.noise_scheduler.alphas_cumprod[int(t)]
        return predicted_x0(self.config.prediction_type, output, x_t, abar ** 0.5, (1 - abar) ** 0.5)

    def predict(self, x_t: Tensor, t: Tensor, labels: Tensor | None, guidance_scale: float) -> Tensor:
        """f_θ(x_t, t, y) with classifier-free guidance (one batched forward pass for both halves when w ≠ 1) or
        autoguidance (the guide's pass beside the model's), in the model's precision."""
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
    def denoise(self, n: int = 16, steps: int = 20, scheduler=None, seed: int = 0, guidance_scale: float | None = None,
                label: int | Tensor | None = None, eta: float = 0.0, noise: Tensor | None = None
                ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Yield (step index, x_{t−1}, x̂_0) after every reverse step: x̂_0 is what the network believes the final
        image to be at that step (its output converted to x_0, before any clipping or thresholding). `scheduler` is
        a name (None: the model's default) or any object with the diffusers scheduler API (ours or diffusers' own).
        A second-order scheduler (Heun) runs the network twice per step and yields once per step. x_T comes from
        `seed` unless `noise` is given. guidance_scale None: the model's own (`guidance_scale`)."""
        guidance_scale = self.guidance_scale if guidance_scale is None else guidance_scale
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
        generator = torch.Generator().manual_seed(seed)
        start = noise if noise is not None else self.noise(n, seed)
        x = start.to(device) * getattr(scheduler, "init_noise_sigma", 1.0)     # (diffusers' flow schedulers have none)
        scheduler.set_timesteps(steps)
        extra = {"eta": eta} if "eta" in inspect.signature(scheduler.step).parameters else {}
        done = 0
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            output = self.predict(model_input, t.to(device), labels, guidance_scale)
            x0 = self.predicted_x0(output, x, t)
            x = scheduler.step(output, t, x, generator=generator, **extra).prev_sample
            if getattr(scheduler, "state_in_first_order", True) or i == len(scheduler.timesteps) - 1:
                yield done, x, x0
                done += 1

    def sample(self, n: int = 16, steps: int = 20, scheduler=None, seed: int = 0, guidance_scale: float | None = None,
               label: int | Tensor | None = None, eta: float = 0.0, return_intermediates: bool = False,
               batch_size: int = 256) -> Tensor | tuple[Tensor, Tensor]:
        """n images in [-1, 1]. With return_intermediates, also x_t after every step, (steps, n, C, H, W), for an
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
