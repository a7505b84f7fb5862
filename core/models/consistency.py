"""Consistency distillation: a diffusion model (the teacher, ε, x_0 or v prediction) made into a few-step student of
the same U-Net, sampled by multistep consistency sampling (core/schedulers/lcm.py). One objective of the diffusion
family (core/models/diffusion.py); the student starts from the teacher's weights (`--init-from`), which it carries,
frozen, while it trains (`teacher_widths`) and drops when it is exported.

The student is a consistency function (Song et al. 2023, "Consistency Models", Sec. 3): f_θ(x_t, t) is the end
x_0 of the teacher's probability-flow ODE trajectory through x_t, for every t of the skipping grid
t_1 < … < t_N (t_n = n T/N − 1, N = 50; Luo et al. 2023, Sec. 4.3), parameterised so that f(x, 0) = x:
    f_θ(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0(F_θ(x_t, t), x_t, t)          (LCMScheduler.consistency)
Two targets y for f_θ(x_{t_n}, t_n), trained by L = ‖f_θ(x_{t_n}, t_n) − y‖² (images averaged over pixels):
  "cd", consistency distillation (Song et al., Algorithm 2): x_{t_n} = √ᾱ x_0 + √(1 − ᾱ) ε from a data image, one
        teacher DDIM step to the grid's previous point, x̂_{t_{n−1}} = √ᾱ_{t_{n−1}} x̂_0 + √(1 − ᾱ_{t_{n−1}}) ε̂
        (the teacher's x̂_0 and ε̂ at x_{t_n}; t_0 = 0), and y = f_{θ⁻}(x̂_{t_{n−1}}, t_{n−1}): the student's own
        output one grid point closer to the data, without gradient.
  "trajectory", regression on the teacher's ODE end point (Luhman & Luhman 2021, "Knowledge distillation in
        iterative generative models", at every grid point rather than at t = T only): the teacher integrates
        x' = ODE(x) from pure noise over the whole grid with DPM-Solver++ (2M, N steps, "trailing": it visits exactly
        the grid), every state x_{t_n} is kept, and y = the trajectory's end. The teacher runs in chunks of
        `TRAJECTORY_CHUNK` trajectories into a pool of `POOL_CHUNKS` chunks (the oldest dropped), one new chunk every
        `REFRESH` steps: about one teacher evaluation per training image, as "cd" spends. It reads no data.
Departures, flagged: θ⁻ = θ (the stop-gradient of the current weights; Song & Dhariwal 2023, "Improved techniques",
Sec. 3.2, found this better than an EMA target for consistency training) and the squared L2 distance in pixels
with λ(t) = 1 (not LPIPS, which needs a pretrained ImageNet network, nor the pseudo-Huber loss); the pool is not
part of a run's checkpoint, so a resumed run draws new trajectories.
The loss is handed to the shared training step in the network's own output o: f is affine in o at fixed (x_t, t),
f = a + b·o with b = c_out ∂x̂_0/∂o (−c_out σ for v), so ‖f − y‖² = b² ‖o − (y − a)/b‖² (per-image weight b²).
"""
import torch
from torch import Tensor

from core.models.diffusion import Objective, denoising_loop, variance_preserving_schedule
from core.schedulers import CONSISTENCY_SCHEDULERS, DPMSolverMultistepScheduler, LCMScheduler
from core.schedulers.base import expand, predicted_eps, predicted_x0

TARGETS = ("cd", "trajectory")
TRAJECTORY_CHUNK = 64       # teacher trajectories integrated at once
POOL_CHUNKS = 16            # chunks kept (16 × 64 trajectories × 50 states)
REFRESH = 50                # training steps between two new chunks: 64 × 50 states / batch 64 ≈ one use each


