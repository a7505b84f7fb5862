"""DDIM, Song et al. 2021, "Denoising Diffusion Implicit Models".

Same trained network as DDPM, a non-Markovian reverse process that may skip timesteps. One step t → t' (Eq. 12):
    x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t                                   "predicted x_0"
    σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'})            Eq. 16
    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z             "direction pointing to x_t" + noise
η = 0 is deterministic (an ODE sampler: the same x_T always gives the same x_0); η = 1 is DDPM-like.
t' = t − T/n as in diffusers, and past the first step ᾱ_{t'} = 1 (set_alpha_to_one) or ᾱ_0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.schedulers.base import (Scheduler, SchedulerOutput, in_place, predicted_eps, predicted_x0, spaced_timesteps,
                                  step_noise)


class DDIMScheduler(Scheduler):
    takes_eta = True                     # step(..., eta): Eq. 16's η
    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    clip_sample=True, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
                    thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0,
                    timestep_spacing="leading", rescale_betas_zero_snr=False)

    def __init__(self, **options):
        super().__init__(**options)
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        self._check_steps(num_inference_steps)
        c = self.config
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(spaced_timesteps(c.num_train_timesteps, num_inference_steps,
                                                           c.timestep_spacing, c.steps_offset)).to(device)
        self._rows = {}

    def _coefficients(self, eta: float) -> dict[int, Tensor]:
        """Each visited t's scalars for this η, for the whole schedule at once, in diffusers' float32 order of
        operations (only +, −, ×, ÷ and √, which round the same element-wise as one at a time), so that `step` is
        left with the image-sized arithmetic. diffusers' names: alpha_prod_t = ᾱ_t, alpha_prod_t_prev = ᾱ_{t'},
        beta_prod_t = 1 − ᾱ_t, std_dev_t = σ_t (Eq. 16)."""
        if eta not in self._rows:
            t = self.timesteps.cpu()
            prev = t - self.config.num_train_timesteps // self.num_inference_steps
            alpha_prod_t = self.alphas_cumprod[t]
            alpha_prod_t_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], self.final_alpha_cumprod)
            beta_prod_t = 1 - alpha_prod_t
            variance = (1 - alpha_prod_t_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev)
            std_dev_t = eta * variance ** 0.5
            rows = torch.stack([alpha_prod_t ** 0.5, beta_prod_t ** 0.5, alpha_prod_t_prev ** 0.5,
                                (1 - alpha_prod_t_prev - std_dev_t ** 2) ** 0.5, std_dev_t], 1)
            self._rows[eta] = dict(zip(t.tolist(), rows))
        return self._rows[eta]

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: Tensor | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """x_t → x_{t'} by Eq. 12. diffusers' names: alpha_prod_t = ᾱ_t, alpha_prod_t_prev = ᾱ_{t'},
        beta_prod_t = 1 − ᾱ_t, std_dev_t = σ_t (Eq. 16), pred_original_sample = x̂_0, pred_epsilon = ε̂."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        t = int(timestep)
        rows = self._coefficients(eta)
        if t not in rows:
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps; call set_timesteps first")
        noise = None
        if eta > 0:
            noise = variance_noise if variance_noise is not None else step_noise(model_output, generator)
        alpha, sigma, alpha_prev, direction, std_dev_t = rows[t].unbind()       # float32 scalars, as diffusers'
        # x̂_0 and ε̂ from the model output, whichever of ε, x_0, v it predicts
        p = self.config.prediction_type
        x0 = predicted_x0(p, model_output, sample, alpha, sigma)
        eps = predicted_eps(p, model_output, sample, alpha, sigma, x0)
        x0 = self._limit_x0(x0, fresh=x0 is not model_output)
        if use_clipped_model_output:              # re-derive ε̂ from the clipped x̂_0 (as in Song et al.'s code)
            eps = (sample - alpha * x0) / sigma
        # Eq. 12: √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ (+ σ_t z)
        prev_sample = in_place("add", alpha_prev * x0, direction * eps)
        if noise is not None:
            prev_sample = in_place("add", prev_sample, std_dev_t * noise)
        if not return_dict:
            return (prev_sample, x0)
        return SchedulerOutput(prev_sample, x0)
