"""The Foundations tab: the perceptron rule, gradient descent and a two-layer MLP on the truth tables, activations
and their derivatives, and universal approximation by one hidden layer (core/models/perceptron.py). Each answer
trains in milliseconds outside the loop; no checkpoint is loaded."""
from __future__ import annotations

import functools

import torch
from PIL import Image

from core.images import PALETTE, Canvas
from core.models import perceptron as foundations
from core.requests import MAX_SEED, one_of, whole_number
from core.services.base import Choice, Endpoint, Number, Output, Service, seed_input

MAX_HIDDEN = 64                # hidden units of the universal-approximation fit
ANIMATION_FRAMES = 30          # pictures in a Foundations training animation
ACTIVATIONS = tuple((name, name) for name in foundations.ACTIVATIONS)
SQUARE = (-0.5, 1.5)           # the plot range around the truth table's four points


@functools.lru_cache(maxsize=64)
def _foundations_run(gate: str, learner: str, activation: str, seed: int) -> tuple[list, list[int]]:
    """[(classify, hidden lines) after each epoch], mistakes per epoch: one training run, milliseconds."""
    targets = foundations.GATES[gate]
    if learner == "two-layer MLP":
        network, states, mistakes = foundations.train_xor_mlp(targets, activation, seed=seed)
        phi = foundations.ACTIVATIONS[activation].function

        def frame(state):
            logit = lambda x: phi(x @ state["0.weight"].T + state["0.bias"]) @ state["2.weight"][0] + state["2.bias"]
            return lambda x: foundations.step(logit(x)), list(zip(state["0.weight"], state["0.bias"]))
        return [frame(state) for state in states], mistakes
    train = foundations.perceptron_rule if learner == "perceptron rule" else foundations.gradient_descent
    history = train(targets)
    frames = [(lambda x, w=w, b=b: foundations.step(x @ w + b), [(w, b)])
              for w, b in zip(history.weights, history.biases)]
    return frames, history.errors


def _boundary_picture(gate: str, classify, lines, title: str) -> Image.Image:
    canvas = Canvas(SQUARE, SQUARE).regions(classify)
    for w, b in lines:
        canvas.line(w, b, PALETTE[2] if len(lines) > 1 else (0, 0, 0))
    return canvas.points(foundations.INPUTS, foundations.GATES[gate]).axes((0, 1)).title(title).image


