"""Flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling") on the straight path of rectified
flow (Liu et al. 2023, "Flow Straight and Fast"): prediction type "flow_prediction" of the diffusion family, the
shared model being core/models/diffusion.py.

Path:      x_σ = (1 − σ) x_0 + σ ε,   σ ∈ [0, 1],   ε ~ N(0, I)              (Liu et al. Eq. 1; Lipman et al. Eq. 22)
Target:    its velocity dx_σ/dσ = ε − x_0, regressed with
           L = ‖(ε − x_0) − v_θ(x_σ, σ T)‖²                                    (Lipman et al. Eq. 23, the CFM loss)
Time:      σ ~ U[0, 1] (Liu et al.), or logit-normal: σ = sigmoid(u), u ~ N(0, 1) (Esser et al. 2024, Sec. 3.1,
           Eq. 19 with m = 0, s = 1: more training in the middle, where the velocity is hardest to guess).
x̂_0:       x_σ − σ v̂, where the straight line through x_σ with velocity v̂ started.
Sampling:  dx/dσ = v_θ from σ = 1 to 0 with the Euler (default) or Heun scheduler (core/schedulers/flow_match.py),
           whose σ's may be shifted, σ ↦ s σ / (1 + (s − 1) σ) (Esser et al. Eq. 23; `shift`, 1: none).
Departures: σ runs from data (0) to noise (1), diffusers' convention; Lipman et al.'s time is t = 1 − σ (noise at
t = 0), so their target x_1 − (1 − σ_min) x_0 is ours with the sign flipped and σ_min = 0, as in rectified flow.
The network sees t = σ T (T = num_train_timesteps, 1000), the span its sinusoidal embedding was made for, not σ.
The shift moves the samplers' σ's only: training draws σ unshifted.
"""
import torch
from torch import Tensor

from core.models.diffusion import Objective
from core.schedulers import FLOW_SCHEDULERS, FlowMatchEulerDiscreteScheduler
from core.schedulers.flow_match import flow_x0

FLOW = "flow_prediction"                         # the prediction type of flow matching (diffusers' name)
TIME_SAMPLINGS = ("uniform", "logit_normal")     # how training draws σ


class FlowMatchingObjective(Objective):
    """Velocity prediction on the straight path from x_0 to ε."""
    kind = "flow-matching"
    samplers = FLOW_SCHEDULERS
    training_scheduler = FlowMatchEulerDiscreteScheduler

    def scheduler_config(self) -> dict:
        return dict(num_train_timesteps=self.config.num_train_timesteps, shift=self.config.shift)

    def training_inputs(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        """σ by `time_sampling`, x_σ on the straight path (Eq. 22), target ε − x_0 (Eq. 23), t = σ T."""
        logit_normal = self.config.time_sampling == "logit_normal"
        sigma = torch.sigmoid(torch.randn(len(x0))) if logit_normal else torch.rand(len(x0))
        sigma = sigma.to(x0.device)
        t = sigma * self.config.num_train_timesteps
        return self.noise_scheduler.scale_noise(x0, t, eps), t, eps - x0, None

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x̂_0 = x_σ − σ v̂ with σ = t / T."""
        return flow_x0(output, x_t, float(t) / self.config.num_train_timesteps)
