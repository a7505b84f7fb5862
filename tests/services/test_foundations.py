"""core/services/foundations.py: the answers follow the training run."""
import pytest

from core import requests as R
from core.services.foundations import ANIMATION_FRAMES, FoundationsService, training


def test_foundations_answers_follow_the_training_run():
    picture, animation, note = training("AND", "perceptron rule", "tanh", 0, 300)
    assert note == "All four points right from epoch 6." and len(animation) == 7     # epochs 0..6, it stopped
    start, _, _ = training("AND", "perceptron rule", "tanh", 0, 0)
    assert picture.tobytes() != start.tobytes()
    _, animation, note = training("XOR", "perceptron rule", "tanh", 0, 300)
    assert "cycles" in note and len(animation) <= ANIMATION_FRAMES + 1
    with pytest.raises(R.RequestError, match="learner must be one of"):
        training("AND", {"path": "/etc/passwd"}, "tanh", 0, 1)


def test_the_activation_plot_names_its_formula():
    picture, formula = FoundationsService.activation("relu")
    assert picture.size == (360, 360) and formula.startswith("`") and "ReLU'(a)" in formula