def training(gate, learner, activation, seed, epoch) -> tuple[Image.Image, list[Image.Image], str]:
    """(the decision regions after `epoch`, the regions along the whole run for an animation, a Markdown note).
    Blue and orange regions: where the model answers 0 and 1; green lines: the MLP's hidden units."""
    gate = one_of(gate, "gate", tuple(foundations.GATES))
    learner = one_of(learner, "learner", foundations.LEARNERS)
    activation = one_of(activation, "activation", tuple(foundations.ACTIVATIONS))
    seed = whole_number(seed, "seed", 0, MAX_SEED)
    epoch = whole_number(epoch, "epoch", 0, foundations.MAX_EPOCHS)
    frames, mistakes = _foundations_run(gate, learner, activation, seed if learner == "two-layer MLP" else 0)
    shown_epoch = min(epoch, len(frames) - 1)                # the perceptron rule stops once it is right
    wrong = mistakes[shown_epoch - 1] if shown_epoch else "-"
    picture = _boundary_picture(gate, *frames[shown_epoch], f"{gate}, {learner}: epoch {shown_epoch}, wrong {wrong}")
    every = max(1, len(frames) // ANIMATION_FRAMES)
    animation = [_boundary_picture(gate, *frames[k], f"{gate}, {learner}: epoch {k}")
                 for k in range(0, len(frames), every)]
    solved = next((k + 1 for k, m in enumerate(mistakes) if m == 0), None)
    note = (f"All four points right from epoch {solved}." if solved else
            f"Never all four right in {len(mistakes)} epochs (fewest wrong: {min(mistakes)}).")
    if learner == "perceptron rule" and gate == "XOR":
        note += " The rule cycles: no line separates XOR's classes."
    return picture, animation, note


def activation_picture(name) -> tuple[Image.Image, str]:
    """φ (blue) and φ' (orange) on [−4, 4], and the formulas."""
    name = one_of(name, "activation", tuple(foundations.ACTIVATIONS))
    activation = foundations.ACTIVATIONS[name]
    a = torch.linspace(-4, 4, 401)
    canvas = Canvas((-4, 4), (-1.5, 4)).axes((-4, -1, 0, 1, 4))
    canvas.curve(a, activation.function(a), PALETTE[0]).curve(a, activation.derivative(a), PALETTE[1])
    return canvas.title(f"{name}: the function (blue) and its derivative (orange)").image, activation.formula


_approximation = functools.lru_cache(maxsize=128)(foundations.approximate)


def approximation_picture(target, hidden, activation) -> tuple[Image.Image, str]:
    """The target on [−π, π] (black) and the fit of one hidden layer of `hidden` units (blue)."""
    target = one_of(target, "target", tuple(foundations.TARGETS))
    hidden = whole_number(hidden, "hidden units", 1, MAX_HIDDEN)
    activation = one_of(activation, "activation", tuple(foundations.ACTIVATIONS))
    x, y, fit, error = _approximation(target, hidden, activation)
    canvas = Canvas((-3.2, 3.2), (-1.5, 1.5)).axes((-3, 0, 3)).curve(x, y).curve(x, fit, PALETTE[0])
    return canvas.title(f"{target} with {hidden} {activation} units").image, f"mean squared error {error:.2e}"


class FoundationsService(Service):
    tab = "Foundations"
    about = r"""**Perceptron** (Rosenblatt 1958): $\hat y = \mathrm{step}(w\cdot x + b)$, learning rule
$w \leftarrow w + \eta (y - \hat y) x$. It converges on AND and OR, and cycles forever on XOR: no line separates
XOR's classes. **Gradient descent** trains the same unit with $\hat y = \sigma(w\cdot x + b)$ on the binary
cross-entropy, whose gradient $(\hat y - y)x$ is the rule made continuous. A **two-layer MLP** with two hidden units
draws two lines and combines them, which solves XOR (from most seeds; others stall). **Universal approximation**
(Cybenko 1989): one hidden layer of enough units fits any continuous function on an interval."""
    endpoints = (
        Endpoint("foundations_train", "train",
                 (Choice("gate", "truth table", "XOR", tuple((g, g) for g in foundations.GATES)),
                  Choice("learner", "learner", "two-layer MLP", tuple((l, l) for l in foundations.LEARNERS)),
                  Choice("activation", "hidden activation (MLP)", "tanh", ACTIVATIONS, widget="unit"),
                  seed_input(label="seed (MLP initialisation)"),
                  Number("epoch", "epoch shown (drag to watch the boundary move)", foundations.MAX_EPOCHS, 0,
                         foundations.MAX_EPOCHS)),
                 (Output("decision regions at that epoch (blue: 0, orange: 1; green: hidden units' lines)"),
                  Output("the whole run", "loop"), Output("", "text")), "Train", release="epoch"),
        Endpoint("foundations_activation", "activation",
                 (Choice("name", "activation", "sigmoid", ACTIVATIONS),),
                 (Output("the function (blue) and its derivative (orange)"), Output("", "text")), "Plot"),
        Endpoint("foundations_approximate", "approximate",
                 (Choice("target", "target on [-π, π]", "sin", tuple((t, t) for t in foundations.TARGETS)),
                  Number("hidden", "hidden units n", 4, 1, MAX_HIDDEN),
                  Choice("activation", "activation", "tanh", ACTIVATIONS, widget="fit_unit")),
                 (Output("one hidden layer of n units (blue) against the target (black)"), Output("", "text")), "Fit"),
    )
    train = staticmethod(training)
    approximate = staticmethod(approximation_picture)

    @staticmethod
    def activation(name) -> tuple[Image.Image, str]:
        picture, formula = activation_picture(name)
        return picture, f"`{formula}`"
