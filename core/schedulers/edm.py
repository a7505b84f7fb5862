"""EDM samplers with the diffusers API (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): Euler, bit for bit diffusers' `EDMEulerScheduler`, Heun, the paper's Algorithm 1, and
DPM-Solver++ (2M) on EDM's σ's, bit for bit diffusers' `EDMDPMSolverMultistepScheduler`.

EDM writes diffusion as x_σ = x_0 + σ ε with σ from σ_max down to 0, and learns a denoiser D(x; σ) ≈ E[x_0 | x_σ]
whose network F is wrapped so that its input and its target have unit variance at every σ (Table 1):
    D(x; σ) = c_skip x + c_out F(c_in x; c_noise),
    c_skip = σ_d² / (σ² + σ_d²),   c_out = σ σ_d / √(σ² + σ_d²),   c_in = 1 / √(σ² + σ_d²),   c_noise = ¼ ln σ,
with σ_d = 0.5 the data's standard deviation (diffusers' prediction_type "v_prediction" flips the sign of c_out).
Sampling solves the probability-flow ODE dx/dσ = (x − D(x; σ)) / σ through n noise levels (Eq. 5, ρ = 7)
    σ_i = (σ_max^{1/ρ} + i/(n − 1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,   i = 0 … n − 1,   then σ_n = 0:
    Euler:  x_{i+1} = x_i + (σ_{i+1} − σ_i) d_i,   d_i = (x_i − D(x_i; σ_i)) / σ_i
    Heun:   the Euler guess x̃ at σ_{i+1}, then x_{i+1} = x_i + (σ_{i+1} − σ_i) · ½ (d_i + (x̃ − D(x̃; σ_{i+1})) / σ_{i+1});
            the last step, to σ = 0, stays Euler: 2n − 1 network passes for n steps.
ρ = 7 crowds the steps at low noise, where the ODE curves most. The network sees the timestep c_noise(σ), and its
input is scaled by c_in in `scale_model_input`. As diffusers does, the first sample is drawn from
N(0, (σ_max² + 1) I) (`init_noise_sigma`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from core.schedulers.base import HeunSteps, Scheduler, SchedulerOutput
from core.schedulers.dpm_solver import DPMSolverMultistepScheduler

SIGMA_SCHEDULES = ("karras", "exponential")
EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")       # diffusers' names for the sign of c_out: + and −
FINAL_SIGMAS = ("zero", "sigma_min")


def edm_scalings(sigma, sigma_data: float) -> tuple:
    """(c_skip, c_out, c_in) of Table 1, in diffusers' order of operations."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5
    c_in = 1 / ((sigma ** 2 + sigma_data ** 2) ** 0.5)
    return c_skip, c_out, c_in


def edm_noise_level(sigma) -> Tensor:
    """c_noise = ¼ ln σ: the timestep the network sees."""
    return 0.25 * torch.log(torch.as_tensor(sigma))


