"""DDPM, Ho et al. 2020, "Denoising Diffusion Probabilistic Models": the ε, x_0 and v objectives of the diffusion
family, and `DDPM`, the family's checkpoint class. The shared model (network, EMA, guidance, sampling loop) is
core/models/diffusion.py; the other objectives are flow_matching.py and edm.py; the samplers are core/schedulers/.

Forward process (Eq. 4):  x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε,   ε ~ N(0, I),  t ~ U{0, …, T−1}.
Training (Algorithm 1):   minimise λ(t) ‖target − f_θ(x_t, t)‖² (Eq. 14 with the "simple" weighting λ = 1), where
                          the prediction type sets the target: ε ("epsilon", the paper), x_0 ("sample"), or
                          v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 ("v_prediction", Salimans & Ho 2022).
x̂_0:                      (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t (Eq. 15), x̂_0 itself, or √ᾱ_t x_t − √(1 − ᾱ_t) v̂.
Min-SNR-γ weighting:      (Hang et al. 2023) with SNR(t) = ᾱ_t / (1 − ᾱ_t), weight each image's loss so that, in
                          x_0 terms, it is min(SNR, γ) ‖x_0 − x̂_0‖²: the low-noise steps, which are easy, no longer
                          dominate the gradient. Since ‖ε − ε̂‖² = SNR ‖x_0 − x̂_0‖² and
                          ‖v − v̂‖² = (SNR + 1) ‖x_0 − x̂_0‖², λ = min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v
                          and min(SNR, γ) for x_0.
Zero terminal SNR:        (Lin et al. 2024) the linear and cosine schedules leave √ᾱ_T > 0, so x_T in training still
                          holds a trace of x_0 that sampling's pure noise lacks; rescaling β to √ᾱ_T = 0 removes that
                          mismatch (then only v or x_0 prediction are defined at t = T; samplers start at t = T).
Sampling (Algorithm 2):   x_T ~ N(0, I), then x_{t−1} from x_t by a scheduler's `step` (DDPM, DDIM, DPM-Solver++),
                          down to x_0.

This is not the often-copied "diffusion" blog snippet (an autoencoder without a timestep input whose reverse step
returns its x_0 guess): here every step samples from q(x_{t−1} | x_t, x̂_0), and the network knows t.
Every diffusion-family checkpoint, whatever its objective, names the class `DDPM` in its config.json (the family
began as this paper), and `DDPMConfig` holds the options of every objective.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

from core.config import option
from core.models.consistency import TARGETS, ConsistencyObjective
from core.models.diffusion import (ETA_RANGE, GUIDANCE_RANGE, MAX_STEPS, DiffusionModel, Objective, own_first,
                                   variance_preserving_schedule)
from core.models.edm import EDM, EDMObjective
from core.models.flow_matching import FLOW, TIME_SAMPLINGS, FlowMatchingObjective
from core.schedulers import DIFFUSION_SCHEDULERS, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from core.schedulers.base import BETA_SCHEDULES, PREDICTION_TYPES, predicted_x0

__all__ = ["DDPM", "DDPMConfig", "DDPMObjective", "OBJECTIVES", "objective_for", "MAX_STEPS", "GUIDANCE_RANGE",
           "ETA_RANGE", "samplers_for", "own_samplers", "own_guidance"]


class DDPMObjective(Objective):
    """ε, x_0 or v prediction on Ho et al.'s variance-preserving path, with min-SNR-γ and zero terminal SNR."""
    kind = "diffusion"
    samplers = {name: DIFFUSION_SCHEDULERS[name] for name in ("dpm_solver", "dpm_solver_sde", "unipc", "ddim", "ddpm")}
    training_scheduler = DDPMScheduler

    def scheduler_config(self) -> dict:
        return variance_preserving_schedule(self.config)

    def training_inputs(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Algorithm 1: t ~ U{0, …, T−1}, x_t by Eq. 4, the target of the prediction type, min-SNR-γ weights."""
        t = torch.randint(0, self.config.num_train_timesteps, (len(x0),), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, eps, t)
        target = {"epsilon": eps, "sample": x0,
                  "v_prediction": self.noise_scheduler.get_velocity(x0, eps, t)}[self.config.prediction_type]
        return x_t, t, target, self.loss_weights(t) if self.config.snr_gamma > 0 else None

    def loss_weights(self, t: Tensor) -> Tensor:
        """Min-SNR-γ: λ(t) = min(SNR, γ) / {SNR for ε, SNR + 1 for v, 1 for x_0}, SNR = ᾱ_t / (1 − ᾱ_t)."""
        abar = self.noise_scheduler.alphas_cumprod.to(t.device)[t]
        snr = abar / (1 - abar)
        clipped = snr.clamp(max=self.config.snr_gamma)
        weights = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
        return weights[self.config.prediction_type]

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Eq. 15 and its x_0 and v forms (core.schedulers.base.predicted_x0)."""
        abar = self.noise_scheduler.alphas_cumprod[int(t)]
        return predicted_x0(self.config.prediction_type, output, x_t, abar ** 0.5, (1 - abar) ** 0.5)

    def sampler_options(self, name: str) -> dict:
        """DPM-Solver++ (ODE or SDE) and UniPC use dynamic thresholding for an ε-prediction model, as diffusers advises
        for pixel-space models: there x̂_0 = (x_t − σ_t ε̂)/α_t at the first, noisiest steps (α_T ≈ 0.006 for the linear
        schedule) turns small errors in ε̂ into saturated speckle; DDPM and DDIM clip its x̂_0 to [-1, 1] (diffusers'
        default). A v-prediction model needs neither (x̂_0 = α_t x_t − σ_t v̂ amplifies nothing) and samples better
        without them: DPM-Solver++ without thresholding (bench/diffusion_recipes.py: recall 0.45 against 0.37 with it);
        DDPM and DDIM without clipping, which changes x̂_0 but not ε̂ and so bends every step, and from t = T
        ("trailing" spacing, Lin et al. 2024: diffusers' "leading" starts 50 steps at t = 980 and 20 at t = 950, where
        pure noise stands in for an x_t that still holds 3% and 8% of the image, √ᾱ_t): the shipped `ddpm` with DDIM 50
        steps, FID 23.5 with clipping from t = 980, 6.1 without (500 samples at its guidance). With zero terminal SNR,
        DDPM and DDIM start at t = T too, the pure noise (Lin et al.)."""
        options, prediction_type = {}, self.config.prediction_type
        x0_solvers = (DPMSolverMultistepScheduler, UniPCMultistepScheduler)
        if self.samplers[name] in x0_solvers and prediction_type == "epsilon":
            options["thresholding"] = True
        if name in ("ddpm", "ddim") and prediction_type == "v_prediction":
            options.update(clip_sample=False, timestep_spacing="trailing")
        if self.config.zero_terminal_snr and name in ("ddpm", "ddim"):
            options["timestep_spacing"] = "trailing"
        return options


# ------------------------------------------------------------------------------ the family's checkpoint class
OBJECTIVES: dict[str, type[Objective]] = {**dict.fromkeys(PREDICTION_TYPES, DDPMObjective),
                                          FLOW: FlowMatchingObjective, EDM: EDMObjective}


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
                                  choices=tuple(OBJECTIVES))
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
    consistency: str = option("", "a consistency student of its --init-from teacher (core/models/consistency.py), "
                                  "trained toward 'cd' or 'trajectory'; empty: not one", choices=("",) + TARGETS)
    teacher_widths: str = option("", "consistency distillation: widths of the frozen teacher U-Net carried while the "
                                     "student trains (the teacher's widths; empty in an exported student)")


