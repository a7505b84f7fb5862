import pytest
import torch
import torch.nn.functional as F

from core.attacks import fgsm, pgd, robustness_curve


@pytest.fixture
def trained(digits_classifier):
    return digits_classifier


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_perturbation_stays_in_the_ball_and_the_pixel_range(trained, digits_test, attack, eps):
    batch = digits_test.batch(slice(0, 64))
    x_adv = fgsm(trained, batch.images, batch.labels, eps) if attack == "fgsm" else pgd(trained, batch.images, batch.labels, eps, steps=5)
    assert (x_adv - batch.images).abs().max() <= 2 * eps + 1e-6        # ε is a fraction of the range [-1, 1]
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    clean = F.cross_entropy(trained(batch.images), batch.labels)
    assert F.cross_entropy(trained(x_adv), batch.labels) > clean       # the attack raises the loss


def test_fgsm_is_one_signed_step(trained, digits_test):
    batch = digits_test.batch(slice(0, 16))
    x = batch.images.requires_grad_(True)
    F.cross_entropy(trained(x), batch.labels, reduction="sum").backward()
    expected = (batch.images + 0.2 * x.grad.sign()).clamp(-1, 1)
    torch.testing.assert_close(fgsm(trained, batch.images.detach(), batch.labels, 0.1), expected.detach())


def test_targeted_attack_moves_toward_the_target(trained, digits_test):
    batch = digits_test.batch(slice(0, 128))
    target = (batch.labels + 1) % 10
    x_adv = pgd(trained, batch.images, target, 0.2, steps=10, targeted=True)
    before = F.cross_entropy(trained(batch.images), target)
    assert F.cross_entropy(trained(x_adv), target) < before
    assert (trained(x_adv).argmax(1) == target).float().mean() > (trained(batch.images).argmax(1) == target).float().mean()


def test_pgd_is_at_least_as_strong_as_fgsm_and_curve_is_monotone(trained, digits_test):
    curve_fgsm = robustness_curve(trained, digits_test, [0.0, 0.05, 0.1, 0.2])
    curve_pgd = robustness_curve(trained, digits_test, [0.0, 0.05, 0.1, 0.2], attack="pgd")
    assert curve_fgsm[0.0] == curve_pgd[0.0] > 0.8
    assert curve_fgsm[0.2] < curve_fgsm[0.05] < curve_fgsm[0.0]
    assert all(curve_pgd[e] <= curve_fgsm[e] + 0.01 for e in (0.05, 0.1, 0.2))


def test_bad_budgets_are_refused(trained, digits_test):
    batch = digits_test.batch(slice(0, 4))
    with pytest.raises(ValueError, match=r"eps .* \[0, 1\]"):
        fgsm(trained, batch.images, batch.labels, 1.5)
    with pytest.raises(ValueError, match="steps"):
        pgd(trained, batch.images, batch.labels, 0.1, steps=0)
    with pytest.raises(ValueError, match="attack must be"):
        robustness_curve(trained, digits_test, [0.1], attack="deepfool")
