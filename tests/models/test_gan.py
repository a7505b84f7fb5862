import pytest
import torch
from torch import nn

from core.config import TrainConfig
from core.hub import metric_yardstick
from core.losses import NO_BATCH_NORM
from core.models.gan import GAN, GANConfig
from core.nn import slerp

LOSSES = ("bce", "wgan-gp", "r3gan", "hinge")


@pytest.mark.parametrize("architecture", ["mlp", "dcgan"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_for_every_architecture_and_loss(architecture, loss, num_classes):
    config = GANConfig(architecture=architecture, loss=loss, num_classes=num_classes, feature_maps=8)
    model = GAN(config)
    labels = torch.arange(4) % 10 if num_classes else None
    images = model.generator(torch.randn(4, config.latent_dim), labels)
    assert images.shape == (4, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert model.discriminator(images, labels).shape == (4,)
    has_batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in model.discriminator.modules())
    assert has_batch_norm == (architecture == "dcgan" and loss not in NO_BATCH_NORM)
    model.configure_optimizers(TrainConfig(lr=1e-4))
    batch = type("Batch", (), {"images": torch.rand(8, 1, 28, 28) * 2 - 1, "labels": torch.arange(8) % 10})
    logs = model.training_step(batch, step=0)
    assert all(torch.isfinite(v) for v in logs.values()) and "loss/discriminator" in logs


def test_critic_steps_schedule_generator_updates():
    model = GAN(GANConfig(architecture="mlp", loss="wgan-gp", critic_steps=3, image_size=8))
    model.configure_optimizers(TrainConfig(lr=1e-4))
    batch = type("Batch", (), {"images": torch.rand(8, 1, 8, 8) * 2 - 1, "labels": torch.zeros(8, dtype=torch.long)})
    updated = ["loss/generator" in model.training_step(batch, step) for step in range(6)]
    assert updated == [False, False, True, False, False, True]


def test_discriminator_learns_on_a_tiny_dataset(digits):
    torch.manual_seed(0)
    model = GAN(GANConfig(architecture="dcgan", loss="bce", image_size=8, feature_maps=8))
    model.configure_optimizers(TrainConfig(lr=2e-4))
    batches = list(digits.batches(64, seed=0, epoch=0))[:10]
    d_losses = [model.training_step(b, i)["loss/discriminator"].item() for i, b in enumerate(batches)]
    assert sum(d_losses[-3:]) / 3 < d_losses[0] - 0.1          # from log 4 ≈ 1.39 downwards


def test_sampling_is_seeded_and_interpolation_hits_both_ends():
    model = GAN(GANConfig(architecture="mlp", image_size=8)).eval()
    torch.testing.assert_close(model.sample(4, seed=3), model.sample(4, seed=3))
    assert not torch.equal(model.sample(4, seed=3), model.sample(4, seed=4))
    for spherical in (True, False):
        path = model.interpolate(5, 9, steps=6, spherical=spherical)
        assert path.shape == (6, 1, 8, 8)
        torch.testing.assert_close(path[0], model.sample(1, seed=5)[0])
        torch.testing.assert_close(path[-1], model.sample(1, seed=9)[0])


def test_slerp_keeps_the_norm_between_equal_norm_points():
    z0, z1 = torch.randn(64), torch.randn(64)
    z1 = z1 / z1.norm() * z0.norm()
    path = slerp(z0, z1, torch.linspace(0, 1, 7))
    torch.testing.assert_close(path.norm(dim=1), torch.full((7,), z0.norm().item()))
    torch.testing.assert_close(path[3], (z0 + z1) / (z0 + z1).norm() * z0.norm(), atol=1e-5, rtol=1e-5)


def test_class_grid_rows_are_classes_and_labels_are_checked():
    model = GAN(GANConfig(architecture="mlp", num_classes=10, image_size=8))
    assert model.class_grid(per_class=3).shape == (30, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        model.sample(2, labels=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="conditional"):
        GAN(GANConfig(architecture="mlp", image_size=8)).class_grid()


def test_conditional_gan_draws_the_class_it_is_asked_for(digits, digits_classifier):
    """A real check: after 8 epochs on the 8x8 digits (2 s), a digits classifier recognises the requested class."""
    torch.manual_seed(0)
    model = GAN(GANConfig(architecture="mlp", num_classes=10, image_size=8, latent_dim=32, ema_decay=0.99))
    model.configure_optimizers(TrainConfig(lr=1e-3))
    step = 0
    for epoch in range(8):
        for batch in digits.batches(64, seed=0, epoch=epoch):
            model.training_step(batch, step)
            step += 1
    grid = model.class_grid(per_class=20)
    with torch.no_grad():
        predicted = digits_classifier(grid).argmax(1)
    assert (predicted == torch.arange(10).repeat_interleave(20)).float().mean() > 0.8


def test_the_loop_keeps_the_discriminator_learning_rate_ratio(tiny_config):
    from dataclasses import replace
    from core.train import train
    model = GAN(GANConfig(architecture="mlp", image_size=8, d_lr_ratio=0.25))
    model.evaluate = lambda data, yardstick: {}
    train(model, replace(tiny_config, max_steps=2, lr=4e-4, lr_schedule="cosine"), "gan")
    generator_lr = model.generator_optimizer.param_groups[0]["lr"]
    assert generator_lr > 0
    assert model.discriminator_optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * generator_lr)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_evaluate_reports_every_metric(digits_test, num_classes):
    model = GAN(GANConfig(architecture="mlp", image_size=8, num_classes=num_classes)).eval()
    scores = model.evaluate(digits_test.select(torch.arange(200)), metric_yardstick())
    both = {"fid", "kid", "kid_std", "precision", "recall"}
    expected = both | {f"{k}_penultimate" for k in both} | {"off_manifold", "realism_median", "classes_covered",
                                                            "smallest_class_share", "kl_to_uniform"}   # no copies:
    # the training images are only compared against on the stored Fashion-MNIST reference
    assert set(scores) == expected | ({"conditional_accuracy"} if num_classes else set())
    assert scores["fid"] > 0 and 0 <= scores["precision"] <= 1 and 1 <= scores["classes_covered"] <= 10
