"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1) on a DDPM noise schedule, as
the latent consistency models of Luo et al. 2023 run it: diffusers' `LCMScheduler`, written from scratch.

A consistency function f maps any x_t of an ODE trajectory to the trajectory's end, x_0; the network gives it in
the parameterisation of Song et al. (Sec. 3), which makes f(x, 0) = x hold by construction:
    f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0(x_t, t),
    c_skip(t) = σ_d² / ((s t)² + σ_d²),   c_out(t) = s t / √((s t)² + σ_d²),   σ_d = 0.5, s = timestep_scaling (10)
with x̂_0 read from the output as any DDPM-family output is read (ε, x_0 or v). One step from t to the next
timestep t' (Algorithm 1): x_0 ← f(x_t, t), then x_{t'} = √ᾱ_{t'} x_0 + √(1 − ᾱ_{t'}) z with fresh noise z; the
last step returns f itself. One step is one-step generation; more steps trade time for quality.

Timesteps (Luo et al., Sec. 4.3): a student is distilled on the "skipping" grid t = k·(T/N) − 1, k = 1 … N
(N = original_inference_steps, 50: t = 19, 39, …, 999); n steps take n of those points evenly spaced in index,
starting at T − 1, so n ≤ N. The arithmetic keeps diffusers' float32 order of operations: the two agree bit for bit
(tests/test_schedulers.py). Departure: diffusers' custom `timesteps` and `strength` (image-to-image) are not here.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.schedulers.base import ScheduleIndex, Scheduler, SchedulerOutput, predicted_x0, step_noise

SIGMA_DATA = 0.5        # σ_d of the boundary condition (diffusers fixes it, as Luo et al. do)


class LCMScheduler(ScheduleIndex, Scheduler):
    defaults = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    original_inference_steps=50, clip_sample=False, clip_sample_range=1.0, set_alpha_to_one=True,
                    steps_offset=0, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, timestep_spacing="leading", timestep_scaling=10.0,
                    rescale_betas_zero_snr=False)

    def __init__(self, **options):
        super().__init__(**options)
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def skipping_grid(self, original_inference_steps: int | None = None) -> np.ndarray:
        """The distillation grid t = k·(T/N) − 1, k = 1 … N, ascending (N: original_inference_steps)."""
        n = original_inference_steps or self.config.original_inference_steps
        T = self.config.num_train_timesteps
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
            raise ValueError(f"original_inference_steps must be an integer from 1 to {T}, got {n!r}")
        return np.arange(1, n + 1) * (T // n) - 1

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      original_inference_steps: int | None = None) -> None:
        """n of the grid's points, evenly spaced in index from its top (T − 1)."""
        grid = self.skipping_grid(original_inference_steps)[::-1].copy()
        if not isinstance(num_inference_steps, (int, np.integer)) or not 1 <= num_inference_steps <= len(grid):
            raise ValueError(f"num_inference_steps must be an integer from 1 to {len(grid)} (the consistency "
                             f"model's original_inference_steps), got {num_inference_steps!r}")
        picked = np.floor(np.linspace(0, len(grid), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = torch.from_numpy(grid[picked]).to(device=device, dtype=torch.long)
        self.num_inference_steps = num_inference_steps
        self._reset_index()

    def boundary_scalings(self, timestep: int | Tensor) -> tuple:
        """(c_skip, c_out) at t: 1 and 0 at t = 0, so that f(x, 0) = x; about 0 and 1 from t ≈ 1 on."""
        scaled = timestep * self.config.timestep_scaling
        c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
        c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
        return c_skip, c_out

    def consistency(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor) -> Tensor:
        """f(x_t, t) = c_skip x_t + c_out x̂_0, x̂_0 clipped or thresholded if the config says so."""
        abar = self.alphas_cumprod[timestep]
        x0 = predicted_x0(self.config.prediction_type, model_output, sample, abar.sqrt(), (1 - abar).sqrt())
        c_skip, c_out = self.boundary_scalings(timestep)
        return c_out * self._limit_x0(x0) + c_skip * sample

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """x_0 = f(x_t, t), then x_{t'} = √ᾱ_{t'} x_0 + √(1 − ᾱ_{t'}) z, or x_0 itself at the last step."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        self._start_at(timestep)
        denoised = self.consistency(model_output, timestep, sample)
        if self._step_index != self.num_inference_steps - 1:
            prev = self.timesteps[self._step_index + 1]
            abar_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
            prev_sample = abar_prev.sqrt() * denoised + (1 - abar_prev).sqrt() * step_noise(denoised, generator)
        else:
            prev_sample = denoised
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
