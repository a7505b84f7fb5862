"""What every noise scheduler shares: the β schedules, the forward process q(x_t | x_0), x̂_0 clipping and
thresholding, and the diffusers-compatible configuration (`from_config`, `from_pretrained`, `save_pretrained`).

The forward process (Ho et al. 2020, Eq. 4), with α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s:
    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),   so   x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε,  ε ~ N(0, I).
The network may predict ε, x_0 ("sample") or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, Sec. 4); each of
them, with x_t, gives the other two.

Every scheduler follows the diffusers API (`set_timesteps`, `timesteps`, `step(...).prev_sample`, `add_noise`,
`scale_model_input`, `init_noise_sigma`, `order`) with diffusers' option names, and reads and writes the same
`scheduler_config.json`, so genlab's and diffusers' classes of one name load each other's files. The arithmetic
keeps diffusers' float32 order of operations, so the two agree to float32 rounding (tests/test_schedulers.py).
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CONFIG_NAME = "scheduler_config.json"
DIFFUSERS_VERSION = "0.42.1"          # the diffusers release the parity tests run against
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
# diffusers options genlab does not implement, accepted only at their neutral value, so a diffusers file loads
NEUTRAL = {"trained_betas": None, "use_karras_sigmas": False,
           "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
           "flow_shift": 1.0, "lambda_min_clipped": -math.inf, "variance_type": None, "use_dynamic_shifting": False,
           "time_shift_type": "exponential", "invert_sigmas": False, "shift_terminal": None, "stochastic_sampling": False,
           "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
           "solver_p": None}


@dataclass
class SchedulerOutput:
    """`prev_sample` is x_{t−1}; `pred_original_sample` the x̂_0 it was computed from (None where diffusers has none)."""
    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class SchedulerConfig(dict):
    """The options as a read-only dict that also reads as attributes, like diffusers' FrozenDict."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        raise TypeError("a scheduler's config is read-only; build a new one with from_config(config, **changes)")


