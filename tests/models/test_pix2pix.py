"""Pix2Pix: the paired tasks made from any image dataset, the loss of Eq. 4, the U-Net at several sizes, dropout as
the seeded noise, a short training that lowers the L1 error, and a paired folder trained and round-tripped."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.config import TrainConfig
from core.data import Batch, edge_map, load_dataset, masked_square, paired_inputs
from core.hub import load_model
from core.models.pix2pix import Pix2Pix, Pix2PixConfig
from core.train import train

TINY = dict(width=4, image_size=8)


def test_the_edge_map_of_a_square_is_its_outline():
    image = -torch.ones(1, 1, 12, 12)
    image[..., 3:9, 3:9] = 1.0                               # a white square on black
    edges = edge_map(image)[0, 0] > 0
    assert edges[2:10, 2:10].sum() == edges.sum() > 0           # every edge pixel hugs the square
    assert not edges[5:7, 5:7].any() and not edges[0, :].any()  # not its middle, not the far background
    assert edges[3, 5] and edges[2, 5]                          # both sides of the boundary
    rgb = edge_map(image.expand(2, 3, 12, 12))
    assert rgb.shape == (2, 3, 12, 12) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert not (edge_map(torch.zeros(1, 1, 8, 8)) > 0).any()     # a flat image has no edges


def test_the_inpainting_mask_is_one_square_of_the_stated_side():
    images = torch.rand(16, 1, 28, 28) * 0.5 + 0.5             # never exactly 0
    masked = masked_square(images, torch.Generator().manual_seed(3))
    changed = masked != images
    assert (changed.sum(dim=(1, 2, 3)) == round(0.4 * 28) ** 2).all()
    assert (masked[changed] == 0).all()
    rows = changed.any(dim=3)[:, 0]                             # (B, H): the rows the square covers
    assert (rows.sum(1) == 11).all()
    again = masked_square(images, torch.Generator().manual_seed(3))
    assert torch.equal(masked, again)
    assert not torch.equal(masked, masked_square(images, torch.Generator().manual_seed(4)))


def test_paired_inputs_refuse_the_wrong_task_for_the_data():
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="paired-folder"):
        paired_inputs("pairs", Batch(images, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="--task pairs"):
        paired_inputs("edges", Batch(images, torch.zeros(2, dtype=torch.long), inputs=images))
    with pytest.raises(ValueError, match="unknown paired task"):
        paired_inputs("colourise", Batch(images, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="task must be one of"):
        Pix2Pix(Pix2PixConfig(task="colourise"))


def test_generator_loss_is_eq_4_by_hand():
    torch.manual_seed(0)
    model = Pix2Pix(Pix2PixConfig(**TINY, dropout=0.0, l1_weight=100.0))    # no dropout: G is deterministic
    x, y = torch.rand(3, 1, 8, 8) * 2 - 1, torch.rand(3, 1, 8, 8) * 2 - 1
    parts = model.losses(x, y)
    fake = model.generator(x)
    adversarial = -F.logsigmoid(model.discriminator(torch.cat([x, fake], 1))).mean()    # −log D(x, G(x))
    l1 = (y - fake).abs().mean()
    torch.testing.assert_close(parts["adversarial"], adversarial)
    torch.testing.assert_close(parts["l1"], l1)
    torch.testing.assert_close(parts["total"], adversarial + 100 * l1)
    baseline = Pix2Pix(Pix2PixConfig(**TINY, dropout=0.0, adversarial_weight=0.0))
    baseline.load_state_dict(model.state_dict())
    torch.testing.assert_close(baseline.losses(x, y)["total"], 100 * l1)


@pytest.mark.parametrize("size", (8, 16, 28, 32))
def test_translation_keeps_the_size_and_dropout_is_seeded_noise(size):
    model = Pix2Pix(Pix2PixConfig(width=4, image_size=size))
    x = torch.rand(3, 1, size, size) * 2 - 1
    out = model.translate(x, seed=1)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert torch.equal(out, model.translate(x, seed=1))                 # the same seed, the same outputs
    assert not torch.allclose(out, model.translate(x, seed=2))          # dropout is on at sampling: the noise z
    plain = model.translate(x, seed=1, dropout=False)
    assert torch.equal(plain, model.translate(x, seed=2, dropout=False)) and not torch.allclose(plain, out)
    assert not torch.allclose(out, model.translate(x, seed=3))          # and it is back on afterwards
    assert model.translate(x[0], seed=1).shape == (1, size, size)
    assert model.discriminator(torch.cat([x, out], 1)).shape[1] == 1


def test_translate_rejects_bad_input():
    model = Pix2Pix(Pix2PixConfig(**TINY))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.translate(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="H, W <= 8"):
        model.translate(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("task", ["edges", "inpaint"])
def test_short_training_lowers_the_l1_error(digits, task):
    torch.manual_seed(0)
    model = Pix2Pix(Pix2PixConfig(task=task, image_size=8, width=8))
    model.configure_optimizers(TrainConfig(lr=2e-3))
    errors = []
    for step, batch in enumerate(list(digits.batches(64, seed=0, epoch=0)) * 3):
        errors.append(float(model.training_step(batch, step)["loss/l1"]))
    assert len(errors) == 66
    assert sum(errors[-10:]) < 0.6 * sum(errors[:10])


def test_the_l1_only_baseline_leaves_the_discriminator_untouched(digits):
    model = Pix2Pix(Pix2PixConfig(**TINY, adversarial_weight=0.0))
    model.configure_optimizers(TrainConfig(lr=2e-3))
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    logs = model.training_step(next(digits.batches(32, seed=0, epoch=0)), 0)
    assert "loss/discriminator" not in logs and float(logs["loss/adversarial"]) == 0
    assert all(torch.equal(before[k], v) for k, v in model.discriminator.state_dict().items())


def make_paired_folder(root, missing_partner: bool = False):
    """A toy paired task: A is a dark square, B the same square bright, at the same place (the name's number)."""
    for split in ("train", "test"):
        for i in range(10 if split == "train" else 4):
            for domain, value in (("A", 90), ("B", 250)):
                (root / f"{split}{domain}").mkdir(parents=True, exist_ok=True)
                image = Image.new("L", (40, 40), 0)
                image.paste(value, (4 + 2 * i, 8, 20 + 2 * i, 24))
                image.save(root / f"{split}{domain}" / f"{i}.{'png' if domain == 'A' else 'bmp'}")
    if missing_partner:
        Image.new("L", (40, 40), 0).save(root / "trainB" / "lonely.png")


def test_a_paired_folder_pairs_files_by_name(tmp_path):
    make_paired_folder(tmp_path)
    data = load_dataset("paired-folder", "train", tmp_path, size=16)
    assert data.images.shape == data.inputs.shape == (10, 1, 16, 16)
    assert (data.inputs.float().mean() < data.images.float().mean())       # A dark, B bright
    assert torch.equal(data.inputs > 45, data.images > 125)                 # each pair: the same square (half height)
    batch = data.select(torch.tensor([3, 1])).batch(slice(None))
    assert batch.inputs.shape == (2, 1, 16, 16) and batch.inputs.min() >= -1
    make_paired_folder(tmp_path / "broken", missing_partner=True)
    with pytest.raises(ValueError, match="without a partner: lonely"):
        load_dataset("paired-folder", "train", tmp_path / "broken")
    Image.new("L", (40, 40), 0).save(tmp_path / "trainA" / "3.jpg")       # a second 3 beside 3.png
    with pytest.raises(ValueError, match="share a name"):
        load_dataset("paired-folder", "train", tmp_path)
    assert len(load_dataset("folder", "train", tmp_path)) == 21             # unpaired: every file counts


def test_training_on_a_paired_folder_round_trips(tmp_path, tiny_config):
    make_paired_folder(tmp_path / "pairs")
    cfg = dataclasses.replace(tiny_config, dataset="paired-folder", data_dir=str(tmp_path / "pairs"),
                              folder_image_size=16, batch_size=5, max_steps=4, checkpoint_every=2)
    with pytest.raises(ValueError, match="--task pairs"):
        train(Pix2Pix(Pix2PixConfig(width=4, image_size=16)), cfg, "pix2pix")
    model = Pix2Pix(Pix2PixConfig(task="pairs", width=4, image_size=16))
    run = train(model, cfg, "pix2pix")
    loaded = load_model(run / "model")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.translate(x, seed=5), model.translate(x, seed=5))
    figures = (run / "model" / "eval.json").read_text()
    assert '"ssim"' in figures and '"psnr"' in figures and "fid" not in figures    # no classifier on a folder
