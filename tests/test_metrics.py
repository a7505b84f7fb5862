import math

import pytest
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from core import metrics


def correlated(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / math.sqrt(d)
    return torch.randn(n, d, generator=g) @ mixing + shift


class Identity(nn.Module):
    """torchmetrics' FID with a custom feature network: here the features are given directly."""
    num_features = 16

    def forward(self, x):
        return x.double()


def test_fid_matches_torchmetrics():
    real, fake = correlated(2000, 16, 0), correlated(2000, 16, 1, shift=0.3) * 1.2
    reference = FrechetInceptionDistance(feature=Identity(), normalize=True)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert metrics.fid(real, fake) == pytest.approx(float(reference.compute()), rel=1e-5)
    assert metrics.fid(real, real) == pytest.approx(0.0, abs=1e-8)


def test_kid_matches_torchmetrics_on_full_subsets():
    real, fake = correlated(300, 16, 0), correlated(300, 16, 1, shift=0.5)
    reference = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=300, normalize=True)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    ours, _ = metrics.kid(real, fake, subsets=1, subset_size=300)    # one subset of everything: no sampling left
    assert ours == pytest.approx(float(reference.compute()[0]), rel=1e-5)
    assert abs(metrics.kid(real, correlated(300, 16, 2))[0]) < ours / 10


def test_precision_recall_on_hand_made_sets():
    real = torch.randn(500, 2)
    assert metrics.precision_recall(real, real + 1e-4) == pytest.approx((1.0, 1.0))
    far = real + 100
    assert metrics.precision_recall(real, far) == (0.0, 0.0)
    collapsed = real[0] + 1e-3 * torch.randn(500, 2)     # mode collapse: realistic samples of one mode only
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05


def test_class_coverage_and_conditional_accuracy():
    uniform = torch.arange(1000) % 10
    assert metrics.class_coverage(uniform, 10) == {"classes_covered": 10, "kl_to_uniform": pytest.approx(0.0, abs=1e-12)}
    collapsed = torch.tensor([3] * 980 + [4] * 20)
    scores = metrics.class_coverage(collapsed, 10)
    assert scores["classes_covered"] == 1 and scores["kl_to_uniform"] > 2
    assert metrics.class_coverage(torch.tensor([0] * 500 + [1] * 500), 10)["kl_to_uniform"] == pytest.approx(math.log(5))
    logits = torch.eye(10)[torch.tensor([1, 2, 3, 3])]
    assert metrics.conditional_accuracy(logits, torch.tensor([1, 2, 3, 4])) == 0.75
