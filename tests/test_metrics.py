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
    assert metrics.class_coverage(uniform, 10) == {"classes_covered": 10, "smallest_class_share": 0.1,
                                                   "kl_to_uniform": pytest.approx(0.0, abs=1e-12)}
    collapsed = torch.tensor([3] * 980 + [4] * 20)
    scores = metrics.class_coverage(collapsed, 10)
    assert scores["classes_covered"] == 1 and scores["kl_to_uniform"] > 2 and scores["smallest_class_share"] == 0
    assert metrics.class_coverage(torch.tensor([0] * 500 + [1] * 500), 10)["kl_to_uniform"] == pytest.approx(math.log(5))
    logits = torch.eye(10)[torch.tensor([1, 2, 3, 3])]
    assert metrics.conditional_accuracy(logits, torch.tensor([1, 2, 3, 4])) == 0.75


def test_realism_is_one_on_a_ball_edge_and_leave_one_out_drops_the_point_itself():
    support = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    radii = metrics.knn_radii(support, 1)                      # [1, 1, 2, 3]: the median keeps the first two
    assert radii.tolist() == [1.0, 1.0, 2.0, 3.0]
    scores = metrics.realism(torch.tensor([[0.0, 0.5], [0.0, 4.0], [100.0, 0.0]]), support, radii)
    assert scores[0] == pytest.approx(2.0) and scores[1] == pytest.approx(0.25) and scores[2] < 0.02
    own = metrics.realism(support, support, radii, exclude_self=True)
    assert own[0] == pytest.approx(1.0) and own[1] == pytest.approx(1.0)      # its neighbour's ball, not its own


def test_nearest_training_distance_matches_brute_force_in_pixel_units():
    g = torch.Generator().manual_seed(0)
    memory, images = torch.rand(300, 1, 6, 6, generator=g) * 2 - 1, torch.rand(40, 1, 6, 6, generator=g) * 2 - 1
    brute = ((images[:, None] - memory[None]) / 2).flatten(2).square().mean(2).min(1).values.sqrt()
    torch.testing.assert_close(metrics.nearest_distance(images, memory, chunk=7), brute, rtol=1e-4, atol=1e-5)
    assert float(metrics.nearest_distance(memory[:5], memory).max()) < 1e-3           # a copy is at distance 0


def test_fid_and_kid_on_the_stage_features_match_torchmetrics(digits_classifier, digits):
    """The yardstick's features of two real image sets, through our FID/KID and torchmetrics'."""
    images = digits.batch(slice(None)).images
    parts, _ = metrics.stage_features(digits_classifier, images)
    scales = torch.stack([p.norm(dim=1).mean() for p in parts])
    feats = metrics.joined(parts, scales)
    real, fake = feats[:600], feats[600:1200] * 1.1
    width = feats.shape[1]
    identity = type("Features", (nn.Module,), {"num_features": width, "forward": lambda self, x: x.double()})()
    fid = FrechetInceptionDistance(feature=identity, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert metrics.fid(real, fake) == pytest.approx(float(fid.compute()), rel=1e-5)
    kid = KernelInceptionDistance(feature=identity, subsets=1, subset_size=600, normalize=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert metrics.kid(real, fake, subsets=1, subset_size=600)[0] == pytest.approx(float(kid.compute()[0]), rel=1e-5)


def test_the_yardstick_sees_speckle_and_the_real_floor_passes(digits_classifier, digits, digits_test):
    """On the 8x8 digits: about 1% of real images fall off the manifold by construction, speckled ones far more,
    and their precision drops by more than the penultimate layer alone shows."""
    yardstick = metrics.Yardstick(digits_classifier)
    real = digits.batch(slice(None)).images[:360]
    g = torch.Generator().manual_seed(0)
    speckled = torch.where(torch.rand(real.shape, generator=g) < 0.1,
                           (torch.rand(real.shape, generator=g) < 0.5).float() * 2 - 1, real)
    floor, noisy = yardstick.score(real, data=digits_test), yardstick.score(speckled, data=digits_test)
    assert floor["off_manifold"] < 0.05 < 0.1 < noisy["off_manifold"]
    assert floor["precision"] - noisy["precision"] > 0.2 and noisy["fid"] > 1.5 * floor["fid"]
    assert "copies" not in floor                                # no training images given: no copy figures