def objective_for(prediction_type: str, consistency: str = "") -> type[Objective]:
    """The objective of a model: a consistency student's, else its prediction type's."""
    if consistency:
        return ConsistencyObjective
    return OBJECTIVES[prediction_type]


def samplers_for(prediction_type: str, consistency: str = "") -> dict:
    """The schedulers that can sample a model of this prediction type, by name, the type's default first: Euler and
    Heun for flow matching; DPM-Solver++, Heun and Euler for EDM; DPM-Solver++ (ODE, then SDE), UniPC, DDIM and DDPM
    for diffusion (also the answer for a type that is not one); consistency sampling (LCM) for a consistency
    student."""
    if consistency:
        return ConsistencyObjective.samplers
    objective = OBJECTIVES.get(prediction_type, DDPMObjective) if isinstance(prediction_type, str) else DDPMObjective
    return objective.samplers


def own_samplers(config: dict) -> tuple[str, ...]:
    """The names of the schedulers that can sample a model with this config (as a dict), its own first: its
    eval_sampler when that names one of them, else its prediction type's default."""
    samplers = samplers_for(config.get("prediction_type"), config.get("consistency") or "")
    return own_first(tuple(samplers), config.get("eval_sampler"))


def own_guidance(config: dict) -> float:
    """The guidance scale a model with this config (as a dict) samples at unless told otherwise: its eval_guidance
    if it is guided (class-conditional, or a guide attached), else 1."""
    guided = config.get("num_classes") or config.get("guide_widths")
    return config.get("eval_guidance", DDPMConfig.eval_guidance) if guided else 1.0