class EDMSigmas:
    """What every EDM sampler shares: the options, the σ schedule, the first sample's scale and D(x; σ)."""
    defaults = dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, sigma_schedule="karras",
                    num_train_timesteps=1000, prediction_type="epsilon", rho=7.0, final_sigmas_type="zero")

    def _check_edm(self) -> None:
        c = self.config
        if c.sigma_schedule not in SIGMA_SCHEDULES or c.prediction_type not in EDM_PREDICTION_TYPES \
                or c.final_sigmas_type not in FINAL_SIGMAS:
            raise ValueError(f"{type(self).__name__}: sigma_schedule must be one of {SIGMA_SCHEDULES}, prediction_type "
                             f"one of {EDM_PREDICTION_TYPES}, final_sigmas_type one of {FINAL_SIGMAS}")
        if not (0 < c.sigma_min < c.sigma_max and c.sigma_data > 0 and c.rho > 0):
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max and sigma_data, rho > 0, got {dict(c)}")

    @property
    def init_noise_sigma(self) -> float:
        return (self.config.sigma_max ** 2 + 1) ** 0.5

    def _schedule(self, ramp: Tensor) -> Tensor:
        """σ's from σ_max to σ_min at the positions `ramp` ∈ [0, 1]: Karras's ρ-schedule, or evenly spaced in ln σ."""
        c = self.config
        if c.sigma_schedule == "karras":
            max_inv_rho, min_inv_rho = c.sigma_max ** (1 / c.rho), c.sigma_min ** (1 / c.rho)
            return ((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** c.rho).to(torch.float32)
        return torch.linspace(math.log(c.sigma_min), math.log(c.sigma_max), len(ramp)).exp().flip(0)

    def precondition_outputs(self, sample: Tensor, model_output: Tensor, sigma) -> Tensor:
        """D(x; σ) = c_skip x + c_out F."""
        c_skip, c_out, _ = edm_scalings(sigma, self.config.sigma_data)
        c_out = c_out if self.config.prediction_type == "epsilon" else -c_out
        return c_skip * sample + c_out * model_output


class EDMEulerScheduler(EDMSigmas, Scheduler):
    def __init__(self, **options):
        self.config = self.read_options(options)
        self._check_edm()
        self.num_inference_steps: int | None = None
        self.step_index = 0
        c = self.config
        self._set_sigmas(self._schedule(torch.arange(c.num_train_timesteps + 1, dtype=torch.float64)
                                        / c.num_train_timesteps))

    def _set_sigmas(self, sigmas: Tensor) -> None:
        """timesteps = c_noise of the n σ's; sigmas = the n σ's and the last step's target (0, or σ_min)."""
        self.timesteps = edm_noise_level(sigmas)
        last = sigmas[-1:] if self.config.final_sigmas_type == "sigma_min" else torch.zeros(1, device=sigmas.device)
        self.sigmas = torch.cat([sigmas, last])

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps, self.step_index = num_inference_steps, 0
        ramp = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        self._set_sigmas(self._schedule(ramp).to(device))

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """c_in x at the σ of the next `step` call."""
        return sample * edm_scalings(self.sigmas[self.step_index], self.config.sigma_data)[2]

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """x_{i+1} = x_i + (σ_{i+1} − σ_i) d_i. The steps go in the order of `timesteps`; `timestep` is accepted for
        the API. Stochastic churn is not implemented (s_churn must be 0): diffusers adds its noise after the
        network has seen the sample, which is not the paper's Algorithm 2."""
        if s_churn:
            raise ValueError("EDM churn is not implemented in genlab: use s_churn=0 (the deterministic sampler)")
        sigma, sigma_next = self._advance()
        sample = sample.to(torch.float32)
        denoised = self.precondition_outputs(sample, model_output, sigma)
        derivative = (sample - denoised) / sigma                     # the ODE's slope (x − D(x; σ)) / σ
        prev_sample = (sample + derivative * (sigma_next - sigma)).to(model_output.dtype)
        return SchedulerOutput(prev_sample, denoised) if return_dict else (prev_sample, denoised)


class EDMHeunScheduler(HeunSteps, EDMEulerScheduler):
    """Karras et al.'s Algorithm 1 (deterministic, second order). diffusers has no EDM Heun: the tests compare it with
    the algorithm written out as a loop."""

    def __init__(self, **options):
        super().__init__(**options)
        if self.config.final_sigmas_type != "zero":
            raise ValueError("EDMHeunScheduler ends at σ = 0 (Algorithm 1): final_sigmas_type must be 'zero'")

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """As Euler's, with every σ after the first visited twice (the Euler guess, then the correction):
        sigmas σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0 and timesteps c_noise of all but the last."""
        super().set_timesteps(num_inference_steps, device)
        self.sigmas = self.visited_twice(self.sigmas)
        self.timesteps = edm_noise_level(self.sigmas[:-1])
        self.derivative = self.dt = self.start = None

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Heun's step (`HeunSteps`) with x̂_0 = D(x; σ)."""
        prev_sample, denoised = self.heun_step(sample.to(torch.float32),
                                               lambda x, sigma: self.precondition_outputs(x, model_output, sigma))
        prev_sample = prev_sample.to(model_output.dtype)
        return SchedulerOutput(prev_sample, denoised) if return_dict else (prev_sample, denoised)


class EDMDPMSolverMultistepScheduler(EDMSigmas, DPMSolverMultistepScheduler):
    """DPM-Solver++ (2M, `core/schedulers/dpm_solver.py`) on EDM's σ's, bit for bit diffusers' class of this name.
    On the path x_σ = x_0 + σ ε the solver's α_t = 1 and σ_t = σ, so λ = −ln σ, h = ln(σ_s/σ_t), and its data
    prediction is the denoiser D(x; σ):
        x_t = (σ_t/σ_s) x_s − (e^{−h} − 1) D,   D = D_s + (1/(2r)) (D_s − D_prev)   (first order: D = D_s).
    One network pass per step, second order from the second step: the few-step sampler of an EDM model."""
    defaults = dict(EDMSigmas.defaults, solver_order=2, thresholding=False, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
                    euler_at_final=False)

    def __init__(self, **options):
        self.config = self.read_options(options)
        self._check_edm()
        self._check_solver()
        self.num_inference_steps: int | None = None
        sigmas = self._schedule(torch.linspace(0, 1, self.config.num_train_timesteps))
        self.timesteps, self.sigmas = edm_noise_level(sigmas), torch.cat([sigmas, torch.zeros(1)])
        self._reset()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """n σ's of the schedule (a float32 ramp here, as diffusers'), then 0 or σ_min; timesteps c_noise(σ)."""
        self._check_steps(num_inference_steps)
        c = self.config
        short = c.lower_order_final and num_inference_steps < 15
        second_order_last = c.solver_order == 2 and not (c.euler_at_final or short)
        if c.final_sigmas_type == "sigma_min" and c.solver_type == "heun" and second_order_last:
            raise ValueError("with final_sigmas_type 'sigma_min' the last step goes from σ_min to σ_min (h = 0), where "
                             "the 'heun' form divides 0 by 0 and returns NaN (diffusers' too): use solver_type "
                             "'midpoint', final_sigmas_type 'zero', or fewer than 15 steps")
        sigmas = self._schedule(torch.linspace(0, 1, num_inference_steps))
        last = c.sigma_min if c.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = torch.cat([sigmas, torch.tensor([last], dtype=torch.float32)])
        self.timesteps = edm_noise_level(sigmas).to(device)
        self.num_inference_steps = num_inference_steps
        self._rows = self._coefficients()
        self._reset()

    @staticmethod
    def _alpha_sigma(sigma: Tensor) -> tuple[Tensor, Tensor]:
        """EDM's path scales nothing: (α_t, σ_t) = (1, σ)."""
        return torch.ones_like(sigma), sigma

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """c_in x at the σ of the coming step (found from `timestep` before the first step, as diffusers does)."""
        self._start_at(timestep)
        return sample * edm_scalings(self.sigmas[self._step_index], self.config.sigma_data)[2]

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """x̂_0 = D(x; σ), thresholded if asked."""
        return self._limit_x0(self.precondition_outputs(sample, model_output, self.sigmas[self._step_index]))
