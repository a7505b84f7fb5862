"""The foundations: Rosenblatt's perceptron (1958), the same unit trained by gradient descent, a two-layer MLP that
solves XOR (Rumelhart, Hinton & Williams 1986), activation functions, and universal approximation with one hidden
layer (Cybenko 1989; Hornik 1991). Everything here is small enough to train in milliseconds, for the sampler's
Foundations tab and for a first lecture.

Perceptron:          ŷ = step(w·x + b),  step(a) = 1 if a ≥ 0 else 0.
Perceptron rule:     for each example in turn,  w ← w + η (y − ŷ) x,  b ← b + η (y − ŷ)  (nothing moves when ŷ = y).
                     On linearly separable data it stops after finitely many updates (Novikoff 1962). XOR is not
                     linearly separable: no line puts (0,1) and (1,0) on one side and (0,0) and (1,1) on the other,
                     so some example is always wrong and the weights cycle forever.
Gradient descent:    the same unit with the step replaced by the sigmoid, ŷ = σ(w·x + b), minimising the mean binary
                     cross-entropy L = −mean[y log ŷ + (1 − y) log(1 − ŷ)], whose gradient is ∂L/∂w = mean[(ŷ − y) x]:
                     the perceptron rule with the error made continuous. On XOR it settles near ŷ = 1/2 everywhere.
Two-layer MLP:       h = φ(W₁ x + b₁) with 2 hidden units, ŷ = σ(w₂·h + b₂). Each hidden unit draws one line
                     (W₁[k]·x + b₁[k] = 0); the output combines the two half-planes, e.g. OR and not AND = XOR.
Universal approx.:   f(x) ≈ Σ_k a_k φ(w_k x + b_k) + c; the error of the best such sum falls as the number of
                     hidden units n grows (for any continuous target on an interval).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

INPUTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
GATES = {"AND": torch.tensor([0.0, 0.0, 0.0, 1.0]),
         "OR": torch.tensor([0.0, 1.0, 1.0, 1.0]),
         "XOR": torch.tensor([0.0, 1.0, 1.0, 0.0])}
LEARNERS = ("perceptron rule", "gradient descent", "two-layer MLP")
HIDDEN_UNITS = (1, 2, 4, 8, 32)                  # the universal-approximation sweep
MAX_EPOCHS = 300                                 # what the Foundations tab trains and shows
LEAKY_SLOPE = 0.1                                # leaky ReLU's slope for a < 0 (0.01 is common; 0.1 is visible)


# ----------------------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Activation:
    formula: str                 # φ(a) and φ'(a), as the lecture writes them
    function: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]       # by hand, not autograd (tests compare the two)


ACTIVATIONS = {
    "sigmoid": Activation("σ(a) = 1 / (1 + e^−a),   σ'(a) = σ(a) (1 − σ(a))",
                          torch.sigmoid, lambda a: torch.sigmoid(a) * (1 - torch.sigmoid(a))),
    "tanh": Activation("tanh(a) = (e^a − e^−a) / (e^a + e^−a),   tanh'(a) = 1 − tanh²(a)",
                       torch.tanh, lambda a: 1 - torch.tanh(a) ** 2),
    "relu": Activation("ReLU(a) = max(0, a),   ReLU'(a) = 1 if a > 0 else 0",
                       torch.relu, lambda a: (a > 0).to(a.dtype)),
    "leaky_relu": Activation(f"LReLU(a) = a if a > 0 else {LEAKY_SLOPE} a,   LReLU'(a) = 1 if a > 0 else {LEAKY_SLOPE}",
                             lambda a: torch.where(a > 0, a, LEAKY_SLOPE * a),
                             lambda a: torch.where(a > 0, torch.ones_like(a), torch.full_like(a, LEAKY_SLOPE))),
}


class Elementwise(nn.Module):
    """An activation of ACTIVATIONS as a layer."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, a: Tensor) -> Tensor:
        return ACTIVATIONS[self.name].function(a)


# ----------------------------------------------------------------------------------------------- single units
@dataclass
class History:
    """One unit's parameters after every epoch (index 0: before training) and the mistakes of each epoch."""
    weights: list[Tensor]        # each (2,)
    biases: list[Tensor]         # each a scalar
    errors: list[int]
    converged_at: int | None     # the first epoch after which every example is right (None: never)


def step(a: Tensor) -> Tensor:
    return (a >= 0).to(a.dtype)


