import dataclasses
import random

import pytest
import torch
from PIL import Image

from core.config import TrainConfig
from core.data import load_dataset
from core.hub import load_model
from core.models.cyclegan import CycleGAN, CycleGANConfig, ImagePool
from core.train import train

TINY = dict(width=4, residual_blocks=1, domain_a=0, domain_b=1)


def test_cycle_and_identity_losses_equal_hand_computation():
    torch.manual_seed(0)
    model = CycleGAN(CycleGANConfig(**TINY, cycle_weight=10.0, identity_weight=0.5))
    a, b = torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1   # PatchGAN: >= 16 px
    parts = model.generator_losses(a, b)
    G, F = model.generator_ab, model.generator_ba
    cycle = (F(G(a)) - a).abs().mean() + (G(F(b)) - b).abs().mean()
    identity = (G(b) - b).abs().mean() + (F(a) - a).abs().mean()
    adversarial = (model.discriminator_b(G(a)) - 1).square().mean() + (model.discriminator_a(F(b)) - 1).square().mean()
    torch.testing.assert_close(parts["cycle"], cycle)
    torch.testing.assert_close(parts["identity"], identity)
    torch.testing.assert_close(parts["adversarial"], adversarial)
    torch.testing.assert_close(parts["total"], adversarial + 10.0 * cycle + 0.5 * 10.0 * identity)


def test_image_pool_returns_stored_images_half_the_time_once_full():
    pool = ImagePool(50, random.Random(1))
    first = torch.arange(50.0).view(50, 1, 1, 1)
    assert torch.equal(pool.query(first), first)                  # filling: every image comes straight back
    returned_old = 0
    for i in range(40):
        batch = (1000.0 * (i + 1) + torch.arange(50.0)).view(50, 1, 1, 1)     # every image distinct
        out = pool.query(batch)
        returned_old += int((out != batch).flatten().sum())
        assert len(pool.images) == 50
    assert 0.45 < returned_old / (40 * 50) < 0.55
    assert torch.equal(ImagePool(0).query(first), first)


@pytest.mark.parametrize("size", (28, 32, 64))
def test_generators_keep_the_input_size(size):
    model = CycleGAN(CycleGANConfig(**TINY)).eval()
    x = torch.rand(2, 1, size, size) * 2 - 1
    translated, reconstructed = model.translate(x, "a2b")
    assert translated.shape == reconstructed.shape == x.shape
    assert translated.abs().max() <= 1
    single, back = model.translate(x[0], "b2a")
    assert single.shape == back.shape == (1, size, size)


def test_translate_rejects_bad_input():
    model = CycleGAN(CycleGANConfig(**TINY))
    with pytest.raises(ValueError, match="direction"):
        model.translate(torch.zeros(1, 1, 8, 8), "sideways")
    with pytest.raises(ValueError, match="divisible by 4"):
        model.translate(torch.zeros(1, 1, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.translate(torch.zeros(1, 3, 8, 8))


def make_folder_pair(root, corrupt: bool = False):
    for split in ("train", "test"):
        for domain, colour in (("A", 40), ("B", 220)):
            folder = root / f"{split}{domain}"
            folder.mkdir(parents=True)
            for i in range(12 if split == "train" else 4):
                size = (30 + 7 * i, 20 + 3 * i)                                  # any size, any aspect ratio
                Image.new("RGB", size, (colour, colour // 2, i * 10)).save(folder / f"{i}.png")
            Image.new("L", (64, 64), colour).save(folder / "grey.jpg")
    if corrupt:
        (root / "trainB" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_folder_pair_dataset_loads_any_images(tmp_path):
    make_folder_pair(tmp_path)
    data = load_dataset("folder", "train", tmp_path, size=8)
    assert data.images.shape == (26, 1, 8, 8) and data.classes == ("A", "B")
    assert data.labels.tolist() == [0] * 13 + [1] * 13
    rgb = load_dataset("folder", "test", tmp_path, size=12, channels=3)
    assert rgb.images.shape == (10, 3, 12, 12)


def test_folder_pair_with_a_corrupt_file_names_it(tmp_path):
    make_folder_pair(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match=r"cannot read .*trainB/broken.png as an image"):
        load_dataset("folder", "train", tmp_path)
    with pytest.raises(Exception, match="testA"):
        load_dataset("folder", "test", tmp_path / "nowhere")


def test_short_training_lowers_the_cycle_loss(digits):
    torch.manual_seed(0)
    two = digits.subset([0, 1])
    two.pad_to = 16                                     # the PatchGAN needs at least 16x16
    model = CycleGAN(CycleGANConfig(width=8, residual_blocks=1, domain_a=0, domain_b=1, pool_size=10))
    model.configure_optimizers(TrainConfig(lr=3e-3))
    cycles = []
    for step, batch in enumerate(list(two.batches(32, seed=0, epoch=0)) * 3):
        logs = model.training_step(batch, step)
        cycles.append(float(logs["loss/cycle"]))
    assert len(cycles) == 27
    assert sum(cycles[-10:]) < 0.5 * sum(cycles[:10])


def test_a_batch_from_other_classes_is_refused(digits):
    model = CycleGAN(CycleGANConfig(**TINY))
    model.configure_optimizers(TrainConfig())
    with pytest.raises(ValueError, match="--classes 0,1"):
        model.training_step(next(digits.batches(32, seed=0, epoch=0)), 0)


def test_training_on_a_folder_pair_round_trips(tmp_path, tiny_config):
    make_folder_pair(tmp_path / "pair")
    cfg = dataclasses.replace(tiny_config, dataset="folder", data_dir=str(tmp_path / "pair"), folder_image_size=16,
                              batch_size=8, max_steps=4, checkpoint_every=2)
    model = CycleGAN(CycleGANConfig(**TINY))
    run = train(model, cfg, "cyclegan")
    loaded = load_model(run / "model")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.translate(x)[0], model.eval().translate(x)[0])
    assert "a2b_cycle_l1" in (run / "model" / "eval.json").read_text()