class ConsistencyObjective(Objective):
    """A consistency student of a diffusion teacher, trained toward the "cd" or the "trajectory" target."""
    kind = "consistency"
    samplers = CONSISTENCY_SCHEDULERS
    training_scheduler = LCMScheduler

    def __init__(self, config):
        super().__init__(config)
        self.student = self.teacher = None      # the U-Nets (`teach`); set only while a teacher is carried
        self.states = self.ends = None          # the pool: (N, trajectories, C, H, W), t_N first, and the ends
        self.steps = 0
        self.grid = torch.from_numpy(self.noise_scheduler.skipping_grid())            # t_1 < … < t_N

    def teach(self, student, teacher) -> None:
        self.student, self.teacher = student, teacher

    def scheduler_config(self) -> dict:
        return variance_preserving_schedule(self.config)

    # ------------------------------------------------------------------------------------- the function f
    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        abar = expand(self.noise_scheduler.alphas_cumprod.to(like.device)[t], like)
        return abar.sqrt(), (1 - abar).sqrt()

    def consistency(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """f(x_t, t) = c_skip x_t + c_out x̂_0, one t per image (t = 0 gives x_t)."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        c_skip, c_out = (expand(c, x_t) for c in self.noise_scheduler.boundary_scalings(t.float()))
        return c_skip * x_t + c_out * predicted_x0(self.config.prediction_type, output, x_t, alpha, sigma)

    def predicted_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The student's x̂_0 is f itself."""
        return self.noise_scheduler.consistency(output, t, x_t)

    # ------------------------------------------------------------------------------------------- training
    def training_inputs(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_{t_n}, t_n, the output target (y − a)/b, weights b²) for the configured target y."""
        if self.teacher is None:
            raise ValueError("a consistency student trains from a teacher: --init-from TEACHER_FOLDER with "
                             "--teacher-widths set to the teacher's widths")
        self.steps += 1
        x_t, t, y = self.cd_target(x0, eps) if self.config.consistency == "cd" else self.trajectory_target(len(x0))
        a = self.consistency(torch.zeros_like(x_t), x_t, t)
        b = self.consistency(torch.ones_like(x_t), x_t, t) - a
        return x_t, t, (y - a) / b, b.flatten(1)[:, 0] ** 2

    def net(self, network, x: Tensor, t: Tensor) -> Tensor:
        return network(x, t).float()

    @torch.no_grad()
    def cd_target(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_{t_n} from the data, the teacher's DDIM step to t_{n−1}, and f_{θ⁻} there."""
        n = torch.randint(0, len(self.grid), (len(x0),))
        t, s = self.grid[n].to(x0.device), torch.where(n > 0, self.grid[(n - 1).clamp(min=0)], 0).to(x0.device)
        x_t = self.noise_scheduler.add_noise(x0, eps, t)
        alpha, sigma = self.alpha_sigma(t, x_t)
        output = self.net(self.teacher, x_t, t)
        x0_hat = predicted_x0(self.config.prediction_type, output, x_t, alpha, sigma)
        eps_hat = predicted_eps(self.config.prediction_type, output, x_t, alpha, sigma, x0_hat)
        alpha_s, sigma_s = self.alpha_sigma(s, x_t)
        x_s = alpha_s * x0_hat + sigma_s * eps_hat
        return x_t, t, self.consistency(self.net(self.student, x_s, s), x_s, s)

    @torch.no_grad()
    def trajectory_target(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Random (trajectory, grid point) pairs of the pool, grown by one chunk every REFRESH steps."""
        if self.states is None or self.steps % REFRESH == 0:
            self.grow_pool()
        which = torch.randint(0, self.states.shape[1], (batch,))
        n = torch.randint(0, len(self.grid), (batch,))                     # index into the grid, ascending
        return self.states[len(self.grid) - 1 - n, which], self.grid[n], self.ends[which]

    def grow_pool(self) -> None:
        """One chunk of new trajectories into the pool, the oldest beyond POOL_CHUNKS chunks dropped."""
        states, ends = self.trajectories()
        keep = POOL_CHUNKS * TRAJECTORY_CHUNK
        self.states = states if self.states is None else torch.cat([self.states, states], dim=1)[:, -keep:]
        self.ends = ends if self.ends is None else torch.cat([self.ends, ends])[-keep:]

    def trajectories(self) -> tuple[Tensor, Tensor]:
        """TRAJECTORY_CHUNK teacher ODE solutions from pure noise: the state at every grid point and the end."""
        device = next(self.teacher.parameters()).device
        solver = DPMSolverMultistepScheduler.from_config(self.scheduler_config(), timestep_spacing="trailing")
        noise = torch.randn(TRAJECTORY_CHUNK, self.config.channels, self.config.image_size, self.config.image_size,
                            device=device)
        states = [noise]
        for _, x, _ in denoising_loop(lambda x, t: self.net(self.teacher, x, t.expand(len(x))), solver, noise,
                                      len(self.grid), self.teacher_x0):
            states.append(x)
        return torch.stack(states[:-1]), states[-1]

    def teacher_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The teacher's x̂_0 (its own objective's, for the loop's previews, which the pool does not keep)."""
        return predicted_x0(self.config.prediction_type, output, x_t, *self.alpha_sigma(t.expand(len(x_t)), x_t))