def check_config(config: DDPMConfig) -> None:
    """Refuse options that do not fit together, before anything is built."""
    if config.prediction_type not in tuple(OBJECTIVES) or config.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"prediction_type must be one of {tuple(OBJECTIVES)}, beta_schedule one of {BETA_SCHEDULES}")
    if not config.snr_gamma >= 0:
        raise ValueError(f"snr_gamma must be 0 (off) or positive, got {config.snr_gamma}")
    if OBJECTIVES[config.prediction_type] is not DDPMObjective and config.snr_gamma:
        raise ValueError("min-SNR weighting is defined for diffusion (ε, x_0, v); use snr_gamma 0 with flow "
                         "matching and EDM (which weights its loss by λ(σ) = 1/c_out²)")
    if config.zero_terminal_snr and config.prediction_type not in ("v_prediction", "sample"):
        raise ValueError("zero terminal SNR needs v or x_0 prediction: at t = T, x̂_0 = (x_T − σ ε̂)/0 (Lin et al.)")
    if config.time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {config.time_sampling!r}")
    if config.consistency not in ("",) + TARGETS:
        raise ValueError(f"consistency must be empty or one of {TARGETS}, got {config.consistency!r}")
    if config.consistency and OBJECTIVES[config.prediction_type] is not DDPMObjective:
        raise ValueError("consistency distillation takes a diffusion teacher (ε, x_0 or v prediction)")
    if config.consistency and config.num_train_timesteps // 50 < 2:
        raise ValueError("consistency distillation's grid t = 20k − 1 (T/50 apart) needs num_train_timesteps ≥ 100")
    if config.teacher_widths and not config.consistency:
        raise ValueError("teacher_widths is for a consistency student (--consistency cd or trajectory)")
    fitting = sorted(samplers_for(config.prediction_type, config.consistency))
    if config.eval_sampler and config.eval_sampler not in fitting:      # a list (bad JSON): unequal, not unhashable
        raise ValueError(f"eval_sampler must be one of {fitting} for {config.prediction_type}, "
                         f"got {config.eval_sampler!r}")


class DDPM(DiffusionModel):
    """The diffusion family's model: a U-Net denoiser (core/models/diffusion.py) trained and sampled by the
    objective its prediction_type names (`OBJECTIVES`)."""
    config_class = DDPMConfig
    pipeline_tag = "unconditional-image-generation"
    card_description = """
A denoising diffusion probabilistic model (Ho et al. 2020) trained from scratch with genlab (`core/models/ddpm.py`,
U-Net in `core/models/unet.py`). The weights are the exponential moving average kept during training. Any of
genlab's schedulers, or diffusers' `DDPMScheduler`, `DDIMScheduler` and `DPMSolverMultistepScheduler`, samples it
(a flow-matching model, prediction type `flow_prediction`: `FlowMatchEulerDiscreteScheduler` and
`FlowMatchHeunDiscreteScheduler`; an EDM model, prediction type `edm`: `EDMEulerScheduler` and genlab's
`EDMHeunScheduler`; a consistency student, config `consistency`: genlab's or diffusers' `LCMScheduler`, in a few
steps); `scheduler_config.json` holds the training noise schedule. FID, KID, precision
and recall use the features of genlab's Fashion-MNIST classifier (`checkpoints/classifier`): they compare genlab
models with each other and are not comparable with Inception-FIDs from papers.
"""
    card_samples_caption = "Samples at the run's fixed noise (for a conditional model, row k is class k)."

    def __init__(self, config: DDPMConfig = DDPMConfig()):
        check_config(config)
        super().__init__(config, objective_for(config.prediction_type, config.consistency)(config))

    @property
    def flow(self) -> bool:
        """A flow-matching model (prediction type flow_prediction) rather than a diffusion model."""
        return self.config.prediction_type == FLOW

    @property
    def edm(self) -> bool:
        """An EDM model (prediction type edm): the U-Net is the F of Karras et al.'s preconditioned denoiser."""
        return self.config.prediction_type == EDM