def betas_for(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> Tensor:
    """β_1..β_T in float32. linear: Ho et al. 2020, Sec. 4 (1e-4 to 0.02 over 1000 steps); scaled_linear: linear in
    √β (latent diffusion); squaredcos_cap_v2: Nichol & Dhariwal 2021, Eq. 17, ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2),
    s = 0.008, β_t = min(1 − ᾱ(t)/ᾱ(t − 1), 0.999)."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                            dtype=torch.float32)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1: the usual
    schedules end at SNR(T) = ᾱ_T/(1 − ᾱ_T) > 0 (√ᾱ_T ≈ 0.07 for the linear one), so training never shows the network
    the pure noise that sampling starts from. Shift √ᾱ_t so that √ᾱ_T = 0 and scale it so that √ᾱ_1 is kept, then
    read β back from the new ᾱ. With SNR(T) = 0, ε-prediction is undefined at t = T (x̂_0 = (x_T − σ ε̂)/0): use v."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    return 1 - torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])


def spaced_timesteps(num_train_timesteps: int, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """The n timesteps a sampler visits, descending (Lin et al. 2024, Table 2, names the three spacings)."""
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (num_train_timesteps // n)).round()[::-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / n)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")


def threshold_sample(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): s = the `ratio` quantile of |x̂_0| per image, clamped to
    [1, max_value]; x̂_0 ← clip(x̂_0, −s, s) / s."""
    dtype, shape = x0.dtype, x0.shape
    flat = x0.float().reshape(shape[0], -1) if dtype not in (torch.float32, torch.float64) else x0.reshape(shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


def in_place(op: str, fresh: Tensor, other: Tensor | float) -> Tensor:
    """`fresh` op `other` ("add", "sub", "mul", "div") written into `fresh`, a tensor the step made itself, unless
    the result would take another dtype: the same values as the plain expression, one allocation fewer."""
    if fresh.dtype == other.dtype or fresh.dtype == torch.result_type(fresh, other):
        return getattr(fresh, op + "_")(other)
    return getattr(torch, op)(fresh, other)


def predicted_x0(prediction_type: str, model_output: Tensor, sample: Tensor, alpha, sigma) -> Tensor:
    """x̂_0 from the network's output, solving x_t = α x_0 + σ ε (α = √ᾱ_t, σ = √(1 − ᾱ_t)) for x_0:
    ε-prediction x̂_0 = (x_t − σ ε̂)/α (Ho et al. Eq. 15); x_0-prediction as is; v-prediction x̂_0 = α x_t − σ v̂
    (Salimans & Ho 2022, Sec. 4). Written in diffusers' order of operations, scalar first (a bf16 output is
    multiplied differently by a tensor's scalar on the right), so results agree bit for bit; the arithmetic runs in
    place on tensors of its own where the dtype allows (x_t + (−σ ε̂) rounds as x_t − σ ε̂)."""
    if prediction_type == "epsilon":
        return in_place("div", in_place("add", -sigma * model_output, sample), alpha)
    if prediction_type == "sample":
        return model_output
    return in_place("sub", alpha * sample, sigma * model_output)


def predicted_eps(prediction_type: str, model_output: Tensor, sample: Tensor, alpha, sigma, x0: Tensor) -> Tensor:
    """ε̂ from the same output (x0 = predicted_x0 of it): ε-prediction as is; x_0-prediction ε̂ = (x_t − α x̂_0)/σ;
    v-prediction ε̂ = α v̂ + σ x_t."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - alpha * x0) / sigma
    return alpha * model_output + sigma * sample


def step_noise(sample: Tensor, generator: torch.Generator | None) -> Tensor:
    """ε ~ N(0, I) shaped like `sample`, drawn on the generator's device (as diffusers' randn_tensor draws)."""
    device = generator.device if generator is not None else sample.device
    return torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype).to(sample.device)


def expand(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast over an image batch."""
    return values.flatten().reshape(-1, *([1] * (like.ndim - 1)))


class Scheduler:
    """Shared configuration handling and the forward process. Subclasses set `defaults` and implement `step`.

    What a sampling loop (core.models.diffusion.denoising_loop) reads of every scheduler, defined here so that it
    need not probe: `init_noise_sigma` (x_T = σ_init · noise), `scale_model_input` (the network's input),
    `takes_eta` (whether `step` takes DDIM's η), `state_in_first_order` (False while a second-order step waits for
    its correction) and `order` (network passes per step)."""
    defaults: dict = {}
    order = 1
    init_noise_sigma = 1.0
    takes_eta = False
    state_in_first_order = True
    config_name = CONFIG_NAME

    def __init__(self, **options):
        self.config = self.read_options(options)
        c = self.config
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {c.prediction_type!r}")
        if c.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {c.timestep_spacing!r}")
        self.betas = betas_for(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule)
        if c.rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, c.num_train_timesteps)[::-1].copy())

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def read_options(self, options: dict) -> SchedulerConfig:
        """The defaults updated by `options`; an option genlab does not implement fails unless it is neutral."""
        unknown = {k: v for k, v in options.items() if k not in self.defaults and not k.startswith("_")}
        for key, value in unknown.items():
            if key not in NEUTRAL or value != NEUTRAL[key]:
                raise ValueError(f"{type(self).__name__}: option {key}={value!r} is not implemented in genlab "
                                 f"(supported: {', '.join(self.defaults)})")
        return SchedulerConfig({**self.defaults, **{k: v for k, v in options.items() if k in self.defaults}})

    # ------------------------------------------------------------------------------- diffusers-compatible config
    @classmethod
    def from_config(cls, config: dict | object, **changes) -> Scheduler:
        """Build from a config dict (ours or diffusers' `scheduler.config`) or from any object with a `.config`.

        As in diffusers, options of another scheduler class are dropped, so a DDPM config can seed a DPM-Solver
        (`DPMSolverMultistepScheduler.from_config(ddpm.config)` keeps the β schedule and prediction type)."""
        config = {**dict(getattr(config, "config", config)), **changes}
        siblings = {k for sub in Scheduler.__subclasses__() for k in sub.defaults} - set(cls.defaults)
        return cls(**{k: v for k, v in config.items() if not k.startswith("_") and k not in siblings})

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None, **changes) -> Scheduler:
        path = Path(folder) / (subfolder or "") / CONFIG_NAME
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read a scheduler config at {path}: {exc}") from exc
        return cls.from_config(config, **changes)

    def save_pretrained(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION, **self.config}
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    # ----------------------------------------------------------------------------------------- forward process
    def _sqrt_alphas(self, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        alphas_cumprod = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        abar = alphas_cumprod[torch.as_tensor(timesteps, device=like.device)]
        return expand(abar ** 0.5, like), expand((1 - abar) ** 0.5, like)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Eq. 4: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, one t per image."""
        sqrt_abar, sqrt_one_minus = self._sqrt_alphas(timesteps, original_samples)
        return sqrt_abar * original_samples + sqrt_one_minus * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The v-prediction target v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)."""
        sqrt_abar, sqrt_one_minus = self._sqrt_alphas(timesteps, sample)
        return sqrt_abar * noise - sqrt_one_minus * sample

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """Identity: these schedulers feed x_t to the network unscaled (Karras-style schedulers do not)."""
        return sample

    def _limit_x0(self, x0: Tensor, fresh: bool = False) -> Tensor:
        """Dynamic thresholding if enabled, else clipping to ±clip_sample_range if enabled (in place when `fresh`:
        x0 is a tensor of the step's own, not the model output)."""
        c = self.config
        if c.get("thresholding"):
            return threshold_sample(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.get("clip_sample"):
            r = c.clip_sample_range
            return x0.clamp_(-r, r) if fresh else x0.clamp(-r, r)
        return x0

    def _advance(self) -> tuple[Tensor, Tensor]:
        """(σ, σ') of the next call of a σ-indexed scheduler's `step` (flow matching, EDM): `sigmas` holds the σ's
        in the order the calls visit them, ending at the last step's target; `step_index` counts the calls."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        if self.step_index >= len(self.sigmas) - 1:
            raise ValueError(f"all {self.num_inference_steps} steps are done: call set_timesteps again")
        self.step_index += 1
        return self.sigmas[self.step_index - 1], self.sigmas[self.step_index]

    def _check_steps(self, n: int) -> None:
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be an integer from 1 to {self.config.num_train_timesteps} "
                             f"(num_train_timesteps), got {n!r}")


class ScheduleIndex:
    """Where a multistep scheduler (DPM-Solver++, UniPC) is in its schedule, kept as diffusers keeps it:
    `step_index`, the position of the next step (None until the first step finds it from its timestep), and
    `begin_index`, a start part-way through the schedule (image-to-image) that the first step takes instead."""
    _step_index: int | None = None
    _begin_index: int | None = None

    def _reset_index(self) -> None:
        self._step_index = self._begin_index = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start part-way through the schedule (image-to-image)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: int | Tensor) -> int:
        """Where `timestep` lies in the schedule (the second match if it appears twice, as diffusers picks)."""
        candidates = (self.timesteps == timestep).nonzero()
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return int(candidates[1 if len(candidates) > 1 else 0])

    def _start_at(self, timestep: int | Tensor) -> None:
        """Before the first step: the schedule position of `timestep`, or the begin index if one was set."""
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _noise_indices(self, timesteps: Tensor) -> list[int]:
        """The schedule positions `add_noise` reads: each timestep's, or (a begin index set) the current one."""
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in torch.as_tensor(timesteps).flatten().cpu()]
        return [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)


class HeunSteps:
    """Heun's second-order step (Karras et al. 2022, Algorithm 1) for a σ-indexed scheduler whose `sigmas` visit
    every σ after the first twice (`visited_twice`): the first call of a step makes the Euler guess x̃ = x + dt d at
    σ' (keeping d = (x − x̂_0)/σ, dt = σ' − σ and x); the second, with the network evaluated at x̃, lands at
    x + dt · ½ (d + d̃). A step to σ' = 0 stays Euler. diffusers' names: prev_derivative = d, sample (kept) = x."""
    order = 2
    derivative = dt = start = None

    @staticmethod
    def visited_twice(sigmas: Tensor) -> Tensor:
        """σ_0, σ_1, …, σ_{n−1}, σ_n → σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, σ_n."""
        return torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call starts a step (an Euler guess); False when it corrects one."""
        return self.dt is None

    def heun_step(self, sample: Tensor, denoise) -> tuple[Tensor, Tensor]:
        """(x after this call, x̂_0), where denoise(x, σ) is x̂_0 from the network's output at x."""
        if self.state_in_first_order:
            sigma, sigma_next = self._advance()
            denoised = denoise(sample, sigma)
            derivative, dt = (sample - denoised) / sigma, sigma_next - sigma
            if sigma_next > 0:
                self.derivative, self.dt, self.start = derivative, dt, sample
        else:
            sigma = self._advance()[0]                                # σ', visited a second time
            denoised = denoise(sample, sigma)
            derivative = 0.5 * (self.derivative + (sample - denoised) / sigma)
            dt, sample = self.dt, self.start
            self.derivative = self.dt = self.start = None
        return sample + derivative * dt, denoised


class ForeignScheduler:
    """A scheduler of another library with the diffusers API (diffusers' own classes), seen through what the
    sampling loop reads of a genlab `Scheduler`. diffusers leaves some of it out of some classes (no
    `init_noise_sigma` on its flow-matching schedulers, no `state_in_first_order` on first-order ones) and declares
    η and the noise generator by `step`'s signature (its deterministic UniPC takes no generator); here the missing
    parts take genlab's neutral values, once, so no loop has to probe."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        parameters = inspect.signature(scheduler.step).parameters
        self.takes_eta, self.takes_generator = "eta" in parameters, "generator" in parameters

    @property
    def init_noise_sigma(self) -> float:
        return getattr(self.scheduler, "init_noise_sigma", 1.0)

    @property
    def state_in_first_order(self) -> bool:
        return getattr(self.scheduler, "state_in_first_order", True)

    @property
    def timesteps(self) -> Tensor:
        return self.scheduler.timesteps

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.scheduler.set_timesteps(num_inference_steps)

    def scale_model_input(self, sample: Tensor, timestep) -> Tensor:
        scale = getattr(self.scheduler, "scale_model_input", None)
        return scale(sample, timestep) if scale is not None else sample

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, **options):
        noise = {"generator": generator} if self.takes_generator else {}
        return self.scheduler.step(model_output, timestep, sample, **noise, **options)


def as_scheduler(scheduler) -> Scheduler | ForeignScheduler:
    """A genlab scheduler as it is; any other with the diffusers API wrapped in `ForeignScheduler`."""
    return scheduler if isinstance(scheduler, (Scheduler, ForeignScheduler)) else ForeignScheduler(scheduler)
