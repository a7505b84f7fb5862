import torch

from core.config import TrainConfig
from core.models.classifier import Classifier, ClassifierConfig, augment


def test_shapes_on_any_image_size():
    model = Classifier(ClassifierConfig(width=8, hidden=16)).eval()
    for size in (8, 28, 32):
        x = torch.rand(3, 1, size, size) * 2 - 1
        assert model(x).shape == (3, 10) and model.features(x).shape == (3, 16)


def test_augment_shifts_and_flips_within_the_image():
    x = torch.full((64, 1, 8, 8), -1.0)
    x[:, :, 3:5, 3:5] = 1.0
    out = augment(x)
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == x.sum((1, 2, 3)))   # the blob is never cut
    assert len({tuple((o > 0).nonzero()[0].tolist()) for o in out}) > 5                      # and lands in many places


def test_training_step_returns_finite_losses_and_overfits_one_batch(digits):
    for adversarial_eps in (0.0, 0.1):
        torch.manual_seed(0)
        model = Classifier(ClassifierConfig(width=8, hidden=32, augment=False, dropout=0.0,
                                            adversarial_eps=adversarial_eps))
        model.configure_optimizers(TrainConfig(lr=1e-2))
        batch = digits.batch(slice(0, 32))
        losses = [model.training_step(batch, step) for step in range(40)]
        assert all(torch.isfinite(l["loss/train"]) for l in losses)
        assert losses[-1]["loss/train"] < 0.25 * losses[0]["loss/train"]


def test_adversarial_training_sees_perturbed_images(digits, monkeypatch):
    seen = []
    model = Classifier(ClassifierConfig(width=8, augment=False, adversarial_eps=0.1))
    model.configure_optimizers(TrainConfig())
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: seen.append(x.detach()) or forward(x))
    batch = digits.batch(slice(0, 8))
    model.training_step(batch, 0)
    trained_on = seen[-1]
    assert 0 < (trained_on - batch.images).abs().max() <= 0.2 + 1e-6