def perceptron_rule(targets: Tensor, epochs: int = MAX_EPOCHS, lr: float = 1.0) -> History:
    """Rosenblatt's rule from w = 0, b = 0, the four examples in truth-table order each epoch. Training stops at the
    first epoch without a mistake. With η = 1 that is epoch 6 for AND and epoch 4 for OR; on XOR the weights after
    epoch 3 equal those after epoch 2, so the rule cycles forever (see `repeats_a_state`)."""
    w, b = torch.zeros(2), torch.zeros(())
    history = History([w.clone()], [b.clone()], [], None)
    for epoch in range(1, epochs + 1):
        mistakes = 0
        for x, y in zip(INPUTS, targets):
            error = y - step(w @ x + b)
            w, b = w + lr * error * x, b + lr * error
            mistakes += int(error != 0)
        history.weights.append(w.clone())
        history.biases.append(b.clone())
        history.errors.append(mistakes)
        if mistakes == 0:
            history.converged_at = epoch
            break
    return history


def repeats_a_state(history: History) -> tuple[int, int] | None:
    """(i, j), i < j, where the parameters after epoch j equal those after epoch i with mistakes in between: a
    deterministic rule in a repeated state repeats forever, so it cycles without converging."""
    seen = {}
    for epoch, (w, b) in enumerate(zip(history.weights, history.biases)):
        key = (*w.tolist(), float(b))
        if key in seen and any(history.errors[seen[key]:epoch]):
            return seen[key], epoch
        seen.setdefault(key, epoch)
    return None


def gradient_descent(targets: Tensor, epochs: int = MAX_EPOCHS, lr: float = 2.0) -> History:
    """The same unit with ŷ = σ(w·x + b) and the mean binary cross-entropy, full-batch gradient descent from w = 0:
    w ← w − η mean[(ŷ − y) x], b ← b − η mean[ŷ − y]. Mistakes count ŷ ≥ 1/2 against y."""
    w, b = torch.zeros(2), torch.zeros(())
    history = History([w.clone()], [b.clone()], [], None)
    for epoch in range(1, epochs + 1):
        error = torch.sigmoid(INPUTS @ w + b) - targets                  # ŷ − y, the gradient of BCE w.r.t. the logit
        w, b = w - lr * (error[:, None] * INPUTS).mean(0), b - lr * error.mean()
        mistakes = int((step(INPUTS @ w + b) != targets).sum())
        history.weights.append(w.clone())
        history.biases.append(b.clone())
        history.errors.append(mistakes)
        if mistakes == 0 and history.converged_at is None:
            history.converged_at = epoch
    return history


# ----------------------------------------------------------------------------------------------- two-layer MLP
def mlp(activation: str, hidden: int, inputs: int = 2, seed: int = 0) -> nn.Sequential:
    """x -> φ(W₁ x + b₁) -> w₂·h + b₂ (a logit), with PyTorch's default initialisation from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), Elementwise(activation), nn.Linear(hidden, 1))


def train_xor_mlp(targets: Tensor, activation: str = "tanh", epochs: int = MAX_EPOCHS, lr: float = 0.1,
                  seed: int = 0) -> tuple[nn.Sequential, list[dict[str, Tensor]], list[int]]:
    """The 2-2-1 MLP on the truth table by full-batch Adam on the binary cross-entropy; returns the network, its
    parameters after every epoch (index 0: the initialisation) and the mistakes after each epoch.

    A solution exists for every gate, but gradient descent does not always find it: with tanh, seeds 0, 2, 3 and 4
    of 0-9 solve XOR within 300 epochs, the others stall with one or two points wrong (one hidden line ends up
    useless, often both units draw nearly the same line). Training longer does not rescue them; another seed does."""
    network = mlp(activation, 2, seed=seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    states, mistakes = [{k: v.clone() for k, v in network.state_dict().items()}], []
    for _ in range(epochs):
        logits = network(INPUTS).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        states.append({k: v.detach().clone() for k, v in network.state_dict().items()})
        with torch.no_grad():
            mistakes.append(int((step(network(INPUTS).squeeze(1)) != targets).sum()))
    return network, states, mistakes


# ------------------------------------------------------------------------------------ universal approximation
TARGETS = {"sin": torch.sin, "step": lambda x: (x >= 0).to(x.dtype)}


def approximate(target: str, hidden: int, activation: str = "tanh", steps: int = 1500, points: int = 200,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor, float]:
    """Fit f on [−π, π] with one hidden layer of `hidden` units by full-batch Adam on the mean squared error.
    Returns (x, f(x), the fit, its mean squared error)."""
    x = torch.linspace(-math.pi, math.pi, points)[:, None]
    y = TARGETS[target](x)
    network = mlp(activation, hidden, inputs=1, seed=seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.02)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = nn.functional.mse_loss(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        fit = network(x)
    return x.squeeze(1), y.squeeze(1), fit.squeeze(1), float(nn.functional.mse_loss(fit, y))
