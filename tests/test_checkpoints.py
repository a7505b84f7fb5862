"""The shipped checkpoints: they load from safetensors and are as good as their model cards say."""
import json

import pytest
import torch
import yaml

from conftest import ROOT
from core import metrics
from core.attacks import robustness_curve
from core.data import load_dataset
from core.hub import load_model

CHECKPOINTS = ROOT / "checkpoints"


@pytest.fixture(scope="module")
def fashion_test(fashion_dir):
    return load_dataset("fashion-mnist", "test")


@pytest.mark.parametrize("name", ["classifier", "classifier-adv"])
def test_checkpoint_is_a_small_complete_hub_folder(name):
    folder = CHECKPOINTS / name
    assert {"config.json", "model.safetensors", "README.md", "samples.png"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10 * 2**20
    header = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert header["pipeline_tag"] == "image-classification" and header["library_name"] == "genlab"


def test_classifier_reaches_93_percent_on_the_test_set(fashion_test):
    model = load_model(CHECKPOINTS / "classifier")
    with torch.no_grad():
        predictions = torch.cat([model(b.images).argmax(1) for b in fashion_test.batches(1000, 0, 0)])
    labels = torch.cat([b.labels for b in fashion_test.batches(1000, 0, 0)])
    accuracy = (predictions == labels).float().mean().item()
    assert accuracy >= 0.93
    card = json.loads((CHECKPOINTS / "classifier" / "eval.json").read_text())
    assert card["accuracy"] == pytest.approx(accuracy, abs=1e-4)          # the card tells the truth


def test_adversarial_training_buys_robustness(fashion_test):
    subset = fashion_test.select(torch.arange(1000))
    standard = robustness_curve(load_model(CHECKPOINTS / "classifier"), subset, [0.1])[0.1]
    robust = robustness_curve(load_model(CHECKPOINTS / "classifier-adv"), subset, [0.1])[0.1]
    assert robust > standard + 0.3


def test_reference_statistics_match_the_test_set(fashion_test):
    reference = metrics.load_reference(CHECKPOINTS / "classifier")
    assert reference["mu"].shape == (128,) and reference["sigma"].shape == (128, 128)
    assert reference["features"].shape == (10_000, 128)
    model = load_model(CHECKPOINTS / "classifier")
    feats, _ = metrics.features(model, fashion_test.batch(slice(0, 2000)).images)
    torch.testing.assert_close(feats.half(), reference["features"][:2000], atol=2e-2, rtol=2e-3)
    floor = json.loads((CHECKPOINTS / "classifier" / "eval.json").read_text())["real_train10k_vs_test_fid"]
    shuffled = feats[torch.randperm(2000)]
    noise = torch.randn_like(feats) * feats.std()
    assert metrics.fid(reference["features"].float(), shuffled) < metrics.fid(reference["features"].float(), noise)
    assert 0 < floor < 5


def gan_names():
    return sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "config.json").is_file()
                  and json.loads((p / "config.json").read_text())["_class_name"] == "GAN")


@pytest.mark.parametrize("name", gan_names())
def test_shipped_gans_meet_their_targets_and_their_cards_tell_the_truth(name):
    folder = CHECKPOINTS / name
    assert (folder / "model.safetensors").stat().st_size < 40 * 2**20
    card = json.loads((folder / "eval.json").read_text())
    model = load_model(folder)
    images = model.sample(2000, seed=1)
    assert images.shape == (2000, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    _, logits = metrics.features(metrics.metric_classifier(), images)
    assert card["samples"] == 10_000
    if model.conditional:          # asked for each class in turn: the classifier must agree with the request
        assert card["conditional_accuracy"] >= 0.85
        assert metrics.conditional_accuracy(logits, model.default_labels(2000)) >= 0.85
    else:                          # unconditional: every class, in balance
        assert card["classes_covered"] == 10 and card["kl_to_uniform"] < 0.1
        fresh = metrics.class_coverage(logits.argmax(1), 10)                   # 2000 fresh samples, another seed
        assert fresh["classes_covered"] == 10 and fresh["kl_to_uniform"] < 0.15


def test_dcgan_beats_the_mlp_gan_on_fid():
    fids = {name: json.loads((CHECKPOINTS / name / "eval.json").read_text())["fid"] for name in ("dcgan", "mlp-gan")}
    assert fids["dcgan"] < fids["mlp-gan"]
