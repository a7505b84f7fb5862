import math

import pytest
import torch
import torch.nn.functional as F

from core.config import TrainConfig
from core.hub import load_model
from core.models.simclr import SimCLR, SimCLRConfig, augment, knn_accuracy, nt_xent, principal_plane

TINY = SimCLRConfig(image_size=8, width=8, projection_dim=8)


def nt_xent_by_the_formula(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Chen et al. Eq. 1 written as loops: ℓ(i, j) = −log exp(sim_ij/τ) / Σ_{k≠i} exp(sim_ik/τ), mean over 2N."""
    two_n = len(z)
    sim = lambda u, v: (u @ v) / (u.norm() * v.norm())
    total = 0.0
    for i in range(two_n):
        j = (i + two_n // 2) % two_n
        denominator = sum(torch.exp(sim(z[i], z[k]) / tau) for k in range(two_n) if k != i)
        total = total - torch.log(torch.exp(sim(z[i], z[j]) / tau) / denominator)
    return total / two_n


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_is_the_papers_formula_and_so_is_its_gradient(tau):
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    ours = nt_xent(z, tau)
    reference = nt_xent_by_the_formula(z, tau)
    torch.testing.assert_close(ours.double(), reference)
    (grad_ours,) = torch.autograd.grad(ours, z)
    (grad_reference,) = torch.autograd.grad(reference, z)
    torch.testing.assert_close(grad_ours.double(), grad_reference, rtol=1e-5, atol=1e-6)


def test_nt_xent_is_lowest_when_the_two_views_agree():
    h = torch.randn(8, 16)
    matched = nt_xent(torch.cat([h, h]), 0.5)
    shuffled = nt_xent(torch.cat([h, h[torch.randperm(8, generator=torch.Generator().manual_seed(0))]]), 0.5)
    assert matched < shuffled and matched > 0
    # the bound: with the positive at similarity 1 and 2N − 2 negatives at similarity −1/(2N−1) at best
    assert matched >= -math.log(math.exp(2.0) / (math.exp(2.0) + 14 * math.exp(-2.0 / 15))) - 1e-4


def test_augment_gives_a_different_view_of_each_image_in_range(digits):
    x = digits.batch(slice(0, 64)).images
    a, b = augment(x, TINY, torch.Generator().manual_seed(0)), augment(x, TINY, torch.Generator().manual_seed(1))
    again = augment(x, TINY, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, again) and not torch.equal(a, b)
    assert bool(((a - b).abs().flatten(1).mean(1) > 0.01).all())                 # every image changed
    crisp = SimCLRConfig(image_size=8, min_crop=1.0, jitter=0.0, noise=0.0, erase=0.0)
    same = augment(x, crisp, torch.Generator().manual_seed(0))                  # a mild crop and the flips are left
    to_kept, to_flipped = ((same - y).abs().flatten(1).mean(1) for y in (x, x.flip(-1)))
    flipped = to_flipped < to_kept
    nearer, farther = torch.minimum(to_kept, to_flipped), torch.maximum(to_kept, to_flipped)
    assert nearer.mean() < 0.3 * farther.mean() and 10 < int(flipped.sum()) < 54


def test_knn_accuracy_matches_a_direct_vote():
    features = torch.randn(50, 4)
    labels = torch.randint(0, 3, (50,))
    right = 0
    for i in range(50):
        similarity = F.cosine_similarity(features[i][None], features, dim=1)
        similarity[i] = -2
        votes = torch.bincount(labels[similarity.topk(5).indices], minlength=3)
        right += int(votes.argmax() == labels[i])
    assert knn_accuracy(features, labels, k=5, chunk=7) == right / 50


def test_training_lowers_the_contrastive_loss_and_the_folder_round_trips(digits, tmp_path):
    torch.manual_seed(0)
    model = SimCLR(TINY)
    model.configure_optimizers(TrainConfig(lr=3e-3))
    losses = []
    for step in range(60):
        losses.append(float(model.training_step(next(digits.batches(128, seed=step, epoch=0)), step)["loss/nt_xent"]))
    assert sum(losses[-10:]) < 0.95 * sum(losses[:10])
    figures = model.evaluate(digits)
    assert 0.3 < figures["knn_accuracy"] <= 1.0
    model.save_pretrained(tmp_path / "simclr")
    loaded = SimCLR.from_pretrained(tmp_path / "simclr")
    images = digits.batch(slice(0, 32)).images
    torch.testing.assert_close(loaded.representations(images), model.representations(images))


def test_a_gallery_travels_in_the_weights_and_each_image_finds_itself(digits_test, tmp_path):
    model = SimCLR(SimCLRConfig(image_size=8, width=4, projection_dim=8))
    with pytest.raises(ValueError, match="holds no gallery"):
        model.gallery_features()
    shipped = model.with_gallery(digits_test, per_class=6)
    assert shipped.config.gallery == 60 and torch.bincount(shipped.gallery_labels).tolist() == [6] * 10
    picked = shipped.gallery_images[:5].float() / 127.5 - 1
    index, similarity = shipped.nearest(picked, k=3)
    assert index[:, 0].tolist() == [0, 1, 2, 3, 4]                     # each gallery image is its own nearest
    torch.testing.assert_close(similarity[:, 0], torch.ones(5))
    assert (similarity[:, :-1] >= similarity[:, 1:]).all()              # most similar first
    shipped.save_pretrained(tmp_path / "simclr")
    loaded = load_model(tmp_path / "simclr")
    assert torch.equal(loaded.gallery_images, shipped.gallery_images)
    torch.testing.assert_close(loaded.gallery_features(), shipped.gallery_features())


def test_the_principal_plane_is_the_top_two_directions_of_variance():
    torch.manual_seed(0)
    axes = torch.linalg.qr(torch.randn(6, 6))[0]
    features = (torch.randn(500, 6) * torch.tensor([5.0, 3.0, 0.5, 0.4, 0.3, 0.2])) @ axes.T + 7
    mean, basis = principal_plane(features)
    torch.testing.assert_close(mean, features.mean(0))
    assert basis.shape == (6, 2)
    overlap = (basis.T @ axes[:, :2]).abs()                              # the two planted directions, in order
    assert overlap[0, 0] > 0.99 and overlap[1, 1] > 0.99
