"""Flow-matching samplers with the diffusers API: Euler and Heun on the rectified-flow path.

Flow matching (Lipman et al. 2023) with the straight path of rectified flow (Liu et al. 2023) joins an image x_0 and
noise ε by
    x_σ = (1 − σ) x_0 + σ ε,   σ ∈ [0, 1],
whose velocity dx_σ/dσ = ε − x_0 is what the network learns to predict: v̂(x_σ, σ). Sampling integrates the ODE
dx/dσ = v̂ from σ = 1 (pure noise) down to σ = 0. The network sees the timestep t = σ T (T = num_train_timesteps), and
x̂_0 = x_σ − σ v̂ is its guess of the final image.
    Euler:  x_{σ'} = x_σ + (σ' − σ) v̂(x_σ, σ)
    Heun:   the Euler step to x̃ at σ', then x_{σ'} = x_σ + (σ' − σ) · ½ (v̂(x_σ, σ) + v̂(x̃, σ'))      (Karras et al.
            2022, Algorithm 1 without churn); the last step, to σ' = 0, stays Euler. 2n − 1 network passes for n steps.
Caution with Heun on a velocity network: its last correction evaluates v̂ at σ' = 1/T, where the network must guess ε
from an almost clean image, and that error enters with weight dt/2 as grain (on one 2000-step model: FID 43 for
Heun 10 against 20 for Euler 20, bench/diffusion_recipes.py; the grain shrinks as that last σ' is raised). Euler
evaluates each step at its start and is the default.
The n σ's are evenly spaced from 1 to 1/T; `shift` s maps σ ↦ s σ / (1 + (s − 1) σ) (Esser et al. 2024, Eq. 23),
s > 1 spending more of the steps at high noise. As in diffusers, set_timesteps spaces the steps between the already
shifted ends and shifts again, so for s ≠ 1 the smallest σ is shifted twice; genlab keeps that, and the two
libraries agree bit for bit (tests/test_schedulers.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.schedulers.base import HeunSteps, Scheduler, SchedulerOutput


def shifted(sigmas, shift: float):
    """σ ↦ s σ / (1 + (s − 1) σ): the identity at s = 1; keeps 0 and 1 fixed."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_x0(model_output: Tensor, sample: Tensor, sigma) -> Tensor:
    """x̂_0 = x_σ − σ v̂: where the straight path through x_σ with velocity v̂ started."""
    return sample - sigma * model_output


class FlowMatchEulerDiscreteScheduler(Scheduler):
    defaults = dict(num_train_timesteps=1000, shift=1.0)

    def __init__(self, **options):
        self.config = self.read_options(options)
        c = self.config
        if not c.shift > 0:
            raise ValueError(f"shift must be positive, got {c.shift}")
        sigmas = shifted(torch.from_numpy(np.linspace(1, c.num_train_timesteps, c.num_train_timesteps,
                                                      dtype=np.float32)[::-1].copy()) / c.num_train_timesteps, c.shift)
        self.sigmas, self.timesteps = sigmas, sigmas * c.num_train_timesteps       # training grid, σ descending
        self.sigma_max, self.sigma_min = self.sigmas[0].item(), self.sigmas[-1].item()
        self.num_inference_steps: int | None = None
        self.step_index = 0

    def _inference_sigmas(self, n: int) -> Tensor:
        self._check_steps(n)
        self.num_inference_steps, self.step_index = n, 0
        T = self.config.num_train_timesteps
        sigmas = np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T
        return torch.from_numpy(shifted(sigmas, self.config.shift)).to(dtype=torch.float32)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """n σ's from 1 down to the smallest training σ, then σ = 0 appended (the end of the last step)."""
        sigmas = self._inference_sigmas(num_inference_steps).to(device)
        self.timesteps = sigmas * self.config.num_train_timesteps
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """The forward path x_σ = (1 − σ) x_0 + σ ε at σ = timestep / T (one per image, or one for all)."""
        sigma = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device) / self.config.num_train_timesteps
        sigma = sigma.reshape(-1, *([1] * (sample.ndim - 1))) if sigma.ndim else sigma
        return sigma * noise + (1.0 - sigma) * sample

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """x_σ → x_{σ'} by one Euler step (diffusers: dt = sigma_next − sigma). The steps go in the order of
        `timesteps`; `timestep` is accepted for the API."""
        sigma, sigma_next = self._advance()
        prev_sample = (sample.to(torch.float32) + (sigma_next - sigma) * model_output).to(model_output.dtype)
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)


class FlowMatchHeunDiscreteScheduler(HeunSteps, FlowMatchEulerDiscreteScheduler):
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """As Euler's, with every σ after the first visited twice (the Euler guess, then the correction):
        sigmas σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0; timesteps σ T of all but the last."""
        sigmas = self._inference_sigmas(num_inference_steps).to(device)
        self.sigmas = self.visited_twice(torch.cat([sigmas, torch.zeros(1, device=sigmas.device)]))
        self.timesteps = self.sigmas[:-1] * self.config.num_train_timesteps
        self.derivative = self.dt = self.start = None

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Heun's step (`HeunSteps`) with x̂_0 = x_σ − σ v̂, so that d = v̂."""
        prev_sample, _ = self.heun_step(sample.to(torch.float32), lambda x, sigma: flow_x0(model_output, x, sigma))
        prev_sample = prev_sample.to(model_output.dtype)
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)
