"""DDPM ancestral sampling, Ho et al. 2020, "Denoising Diffusion Probabilistic Models".

The reverse step samples the posterior q(x_{t'} | x_t, x̂_0), Eqs. 6-7, with t' the previous visited timestep
(t − 1 when all T steps run):
    x̂_0 from the model output (ε: x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t), clipped or thresholded
    μ̃ = √ᾱ_{t'} β̃ / (1 − ᾱ_t) · x̂_0 + √α̃ (1 − ᾱ_{t'}) / (1 − ᾱ_t) · x_t,    α̃ = ᾱ_t / ᾱ_{t'},  β̃ = 1 − α̃
    x_{t'} = μ̃ + σ z,  z ~ N(0, I),  σ² = (1 − ᾱ_{t'}) / (1 − ᾱ_t) · β̃  ("fixed_small", Eq. 7)  or  β̃  ("fixed_large")
and no noise is added at t = 0 (Algorithm 2, line 3).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.schedulers.base import Scheduler, SchedulerOutput, in_place, predicted_x0, spaced_timesteps, step_noise

VARIANCE_TYPES = ("fixed_small", "fixed_large")


class DDPMScheduler(Scheduler):
    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    variance_type="fixed_small", clip_sample=True, prediction_type="epsilon", thresholding=False,
                    dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0,
                    timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False)

    def __init__(self, **options):
        super().__init__(**options)
        if self.config.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {self.config.variance_type!r}")
        self._previous: dict[int, int] = {}
        self._rows: dict[int, Tensor] = {}          # the schedule's scalars per t (set_timesteps, or the first step)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Visit `num_inference_steps` of the T training timesteps (T: the paper's sampler; fewer: a strided one)."""
        self._check_steps(num_inference_steps)
        c = self.config
        timesteps = spaced_timesteps(c.num_train_timesteps, num_inference_steps, c.timestep_spacing, c.steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._previous = dict(zip(timesteps.tolist(), np.append(timesteps[1:], -1).tolist()))
        self._rows = self._coefficients(timesteps, np.append(timesteps[1:], -1))

    def previous_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            return timestep - 1
        if timestep not in self._previous:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps; call set_timesteps first")
        return self._previous[timestep]

    def _coefficients(self, timesteps: np.ndarray, previous: np.ndarray) -> dict[int, Tensor]:
        """Each step's scalars, for all of a schedule's steps t → t' at once, in diffusers' float32 order of
        operations (only +, −, ×, ÷ and √, which round the same element-wise as one at a time), so that `step` is
        left with the image-sized arithmetic. diffusers' names: alpha_prod_t = ᾱ_t, alpha_prod_t_prev = ᾱ_{t'},
        beta_prod_t = 1 − ᾱ_t, current_alpha_t = α̃ = ᾱ_t/ᾱ_{t'}, current_beta_t = β̃, pred_original_sample_coeff and
        current_sample_coeff = the two weights of μ̃ (Eq. 7), variance = σ²."""
        t, prev = torch.from_numpy(np.asarray(timesteps)), torch.from_numpy(np.asarray(previous))
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], torch.tensor(1.0))
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        x0_coeff = alpha_prod_t_prev ** 0.5 * current_beta_t / beta_prod_t
        xt_coeff = current_alpha_t ** 0.5 * beta_prod_t_prev / beta_prod_t
        if self.config.variance_type == "fixed_small":
            variance = torch.clamp(beta_prod_t_prev / beta_prod_t * current_beta_t, min=1e-20)
        else:
            variance = current_beta_t
        rows = torch.stack([alpha_prod_t ** 0.5, beta_prod_t ** 0.5, x0_coeff, xt_coeff, variance ** 0.5], 1)
        return dict(zip(t.tolist(), rows))

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """x_t → x_{t'} by Eqs. 6-7, with the step's scalars from `_coefficients`."""
        t = int(timestep)
        if not self._rows:             # no set_timesteps: all T steps t → t − 1, the paper's sampler
            self._rows = self._coefficients(self.timesteps.numpy(), self.timesteps.numpy() - 1)
        if t not in self._rows:
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps; call set_timesteps first")
        noise = step_noise(model_output, generator) if t > 0 else None           # σ z except at t = 0
        alpha, sigma, x0_coeff, xt_coeff, std = self._rows[t].unbind()         # float32 scalars, as diffusers' are
        # x̂_0 from the model output (Eq. 15 for ε), clipped or thresholded
        x0 = predicted_x0(self.config.prediction_type, model_output, sample, alpha, sigma)
        x0 = self._limit_x0(x0, fresh=x0 is not model_output)
        # the posterior mean μ̃(x_t, x̂_0), Eq. 7, plus σ z
        prev_sample = in_place("add", x0_coeff * x0, xt_coeff * sample)
        if noise is not None:
            prev_sample = in_place("add", prev_sample, std * noise)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample, x0)
