"""Adversarial losses, shared by every GAN (core/models/gan.py) and CycleGAN.

D(x) below is the discriminator's raw score (a logit for BCE, a critic value for WGAN), x real, x̃ = G(z) fake.

Non-saturating BCE (Goodfellow et al. 2014, Sec. 3 and its non-saturating generator):
    L_D = −E[log σ(D(x))] − E[log(1 − σ(D(x̃)))],    L_G = −E[log σ(D(x̃))]
    computed from logits with −log σ(s) = softplus(−s) and −log(1 − σ(s)) = softplus(s), which never overflow.
WGAN-GP (Gulrajani et al. 2017, Algorithm 1):
    L_D = E[D(x̃)] − E[D(x)] + λ E[(‖∇_x̂ D(x̂)‖₂ − 1)²],  x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1];   L_G = −E[D(x̃)]
R3GAN (Huang et al. 2024, Eq. 2 and Sec. 2.3), relativistic pairing with f = softplus plus zero-centred penalties:
    L_D = E[softplus(D(x̃) − D(x))] + γ/2 E[‖∇_x D(x)‖²] + γ/2 E[‖∇_x̃ D(x̃)‖²]     (R1 on real, R2 on fake)
    L_G = E[softplus(D(x) − D(x̃))]
Hinge (Lim & Ye 2017; Miyato et al. 2018):
    L_D = E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))],   L_G = −E[D(x̃)]
Least squares (Mao et al. 2017, the a = 0, b = c = 1 form CycleGAN uses):
    L_D = ½E[(D(x) − 1)²] + ½E[D(x̃)²],   L_G = ½E[(D(x̃) − 1)²]

WGAN-GP and R3GAN penalise the gradient of D with respect to each input separately; batch norm mixes the samples
of a batch, so each output would depend on the others and the per-sample penalty would no longer be the one the
papers analyse (Gulrajani et al., Sec. 4). Their discriminators must therefore not use batch norm.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("bce", "wgan-gp", "r3gan", "hinge", "lsgan")
NO_BATCH_NORM = ("wgan-gp", "r3gan")
Critic = Callable[[Tensor], Tensor]      # images -> scores (B,); conditioning is closed over by the caller


def input_gradient_norm(critic: Critic, x: Tensor) -> Tensor:
    """‖∇_x D(x)‖₂ per sample, kept in the graph (create_graph) so the penalty itself can be minimised."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad.flatten(1).norm(dim=1)


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP's two-sided penalty E[(‖∇D(x̂)‖ − 1)²] on random points between real and fake samples."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)
    return (input_gradient_norm(critic, eps * real + (1 - eps) * fake.detach()) - 1).square().mean()


def zero_centered_penalty(critic: Critic, x: Tensor) -> Tensor:
    """E[‖∇_x D(x)‖²]: R1 when x is real, R2 when x is fake (Mescheder et al. 2018; Huang et al. 2024)."""
    return input_gradient_norm(critic, x).square().mean()


def discriminator_loss(loss: str, critic: Critic, real: Tensor, fake: Tensor, gp_weight: float = 10.0,
                       r_gamma: float = 0.1) -> Tensor:
    """L_D for one batch; `fake` is detached here, so only the discriminator learns from this loss."""
    fake = fake.detach()
    d_real, d_fake = critic(real), critic(fake)
    if loss == "bce":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if loss == "wgan-gp":
        return d_fake.mean() - d_real.mean() + gp_weight * gradient_penalty(critic, real, fake)
    if loss == "r3gan":
        penalties = zero_centered_penalty(critic, real) + zero_centered_penalty(critic, fake)
        return F.softplus(d_fake - d_real).mean() + r_gamma / 2 * penalties
    if loss == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    if loss == "lsgan":
        return 0.5 * (d_real - 1).square().mean() + 0.5 * d_fake.square().mean()
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def generator_loss(loss: str, critic: Critic, real: Tensor, fake: Tensor) -> Tensor:
    """L_G for one batch; gradients flow through the discriminator into `fake` (its weights are not stepped)."""
    d_fake = critic(fake)
    if loss == "bce":
        return F.softplus(-d_fake).mean()
    if loss in ("wgan-gp", "hinge"):
        return -d_fake.mean()
    if loss == "r3gan":
        with torch.no_grad():
            d_real = critic(real)
        return F.softplus(d_real - d_fake).mean()
    if loss == "lsgan":
        return 0.5 * (d_fake - 1).square().mean()
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
