"""UniPC, Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models":
a multistep solver of the diffusion ODE whose corrector (UniC) reuses the network evaluation the next step makes
anyway, so it raises the order of accuracy by one at no extra network pass: good samples in 5-10 steps.

With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) and the half log-SNR λ_t = log(α_t/σ_t), the ODE in data-prediction form has the
exact solution (DPM-Solver++, Lu et al. 2022)
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x_θ(x_λ, λ) dλ,
and UniPC expands x_θ around the last evaluation m_0 = x_θ(x_s, s) with the differences to earlier evaluations
m_k at λ_{s_k} (Sec. 3.1):
    r_k = (λ_{s_k} − λ_s)/h,   D_k = (m_k − m_0)/r_k,   h = λ_t − λ_s   (r_k < 0: the s_k lie behind s).
With ĥ = −h (data prediction) and φ_1(ĥ) = (e^ĥ − 1)/ĥ, φ_{k+1}(ĥ) = (φ_k(ĥ) − 1/k!)/ĥ:
  UniP-p, the predictor (Sec. 3.2), from p − 1 differences:
    x̃_t = (σ_t/σ_s) x_s − α_t ĥφ_1(ĥ) m_0 − α_t B(h) Σ_{k=1}^{p−1} a_k D_k
  UniC-p, the corrector (Sec. 3.1), after the network has seen x̃_t: the same step from x_s redone with one more
  difference, D_p = x_θ(x̃_t, t) − m_0 at r_p = 1,
    x_t^c = (σ_t/σ_s) x_s − α_t ĥφ_1(ĥ) m_0 − α_t B(h) Σ_{k=1}^{p} a_k D_k,
  whose order of accuracy is p + 1 (Theorem 3.1). The weights a solve the order conditions
    Σ_k a_k r_k^{n−1} = n! ĥφ_{n+1}(ĥ) / B(h),   n = 1, …, p   (R_p(h) a = g_p(h)/B(h); UniP uses the first p − 1),
  with B(h) = ĥ ("bh1") or B(h) = e^ĥ − 1 ("bh2"), any B(h) = O(h) being allowed (the authors advise bh1 for
  unconditional sampling at under 10 steps, bh2 otherwise). Sections and theorem as numbered in the arXiv version
  (2302.04867); its equation numbers were not at hand, so the formulas are written out here instead.
  Departure, as in the authors' code and diffusers: for one unknown (UniP-2, UniC-1) the weight is its h → 0 limit
  a = ½, not the 1 × 1 solve. `predict_x0=False` runs the noise-prediction form instead: ε̂ in place of x̂_0,
  α_t/α_s for σ_t/σ_s, σ_t for α_t, ĥ = h.

Departures from diffusers: with a final σ of 0 (λ = +∞), "bh1" makes B(h) = −∞ at the last step, whose UniP-1 update
has no B(h) term; ours lands on x̂_0 there, diffusers multiplies its absent correction (0) by −∞ and returns NaN. The
ε form and `lower_order_final=False` with a final σ of 0 are refused (diffusers returns inf/NaN or fails a solve).

The step at t_i: evaluate m at x_{t_i} (the predictor's output), correct x_{t_i} with UniC (not at the first step
nor after the steps listed in `disable_corrector`), then predict x_{t_{i+1}} with UniP from the corrected point. The
last step gets no correction (no evaluation follows it). Orders warm up (1, 2, … as evaluations accumulate) and,
with `lower_order_final`, fall back down at the end of the schedule (the last step is UniP-1 = DDIM, the one before
it at most order 2), as in diffusers. The arithmetic keeps diffusers' float32 order of operations, so the two agree
bit for bit (tests/test_schedulers.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.schedulers.base import (ScheduleIndex, Scheduler, SchedulerOutput, expand, predicted_eps, predicted_x0,
                                  spaced_timesteps)

SOLVER_TYPES = ("bh1", "bh2")


class UniPCMultistepScheduler(ScheduleIndex, Scheduler):
    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, predict_x0=True, solver_type="bh2", lower_order_final=True,
                    disable_corrector=[], final_sigmas_type="zero", timestep_spacing="linspace", steps_offset=0,
                    rescale_betas_zero_snr=False)

    def __init__(self, **options):
        if options.get("solver_type") in ("midpoint", "heun", "logrho"):   # a DPM-Solver config: diffusers reads bh2
            options = {**options, "solver_type": "bh2"}
        super().__init__(**options)
        c = self.config
        if c.solver_order not in (1, 2, 3) or c.solver_type not in SOLVER_TYPES:
            raise ValueError(f"genlab implements UniPC of solver_order 1, 2 or 3 with solver_type one of "
                             f"{SOLVER_TYPES}, got {c.solver_order!r} and {c.solver_type!r}")
        if c.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {c.final_sigmas_type!r}")
        if c.final_sigmas_type == "zero" and not (c.predict_x0 and (c.lower_order_final or c.solver_order == 1)):
            raise ValueError("a final σ of 0 puts λ = +∞ at the last step: UniPC needs predict_x0=True and "
                             "lower_order_final=True there (diffusers returns inf or NaN); use "
                             "final_sigmas_type='sigma_min'")
        if c.rescale_betas_zero_snr:          # ᾱ_T = 0 would make σ̃_T infinite: diffusers' smallest float16 instead
            self.alphas_cumprod[-1] = 2 ** -24
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.timesteps = torch.from_numpy(np.linspace(0, c.num_train_timesteps - 1, c.num_train_timesteps,
                                                      dtype=np.float32)[::-1].copy())
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.this_order = 1
        self.last_sample: Tensor | None = None
        self._reset_index()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """n timesteps spaced over [0, T) as DPM-Solver++'s (one more point than steps, the last dropped), σ̃ =
        √((1−ᾱ)/ᾱ) at each, and a final σ̃ = 0 ("zero": the last step lands on x̂_0) or σ̃ at t = 0."""
        self._check_steps(num_inference_steps)
        c, n, T = self.config, num_inference_steps, self.config.num_train_timesteps
        if c.timestep_spacing == "trailing":
            timesteps = spaced_timesteps(T, n, "trailing")
        else:                                          # n + 1 points, the last (t = 0) dropped
            timesteps = spaced_timesteps(T, n + 1, c.timestep_spacing, c.steps_offset)[:-1].copy()
        if len(np.unique(timesteps)) < n:      # a zero-length step: h = 0, and r_k divides by it
            raise ValueError(f"timestep_spacing={c.timestep_spacing!r} with {n} steps repeats timesteps, which makes "
                             "UniPC return NaN (diffusers' too); use fewer steps or 'trailing' spacing")
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()[timesteps]
        first = self.alphas_cumprod[0]
        last = 0.0 if c.final_sigmas_type == "zero" else float(((1 - first) / first) ** 0.5)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def _alpha_sigma_lambda(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """(α, σ, λ = log α − log σ) at schedule position `index`, from σ̃: α = 1/√(σ̃² + 1), σ = σ̃ α."""
        sigma_tilde = self.sigmas[index]
        alpha = 1 / ((sigma_tilde ** 2 + 1) ** 0.5)
        sigma = sigma_tilde * alpha
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def convert_model_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """What UniPC integrates, from an ε, x_0 or v prediction: x̂_0 (thresholded if enabled) with predict_x0,
        else ε̂."""
        alpha_t, sigma_t, _ = self._alpha_sigma_lambda(self._step_index)
        kind = self.config.prediction_type
        if self.config.predict_x0:
            return self._limit_x0(predicted_x0(kind, model_output, sample, alpha_t, sigma_t))
        return predicted_eps(kind, model_output, sample, alpha_t, sigma_t, model_output if kind == "sample" else None)

    def _weights(self, start: int, order: int) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor], Tensor]:
        """For the step from schedule position `start` to `start` + 1 with `order` − 1 earlier evaluations:
        (σ_t/σ_s, the factor α_t ĥφ_1(ĥ) of m_0, R_p and g_p/B(h) of the order conditions, the D_k, the factor
        α_t B(h) of the weighted differences); α_t/α_s and σ_t in place of σ_t/σ_s and α_t in the noise form."""
        c, x0_form = self.config, self.config.predict_x0
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(start + 1)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(start)
        h = lambda_t - lambda_s
        m0, rks, differences = self.model_outputs[-1], [], []
        for k in range(1, order):                                     # r_k, D_k of the earlier evaluations
            rk = (self._alpha_sigma_lambda(start - k)[2] - lambda_s) / h
            rks.append(rk)
            differences.append((self.model_outputs[-(k + 1)] - m0) / rk)
        rks = torch.stack(rks + [torch.ones(())])                    # r_p = 1: the corrector's new evaluation
        hh = -h if x0_form else h                                    # ĥ
        h_phi_1 = torch.expm1(hh)                                    # ĥ φ_1(ĥ) = e^ĥ − 1
        h_phi_k, factorial = h_phi_1 / hh - 1, 1                     # ĥ φ_2(ĥ)
        b_h = hh if c.solver_type == "bh1" else torch.expm1(hh)     # B(h)
        rows, rhs = [], []
        for n in range(1, order + 1):                                # row n: r_k^{n−1} = n! ĥ φ_{n+1}(ĥ)/B(h)
            rows.append(torch.pow(rks, n - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= n + 1
            h_phi_k = h_phi_k / hh - 1 / factorial                  # ĥ φ_{n+2}(ĥ)
        scale = alpha_t if x0_form else sigma_t
        ratio = sigma_t / sigma_s if x0_form else alpha_t / alpha_s
        return ratio, scale * h_phi_1, torch.stack(rows), torch.stack(rhs), differences, scale * b_h

    @staticmethod
    def _weighted(weights: Tensor, differences: list[Tensor]) -> Tensor:
        """Σ_k a_k D_k over the stacked differences, (B, K, ...) -> (B, ...)."""
        return torch.einsum("k,bkc...->bc...", weights, torch.stack(differences, dim=1))

    def _predict(self, sample: Tensor, order: int) -> Tensor:
        """UniP-p from x_s (position i) to x̃_t (i + 1)."""
        ratio, first, rows, rhs, differences, b_factor = self._weights(self._step_index, order)
        x_t = ratio * sample - first * self.model_outputs[-1]
        if differences:
            if order == 2:
                weights = torch.ones(1, dtype=sample.dtype) * 0.5
            else:
                weights = torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).to(sample.dtype)
            x_t = x_t - b_factor * self._weighted(weights, differences)
        return x_t.to(sample.dtype)

    def _correct(self, new_output: Tensor, order: int) -> Tensor:
        """UniC-p: the step from x_s (position i − 1, the sample before the last prediction) to t (i) redone with
        the new evaluation as D_p (r_p = 1)."""
        x = self.last_sample
        ratio, first, rows, rhs, differences, b_factor = self._weights(self._step_index - 1, order)
        weights = torch.ones(1, dtype=x.dtype) * 0.5 if order == 1 else torch.linalg.solve(rows, rhs).to(x.dtype)
        x_t = ratio * x - first * self.model_outputs[-1]
        earlier = self._weighted(weights[:-1], differences) if differences else 0
        x_t = x_t - b_factor * (earlier + weights[-1] * (new_output - self.model_outputs[-1]))
        return x_t.to(x.dtype)

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Correct x_{t_i} with UniC (the evaluation at it is `model_output`), then predict x_{t_{i+1}} with UniP.
        `generator` is accepted for the sampling loop's sake and unused: UniPC is deterministic."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        self._start_at(timestep)
        c, i = self.config, self._step_index
        converted = self.convert_model_output(model_output, sample)
        if i > 0 and i - 1 not in c.disable_corrector and self.last_sample is not None:
            sample = self._correct(converted, self.this_order)
        self.model_outputs = self.model_outputs[1:] + [converted]
        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)      # warm-up: as many evaluations as there are
        self.last_sample = sample
        prev_sample = self._predict(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = α_t x_0 + σ_t ε at the σ̃ of the schedule position of each t (after set_timesteps), as in diffusers."""
        if self.num_inference_steps is None:
            return super().add_noise(original_samples, noise, timesteps)
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        indices = self._noise_indices(timesteps)
        sigma = expand(sigmas[indices], original_samples)
        alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha_t * original_samples + sigma * alpha_t * noise
