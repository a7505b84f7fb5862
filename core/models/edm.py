"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"): prediction type
"edm" of the diffusion family, the shared model being core/models/diffusion.py; the c's and samplers are in
core/schedulers/edm.py.

Path:      x_σ = x_0 + σ ε,   ε ~ N(0, I)
Denoiser:  D(x; σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x; c_noise(σ))                             (Eq. 7)
           c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / √(σ² + σ_d²),  c_in = 1 / √(σ² + σ_d²),  c_noise = ¼ ln σ
                                                                                                 (Table 1)
Loss:      λ(σ) ‖D(x_σ; σ) − x_0‖² with λ = 1/c_out², which is, on the network F (the U-Net),
           ‖F_θ(c_in x_σ; c_noise) − (x_0 − c_skip x_σ) / c_out‖²                                   (Eq. 8)
Noise:     ln σ ~ N(P_mean, P_std²) = N(−1.2, 1.2²) (Table 1): most training where the denoiser can still learn.
x̂_0:       D(x_σ; σ).
Sampling:  the probability-flow ODE dx/dσ = (x − D(x; σ)) / σ from σ_max = 80 (core/schedulers/edm.py): DPM-Solver++
           on EDM's σ's (the default), Heun (Algorithm 1) or Euler.
Departures: the network sees t = 1000 c_noise = 250 ln σ, about the span of the diffusion timesteps that its
sinusoidal embedding was made for, not c_noise itself. σ_d is an option (`sigma_data`; the paper's 0.5, while
Fashion-MNIST in [-1, 1] has 0.71).
"""
import torch
from torch import Tensor

from core.models.diffusion import Objective
from core.schedulers import EDM_SCHEDULERS, EDMEulerScheduler
from core.schedulers.base import expand
from core.schedulers.edm import edm_noise_level, edm_scalings

EDM = "edm"                      # the prediction type of Karras et al.'s preconditioned denoiser
EDM_LOG_SIGMA = (-1.2, 1.2)      # training noise levels: ln σ ~ N(P_mean, P_std²) (Karras et al., Table 1)
EDM_TIME_SCALE = 1000.0          # the network sees t = 1000 c_noise = 250 ln σ


class EDMObjective(Objective):
    """The F of EDM's preconditioned denoiser D on the path x_σ = x_0 + σ ε."""
    kind = "EDM"
    samplers = EDM_SCHEDULERS
    training_scheduler = EDMEulerScheduler

    def scheduler_config(self) -> dict:
        return dict(num_train_timesteps=self.config.num_train_timesteps, sigma_data=self.config.sigma_data)

    def training_inputs(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        """ln σ ~ N(P_mean, P_std²), x_σ = x_0 + σ ε; the input c_in x_σ at t = c_noise, the target
        (x_0 − c_skip x_σ)/c_out of Eq. 8."""
        mean, std = EDM_LOG_SIGMA
        sigma = (mean + std * torch.randn(len(x0))).exp().to(x0.device)
        per_image = expand(sigma, x0)                                       # (B, 1, 1, 1)
        c_skip, c_out, c_in = edm_scalings(per_image, self.noise_scheduler.config.sigma_data)
        x_sigma = x0 + per_image * eps
        return c_in * x_sigma, edm_noise_level(sigma), (x0 - c_skip * x_sigma) / c_out, None

    def network_time(self, t: Tensor) -> Tensor:
        """1000 c_noise for the scheduler's timestep t = c_noise."""
        return t * EDM_TIME_SCALE

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x̂_0 = D(x_σ; σ) with σ = exp(4 t), t = c_noise = ¼ ln σ."""
        return self.noise_scheduler.precondition_outputs(x_t, output, torch.exp(4 * t.float().cpu()))
