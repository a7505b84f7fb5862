"""Adversarial examples: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

With J(θ, x, y) the cross-entropy of the classifier and ε the budget in the L∞ norm:
    FGSM, untargeted (Eq. 6 of Goodfellow et al.):  x_adv = clip(x + ε · sign(∇_x J(θ, x, y)))
    FGSM, targeted toward class t:                  x_adv = clip(x − ε · sign(∇_x J(θ, x, t)))
    PGD (Madry et al., Eq. 2), k steps of size α:   x^{k+1} = Π_{B_ε(x)} clip(x^k ± α · sign(∇_x J(θ, x^k, ·)))
                                                    with x^0 drawn uniformly from B_ε(x) (random start)
FGSM with random start (Wong et al. 2020, "Fast is better than free") is PGD with one step, α = 1.25 ε.

Units: genlab images live in [-1, 1], but ε is given as a fraction of the pixel range, the convention of the papers
(pixels in [0, 1]; MNIST's ε = 0.3 means 30% of full brightness). An ε of 0.1 therefore moves a pixel by at most
0.2 in [-1, 1] units, i.e. 25.5 grey levels out of 255.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.data import ImageData

LOW, HIGH = -1.0, 1.0
ATTACKS = ("fgsm", "pgd")
EPSILONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)   # the budgets a card's robustness curve is measured at; the
MAX_EPS = EPSILONS[-1]                                   # app's ε goes as far as the curve


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇_x J(θ, x, y), summed over the batch (each image's gradient is its own; the sum only saves a loop)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, targeted: bool = False) -> Tensor:
    """One signed-gradient step of size ε (fraction of the pixel range). Targeted: `y` holds the target classes."""
    return pgd(model, x, y, eps, steps=1, alpha=eps, targeted=targeted, random_start=False)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, alpha: float | None = None,
        targeted: bool = False, random_start: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent in the L∞ ball of radius ε around x (α defaults to 2.5 ε / steps, as Madry et al.)."""
    if not 0 <= eps <= 1:
        raise ValueError(f"eps is a fraction of the pixel range and must lie in [0, 1], got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    radius = eps * (HIGH - LOW)
    step_size = (alpha if alpha is not None else 2.5 * eps / steps) * (HIGH - LOW)
    sign = -1.0 if targeted else 1.0                  # descend on the target's loss, ascend on the true label's
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device) if generator else torch.rand_like(x)
        x_adv = (x + (2 * noise - 1) * radius).clamp(LOW, HIGH)
    for _ in range(steps):
        x_adv = x_adv + sign * step_size * input_gradient(model, x_adv, y).sign()
        x_adv = torch.min(torch.max(x_adv, x - radius), x + radius).clamp(LOW, HIGH)   # Π onto B_ε(x) ∩ [-1, 1]
    return x_adv.detach()


def robustness_curve(model: nn.Module, data: ImageData, epsilons: list[float], attack: str = "fgsm",
                     batch_size: int = 500, pgd_steps: int = 10) -> dict[float, float]:
    """Test accuracy under an untargeted attack for each ε (ε = 0 is clean accuracy)."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = dict.fromkeys(epsilons, 0)
    generator = torch.Generator(device=device).manual_seed(0)
    for start in range(0, len(data), batch_size):
        batch = data.batch(slice(start, start + batch_size))
        x, y = batch.images.to(device), batch.labels.to(device)
        for eps in epsilons:
            if eps == 0:
                x_adv = x
            elif attack == "fgsm":
                x_adv = fgsm(model, x, y, eps)
            else:
                x_adv = pgd(model, x, y, eps, steps=pgd_steps, generator=generator)
            with torch.no_grad():
                correct[eps] += (model(x_adv).argmax(1) == y).sum().item()
    model.train(was_training)
    return {eps: correct[eps] / len(data) for eps in epsilons}
