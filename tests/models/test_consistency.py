"""core/models/consistency.py: the consistency student's targets against a teacher whose ODE is solved in closed form
(Gaussian data), the loss handed to the shared step in the network's output, and the teacher it carries."""
import dataclasses

import pytest
import torch
from torch import nn

from core.models import consistency
from core.models.ddpm import DDPM, DDPMConfig
from core.schedulers.base import expand

pytestmark = pytest.mark.usefixtures("one_thread")
SCALE = 0.6                      # the data: x_0 ~ N(0, SCALE² I)
STUDENT = dict(image_size=8, widths="8,16", prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2",
               eval_sampler="lcm", eval_steps=4)


class GaussianTeacher(nn.Module):
    """The exact v of Gaussian data: x̂_0 = E[x_0 | x_t] = α s² x_t / (α² s² + σ²), v̂ = (α x_t − x̂_0)/σ."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod)
        self.unused = nn.Parameter(torch.zeros(1))

    def alpha_sigma(self, x, t):
        abar = expand(self.abar[torch.as_tensor(t).long().expand(len(x))], x)
        return abar.sqrt(), (1 - abar).sqrt()

    def forward(self, x, t, labels=None):
        alpha, sigma = self.alpha_sigma(x, t)
        x0 = alpha * SCALE ** 2 * x / (alpha ** 2 * SCALE ** 2 + sigma ** 2)
        return (alpha * x - x0) / sigma


def ode_end(x, alpha, sigma):
    """The probability-flow ODE of Gaussian data keeps x_t / √(α² s² + σ²) constant: its end is x_t s / √(…)."""
    return x * SCALE / (alpha ** 2 * SCALE ** 2 + sigma ** 2).sqrt()


def student(target: str) -> DDPM:
    model = DDPM(DDPMConfig(**STUDENT, consistency=target, teacher_widths="8,16"))
    teacher = GaussianTeacher(model.noise_scheduler.alphas_cumprod)
    model.objective.teach(model.unet, teacher)
    return model


def test_trajectory_states_lie_on_the_closed_form_ode_and_end_where_it_ends():
    """Every kept state x_{t_n} of a teacher trajectory (DPM-Solver++ on the grid) maps to the trajectory's end by
    the closed-form ODE solution: the pool's states and timesteps are paired right, and its ends are the ODE's."""
    model = student("trajectory")
    objective = model.objective
    torch.manual_seed(0)
    x_t, t, y = objective.trajectory_target(256)
    assert t.min() == 19 and t.max() == 999 and set(t.tolist()) <= set(objective.grid.tolist())
    alpha, sigma = objective.alpha_sigma(t, x_t)
    torch.testing.assert_close(y, ode_end(x_t, alpha, sigma), rtol=0, atol=1e-2)      # the solver's error: 5e-3
    for shift in (-20, 20):                                        # one grid point off: 3e-2 and 4e-2, clearly wrong
        shifted = objective.alpha_sigma((t + shift).clamp(0, 999), x_t)
        assert (y - ode_end(x_t, *shifted)).abs().max() > 2e-2


def test_cd_target_of_the_exact_consistency_function_is_itself():
    """A student equal to the exact consistency function gets, one teacher DDIM step later, its own value back as
    the target (up to that step's discretisation error), at every grid point."""
    model = student("cd")
    objective = model.objective

    class Exact(nn.Module):                     # the output o whose f(x_t, t) is the closed-form ODE end
        def forward(self, x, t, labels=None):
            t = torch.as_tensor(t).long().expand(len(x))
            alpha, sigma = objective.alpha_sigma(t, x)
            a = objective.consistency(torch.zeros_like(x), x, t)
            b = objective.consistency(torch.ones_like(x), x, t) - a
            return torch.where(b == 0, 0.0, (ode_end(x, alpha, sigma) - a) / b)      # t = 0: f = x_t
    objective.student = Exact()
    torch.manual_seed(1)
    x0 = SCALE * torch.randn(200, 1, 8, 8)
    x_t, t, y = objective.cd_target(x0, torch.randn_like(x0))
    alpha, sigma = objective.alpha_sigma(t, x_t)
    torch.testing.assert_close(y, ode_end(x_t, alpha, sigma), rtol=0, atol=5e-3)


@pytest.mark.parametrize("target", consistency.TARGETS)
def test_the_output_target_and_weights_give_the_consistency_loss(target):
    """weights · mean‖o − target‖² = mean‖f(o) − y‖² for any output o: the shared step's loss is the paper's."""
    model = student(target)
    objective = model.objective
    torch.manual_seed(2)
    x0 = SCALE * torch.randn(16, 1, 8, 8)
    if target == "trajectory":
        objective.grow_pool()                    # drawn from below, not grown
    eps = torch.randn_like(x0)
    torch.manual_seed(3)
    x_t, t, output_target, weights = objective.training_inputs(x0, eps)
    torch.manual_seed(3)                         # the same draw again, for y itself
    _, _, y = objective.cd_target(x0, eps) if target == "cd" else objective.trajectory_target(16)
    o = torch.randn_like(x_t)
    shared = weights * ((o - output_target) ** 2).mean(dim=(1, 2, 3))
    paper = ((objective.consistency(o, x_t, t) - y) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(shared, paper, rtol=1e-4, atol=1e-7)


def test_student_carries_the_teacher_in_training_and_exports_without_it(tmp_path):
    teacher = DDPM(DDPMConfig(**{**STUDENT, "eval_sampler": "", "eval_steps": 20}))
    model = DDPM(DDPMConfig(**STUDENT, consistency="cd", teacher_widths="8,16", ema_decay=0.9))
    model.init_from(teacher)
    for net in (model.unet, model.teacher, model.ema.average):
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), teacher.unet.state_dict().values()))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    exported = model.exported()
    assert exported.teacher is None and exported.config.teacher_widths == "" and exported.config.consistency == "cd"
    exported.save_pretrained(tmp_path)
    loaded = DDPM.from_pretrained(tmp_path)
    assert loaded.samplers.keys() == {"lcm"} and loaded.default_sampler == "lcm"
    assert '"_class_name": "LCMScheduler"' in (tmp_path / "scheduler_config.json").read_text()
    images = loaded.sample(2, seed=0)
    assert images.shape == (2, 1, 8, 8) and images.isfinite().all()


def test_a_student_without_its_teacher_refuses_to_train():
    model = DDPM(DDPMConfig(**STUDENT, consistency="cd"))
    with pytest.raises(ValueError, match="trains from a teacher: --init-from"):
        model.objective.training_inputs(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("options,message", [
    (dict(consistency="ode"), "consistency must be empty or one of"),
    (dict(consistency="cd", prediction_type="edm", eval_sampler=""), "takes a diffusion teacher"),
    (dict(consistency="cd", num_train_timesteps=50), "needs num_train_timesteps ≥ 100"),
    (dict(teacher_widths="8,16", eval_sampler=""), "teacher_widths is for a consistency student"),
    (dict(consistency="cd", eval_sampler="ddim"), "eval_sampler must be one of \\['lcm'\\]")])
def test_configs_that_do_not_fit_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DDPM(DDPMConfig(**{**STUDENT, **options}))


def test_a_plain_model_keeps_its_objective():
    plain = DDPM(DDPMConfig(**{**STUDENT, "eval_sampler": ""}))
    assert plain.teacher is None and "lcm" not in plain.samplers
    assert dataclasses.replace(plain.config).consistency == ""
