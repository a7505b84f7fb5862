"""core/services/classifier.py: attacks within their budget, and the robustness curve from the cards."""
import math

import numpy as np

from conftest import ROOT
from core.attacks import EPSILONS, MAX_EPS
from core.services.classifier import AttackService

SNEAKER = ROOT / "apps" / "examples" / "7-sneaker.png"


def test_fgsm_perturbation_is_bounded_and_zero_at_eps_zero():
    attacks = AttackService.load("classifier")
    original, perturbation, adversarial, before, after = attacks.attack(str(SNEAKER), "pgd", 0.0)
    assert np.array_equal(np.asarray(original), np.asarray(adversarial)) and before == after
    assert np.all(np.asarray(perturbation.convert("L")).astype(int) - 127 <= 1)  # all grey: no change
    original, _, adversarial, _, _ = attacks.attack(str(SNEAKER), "pgd", 0.03)
    change = np.abs(np.asarray(adversarial, dtype=int) - np.asarray(original, dtype=int)).max()
    assert 0 < change <= math.ceil(0.03 * 255) + 1


def test_the_robustness_chart_comes_from_the_model_cards():
    rows = AttackService.chart()["rows"]
    curves = {m: [r for r in rows if r["model"] == m] for m in ("classifier", "classifier-adv")}
    assert all([r["eps"] for r in c] == list(EPSILONS) for c in curves.values())   # the slider's whole range:
    assert MAX_EPS == 0.5 and AttackService.endpoints[0].inputs[3].high == MAX_EPS    # it once stopped at 0.3
    at = lambda m, eps: next(r["accuracy"] for r in curves[m] if r["eps"] == eps)
    assert at("classifier", 0.1) < 0.2 < 0.6 < at("classifier-adv", 0.1)     # the point of adversarial training
