import math

import pytest
import torch

from core.models import perceptron as P


@pytest.mark.parametrize("gate, epoch", [("AND", 6), ("OR", 4)])
def test_perceptron_rule_converges_on_and_and_or_in_the_stated_epochs(gate, epoch):
    history = P.perceptron_rule(P.GATES[gate])
    assert history.converged_at == epoch and history.errors[-1] == 0 and all(history.errors[:-1])
    w, b = history.weights[-1], history.biases[-1]
    assert torch.equal(P.step(P.INPUTS @ w + b), P.GATES[gate])
    assert P.repeats_a_state(history) is None


def test_perceptron_rule_cycles_forever_on_xor():
    history = P.perceptron_rule(P.GATES["XOR"], epochs=50)
    assert history.converged_at is None and min(history.errors) > 0 and len(history.errors) == 50
    first, again = P.repeats_a_state(history)
    assert again > first and any(history.errors[first:again])
    period = again - first                                    # a deterministic rule: the cycle goes on
    assert torch.equal(history.weights[first + 10 * period], history.weights[first])


def test_one_rule_update_is_w_plus_eta_error_x():
    """After the first example of AND (x = (0,0), y = 0, ŷ = step(0) = 1): w stays, b = −η."""
    history = P.perceptron_rule(P.GATES["AND"], epochs=1, lr=0.5)
    manual_w, manual_b = torch.zeros(2), torch.zeros(())
    for x, y in zip(P.INPUTS, P.GATES["AND"]):
        error = y - (1.0 if float(manual_w @ x + manual_b) >= 0 else 0.0)
        manual_w, manual_b = manual_w + 0.5 * error * x, manual_b + 0.5 * error
    assert torch.equal(history.weights[1], manual_w) and torch.equal(history.biases[1], manual_b)


def test_gradient_descent_solves_and_or_but_not_xor():
    for gate in ("AND", "OR"):
        assert P.gradient_descent(P.GATES[gate]).errors[-1] == 0
    xor = P.gradient_descent(P.GATES["XOR"], epochs=300)
    assert min(xor.errors) >= 1                               # no line: at least one example is always wrong
    w, b = xor.weights[-1], xor.biases[-1]
    assert torch.allclose(torch.sigmoid(P.INPUTS @ w + b), torch.full((4,), 0.5), atol=0.05)


def test_gradient_descent_step_is_the_bce_gradient():
    targets = P.GATES["OR"]
    history = P.gradient_descent(targets, epochs=2, lr=0.7)
    w, b = history.weights[1].clone().requires_grad_(), history.biases[1].clone().requires_grad_()
    loss = torch.nn.functional.binary_cross_entropy(torch.sigmoid(P.INPUTS @ w + b), targets)
    loss.backward()
    torch.testing.assert_close(history.weights[2], (w - 0.7 * w.grad).detach())
    torch.testing.assert_close(history.biases[2], (b - 0.7 * b.grad).detach())


def test_two_hidden_units_solve_xor_from_several_seeds():
    solved = [seed for seed in range(10) if P.train_xor_mlp(P.GATES["XOR"], "tanh", seed=seed)[2][-1] == 0]
    assert set(solved) >= {0, 2, 3, 4}                       # the seeds the docstring names
    network, states, mistakes = P.train_xor_mlp(P.GATES["XOR"], "tanh", seed=0)
    assert len(states) == P.MAX_EPOCHS + 1 and mistakes[-1] == 0
    hidden = P.step(network[0](P.INPUTS))                     # which side of each hidden line the 4 points lie
    assert len({tuple(row.tolist()) for row in hidden}) >= 3  # the two lines cut the square into 3 or 4 regions


@pytest.mark.parametrize("name", sorted(P.ACTIVATIONS))
def test_activation_derivatives_match_autograd(name):
    a = torch.linspace(-4, 4, 81, dtype=torch.float64)
    a = a[a != 0].requires_grad_()                            # ReLU and leaky ReLU have no derivative at 0
    activation = P.ACTIVATIONS[name]
    activation.function(a).sum().backward()
    torch.testing.assert_close(activation.derivative(a.detach()), a.grad)
    assert "'" in activation.formula


def test_more_hidden_units_approximate_better():
    for target in ("sin", "step"):
        errors = [P.approximate(target, n)[3] for n in P.HIDDEN_UNITS]
        falls = all(later <= max(1.05 * earlier, 1e-3) for earlier, later in zip(errors, errors[1:]))
        assert falls and errors[-1] < 0.25 * errors[0], (target, errors)          # down to the optimiser's floor
    x, y, fit, error = P.approximate("sin", 8, steps=600)
    assert x[0] == -math.pi and x[-1] == math.pi and torch.equal(y, torch.sin(x))
    assert error == pytest.approx(float(((fit - y) ** 2).mean()), rel=1e-5)
