"""DPM-Solver++ (2M), Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models": good samples in 10-20 network evaluations.

The sampler solves the diffusion ODE in x_0-prediction form, with α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) and the half
log-SNR λ_t = log(α_t/σ_t). Writing h = λ_t − λ_s for a step s → t and D = x̂_0:
    first order (Eq. 5 with k = 1, = DDIM):   x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D_s
    2M multistep (Algorithm 2):   r = h_prev / h,  D = D_s + (1/(2r)) (D_s − D_prev)     ("midpoint")
                                  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D
The first step (no previous D yet) and, for short schedules (< 15 steps) or a final σ of 0, the last step are first
order (lower_order_final, as in diffusers). Internally the schedule is kept as σ̃_t = σ_t/α_t = √((1−ᾱ_t)/ᾱ_t),
with α_t = 1/√(σ̃² + 1), σ_t = σ̃ α_t.

`algorithm_type="sde-dpmsolver++"` integrates the reverse SDE instead, with the same data-prediction expansion (the
"DPM-Solver++(2M) SDE" of diffusers and k-diffusion): each step forgets part of x_s and draws fresh noise z ~ N(0, I)
in its place, like the ancestral DDPM sampler, so errors of earlier steps are corrected rather than carried along:
    first order:   x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) D_s + σ_t √(1 − e^{−2h}) z
    2M (midpoint): the same with D = D_s + (1/(2r)) (D_s − D_prev) in place of D_s.
Solver orders 1 and 2 of both algorithm types are implemented; "dpmsolver" and "sde-dpmsolver" (ε-form) are not.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.schedulers.base import ScheduleIndex, Scheduler, SchedulerOutput, expand, in_place, predicted_x0, step_noise

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")


class DPMSolverMultistepScheduler(ScheduleIndex, Scheduler):
    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint",
                    lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                    timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False)

    def __init__(self, **options):
        super().__init__(**options)
        c = self.config
        self._check_solver()
        if c.rescale_betas_zero_snr:          # ᾱ_T = 0 would make σ̃_T infinite: diffusers' smallest float16 instead
            self.alphas_cumprod[-1] = 2 ** -24
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.timesteps = torch.from_numpy(np.linspace(0, c.num_train_timesteps - 1, c.num_train_timesteps,
                                                      dtype=np.float32)[::-1].copy())
        self._reset()

    def _check_solver(self) -> None:
        c = self.config
        solver = c.solver_order in (1, 2) and c.solver_type in ("midpoint", "heun")
        if c.algorithm_type not in ALGORITHMS or not solver:
            raise ValueError(f"genlab implements DPM-Solver++ (algorithm_type one of {ALGORITHMS}) of solver_order 1 "
                             "or 2 with solver_type 'midpoint' or 'heun'")
        if c.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {c.final_sigmas_type!r}")

    def _reset(self) -> None:
        self.model_outputs: list[Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._reset_index()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """n timesteps spaced over [0, T) (one more point than steps, the last dropped), and σ̃ at each plus a final
        σ̃ = 0 ("zero": the last step lands on x̂_0) or σ̃_min."""
        self._check_steps(num_inference_steps)
        c, n, T = self.config, num_inference_steps, self.config.num_train_timesteps
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif c.timestep_spacing == "leading":
            timesteps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1].copy().astype(np.int64) + c.steps_offset
        else:
            timesteps = np.arange(T, 0, -T / n).round().copy().astype(np.int64) - 1
        if len(np.unique(timesteps)) < n:      # a zero-length step: h = 0, and the 2M update divides by it
            raise ValueError(f"timestep_spacing={c.timestep_spacing!r} with {n} steps repeats timesteps, which makes "
                             "DPM-Solver++ return NaN (diffusers' too); use fewer steps or 'trailing' spacing")
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()[timesteps]
        last = 0.0 if c.final_sigmas_type == "zero" else float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._rows = self._coefficients()
        self._reset()

    @staticmethod
    def _alpha_sigma(sigma: Tensor) -> tuple[Tensor, Tensor]:
        """σ̃ → (α_t, σ_t) = (1/√(σ̃² + 1), σ̃ α_t)."""
        alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _coefficients(self) -> Tensor:
        """Each step's scalars, for the whole schedule at once, in diffusers' float32 order of operations (element-
        wise, so each rounds as it would one at a time; tests/test_schedulers.py checks it bit for bit), so that
        `step` is left with the image-sized arithmetic. Row i, for the step s = i → t = i + 1: α_s, σ_s (for x̂_0),
        σ_t/σ_s, α_t (e^{−h} − 1), 1/r (r = h_prev/h), the midpoint's ½ α_t (e^{−h} − 1), Heun's
        α_t ((e^{−h} − 1)/h + 1), and the noise's σ_t √(1 − e^{−2h}) (0 for the ODE). For the SDE the x_s, D and
        Heun factors are its own: (σ_t/σ_s) e^{−h}, −α_t (1 − e^{−2h}) and −½ α_t (1 − e^{−2h}) (negated, as
        the ODE's update subtracts them), α_t ((1 − e^{−2h})/(−2h) + 1)."""
        alpha, sigma = self._alpha_sigma(self.sigmas)
        lambdas = torch.log(alpha) - torch.log(sigma)            # λ = log(α/σ), +inf at a final σ̃ of 0
        h = lambdas[1:] - lambdas[:-1]
        r = torch.cat([torch.full((1,), torch.nan), (lambdas[1:-1] - lambdas[:-2]) / h[1:]])
        if self.config.algorithm_type == "sde-dpmsolver++":
            ratio, kept = sigma[1:] / sigma[:-1] * torch.exp(-h), alpha[1:] * (1 - torch.exp(-2.0 * h))
            heun = alpha[1:] * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
            return torch.stack([alpha[:-1], sigma[:-1], ratio, -kept, 1.0 / r, -(0.5 * kept), heun,
                                sigma[1:] * torch.sqrt(1.0 - torch.exp(-2 * h))], 1)
        first_order = alpha[1:] * (torch.exp(-h) - 1.0)
        return torch.stack([alpha[:-1], sigma[:-1], sigma[1:] / sigma[:-1], first_order, 1.0 / r, 0.5 * first_order,
                            alpha[1:] * ((torch.exp(-h) - 1.0) / h + 1.0), torch.zeros_like(h)], 1)

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The data prediction x̂_0 that DPM-Solver++ integrates, from an ε, x_0 or v prediction."""
        alpha_t, sigma_t = self._rows[self._step_index, :2].unbind()
        return self._limit_x0(predicted_x0(self.config.prediction_type, model_output, sample, alpha_t, sigma_t))

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        self._start_at(timestep)
        c, i, n = self.config, self._step_index, len(self.timesteps)
        final_first_order = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15)
                                            or c.final_sigmas_type == "zero")
        x0 = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [x0]
        sample = sample.to(torch.float32)
        second_order = c.solver_order == 2 and self.lower_order_nums >= 1 and not final_first_order
        previous = self.model_outputs[-2] if second_order else None
        z = step_noise(sample, generator) if c.algorithm_type == "sde-dpmsolver++" else None   # fresh at every step
        *_, sigma_ratio, first_order, inverse_r, midpoint, heun, noise = self._rows[i].unbind()   # float32 scalars
        # (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D_s, in place on fresh tensors (the same roundings, fewer allocations)
        prev_sample = in_place("sub", sigma_ratio * sample, first_order * x0)
        if previous is not None:
            d1 = inverse_r * (x0 - previous)                                 # 2M: the correction from the previous x̂_0
            if c.solver_type == "midpoint":
                prev_sample = in_place("sub", prev_sample, midpoint * d1)
            else:
                prev_sample = in_place("add", prev_sample, heun * d1)
        if z is not None:
            prev_sample = in_place("add", prev_sample, noise * z)
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        prev_sample = prev_sample.to(x0.dtype)                 # x̂_0's dtype, as diffusers casts to its converted output
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = α_t x_0 + σ_t ε at the σ̃ of the schedule position of each t (after set_timesteps), as in diffusers."""
        if self.num_inference_steps is None:
            return super().add_noise(original_samples, noise, timesteps)
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        indices = self._noise_indices(timesteps)
        alpha_t, sigma_t = self._alpha_sigma(expand(sigmas[indices], original_samples))
        return alpha_t * original_samples + sigma_t * noise
