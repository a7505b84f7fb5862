"""The shipped checkpoints: they load from safetensors and are as good as their model cards say."""
import json
import math

import pytest
import torch
import yaml

from conftest import ROOT
from core import metrics
from core.attacks import robustness_curve
from core.data import load_dataset
from core.hub import metric_yardstick
from core.hub import load_model
from core.model import fast_precision
from core.models.ddpm import DDPM

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


def test_stored_scales_and_thresholds_describe_the_test_set(fashion_test):
    """The stored scales are the test set's mean part norms; the realism threshold lets 99% of test images pass
    (each scored against the others) and the copy threshold 1% of them under it; the real floor is near zero."""
    stored = metrics.load_reference(CHECKPOINTS / "classifier")
    assert set(stored) == {"scales", "realism_threshold", "copy_threshold"}
    reference = metric_yardstick().reference_for(fashion_test)
    parts, _ = metrics.stage_features(load_model(CHECKPOINTS / "classifier"), fashion_test.batch(slice(None)).images)
    torch.testing.assert_close(torch.stack([p.norm(dim=1).mean() for p in parts]), stored["scales"], rtol=1e-4, atol=0)
    own = metrics.realism(reference["features"], reference["features"], reference["radii"], exclude_self=True)
    assert float((own < stored["realism_threshold"]).float().mean()) == pytest.approx(0.01, abs=0.002)
    train = load_dataset("fashion-mnist", "train").batch(slice(None)).images
    nearest = metrics.nearest_distance(fashion_test.batch(slice(0, 2000)).images, train)
    assert float((nearest < stored["copy_threshold"]).float().mean()) == pytest.approx(0.01, abs=0.01)
    card = json.loads((CHECKPOINTS / "classifier" / "eval.json").read_text())
    assert 0 < card["real_train10k_vs_test_fid"] < 1 and card["real_train10k_vs_test_off_manifold"] < 0.02


GENERATORS = ("dcgan", "mlp-gan", "cgan", "stylegan", "vae", "vae-vamp", "vae-2d", "autoencoder", "ddpm", "ddpm-cond",
              "ddpm-fast", "glow", "vqvae", "pixelcnn")


@pytest.fixture(scope="module")
def fresh_samples():
    """(model, fresh samples) of a shipped generator, drawn once for every test of this module with another seed
    than the card's: 1000 images, or 128 with the card's sampler for a DDPM (diffusion is slow here; a conditional
    model's labels cycle 0..9; a guided model samples at its eval guidance scale)."""
    cache = {}

    def draw(name: str):
        if name not in cache:
            model = load_model(CHECKPOINTS / name)
            if isinstance(model, DDPM):
                model.set_precision(fast_precision())         # as the cards were measured (bf16 where it is fast)
                cache[name] = model, model.sample(128, model.config.eval_steps, seed=11)   # at its own guidance
            else:
                cache[name] = model, model.sample(1000, seed=11)
        return cache[name]
    return draw


@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_card_holds_the_new_yardstick_and_fresh_draws_agree(name, fashion_test, fresh_samples):
    """10k samples on the card, both feature sets beside each other; fresh samples (another seed) land within three
    standard errors of the card's precision and off-manifold share (averages over samples: unbiased at any count)."""
    card = json.loads((CHECKPOINTS / name / "eval.json").read_text())
    assert card["samples"] == 10_000 and {"fid", "fid_penultimate", "off_manifold", "copies"} <= set(card)
    model, fresh = fresh_samples(name)
    n = len(fresh)
    yardstick = metric_yardstick()
    reference = yardstick.reference_for(fashion_test)
    parts, _ = metrics.stage_features(yardstick.network, fresh)
    feats, real, radii = metrics.joined(parts, reference["scales"]), reference["features"], reference["radii"]
    scores = {"precision": float(metrics.inside_manifold(feats, real, radii).float().mean()),
              "off_manifold": float((metrics.realism(feats, real, radii) < reference["realism_threshold"]).float().mean())}
    for key, value in scores.items():
        error = 3 * (card[key] * (1 - card[key]) / n) ** 0.5 + 0.01
        assert value == pytest.approx(card[key], abs=error), (key, value, card[key])


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
    _, logits = metric_yardstick().features(images)
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


def test_all_checkpoints_are_small_and_listed_in_the_manifest():
    folders = {p.name for p in CHECKPOINTS.iterdir() if (p / "config.json").is_file()}
    manifest = json.loads((CHECKPOINTS / "index.json").read_text())["models"]
    assert {m["folder"] for m in manifest} == folders
    sizes = {f: sum(p.stat().st_size for p in (CHECKPOINTS / f).iterdir()) for f in folders}
    assert max(sizes.values()) < 40 * 2**20 and sum(sizes.values()) < 150 * 2**20
    for folder in folders:
        header = yaml.safe_load((CHECKPOINTS / folder / "README.md").read_text().split("---")[1])
        assert header["library_name"] == "genlab" and header["pipeline_tag"]


def recognised(images):
    """Mean top-1 softmax probability of the metric classifier, and its predictions."""
    _, logits = metric_yardstick().features(images)
    return float(logits.softmax(1).max(1).values.mean()), logits


def test_shipped_ddpm_turns_pure_noise_into_recognisable_clothes(fashion_test, fresh_samples):
    """Ho et al.'s sampler, not the blog shortcut: the full reverse process gives varied clothes of every class,
    while the one-shot x̂_0 from pure noise (what an autoencoder 'denoiser' returns) is one average blob."""
    model, images = fresh_samples("ddpm")
    yardstick = metric_yardstick()
    shortcut = next(model.denoise(len(images), 1, seed=11))[2].clamp(-1, 1)      # x̂_0 from pure noise, one step
    sampled, blob = (yardstick.score(x, data=fashion_test) for x in (images, shortcut))
    assert sampled["classes_covered"] >= 9 and blob["classes_covered"] <= 2
    assert sampled["fid"] < blob["fid"] / 3
    card = json.loads((CHECKPOINTS / "ddpm" / "eval.json").read_text())
    dcgan, cgan = (json.loads((CHECKPOINTS / name / "eval.json").read_text()) for name in ("dcgan", "cgan"))
    assert card["samples"] == dcgan["samples"] == 10_000
    # v-prediction on the cosine schedule: no more speckle than the GANs (the ε-prediction model it replaced had
    # 7.5% of its samples off the manifold), and a better FID than the DCGAN
    assert card["off_manifold"] < 0.02 and card["off_manifold"] < dcgan["off_manifold"]
    assert card["fid"] < dcgan["fid"]
    assert (CHECKPOINTS / "ddpm" / "scheduler_config.json").is_file()


def test_the_consistency_student_beats_its_teacher_at_its_few_steps(fashion_test, fresh_samples):
    """ddpm-fast samples with consistency sampling at its own 4 steps by default; fresh samples beat the teacher's
    (ddpm) with DPM-Solver++ at the same 4 steps on FID and precision, and its card holds the steps table against
    the teacher's 40."""
    model, images = fresh_samples("ddpm-fast")
    assert model.default_sampler == "lcm" and model.config.eval_steps == 4 and model.teacher is None
    teacher = load_model(CHECKPOINTS / "ddpm").set_precision(fast_precision())
    theirs = teacher.sample(len(images), model.config.eval_steps, "dpm_solver", seed=11)
    yardstick = metric_yardstick()
    mine, baseline = (yardstick.score(x, data=fashion_test) for x in (images, theirs))
    assert mine["fid"] < baseline["fid"] / 2 and mine["precision"] > baseline["precision"] + 0.1
    card = json.loads((CHECKPOINTS / "ddpm-fast" / "eval.json").read_text())
    table = next(table for title, table in card["tables"].items() if title.startswith("Few steps against the teacher"))
    assert "| ddpm (teacher) | DPM-Solver++ SDE | 40 |" in table and "| LCM (consistency) | 4 |" in table


def test_shipped_conditional_ddpm_follows_the_label(fresh_samples):
    model, images = fresh_samples("ddpm-cond")
    _, logits = recognised(images)
    assert metrics.conditional_accuracy(logits, model.labels_for(len(images), None)) >= 0.85
    card = json.loads((CHECKPOINTS / "ddpm-cond" / "eval.json").read_text())
    assert card["conditional_accuracy"] >= 0.90


def test_shipped_vae_samples_every_class_and_its_bounds_are_ordered(fashion_test):
    """Every class appears in at least 1% of fresh samples. (Sandals come out at about 1.7%, under the 2.5% that
    core.metrics.class_coverage counts as covered: the card reports 9 of 10 by that stricter measure.)"""
    model = load_model(CHECKPOINTS / "vae")
    _, logits = recognised(model.sample(2000, seed=3))
    shares = torch.bincount(logits.argmax(1), minlength=10) / 2000
    assert shares.min() >= 0.01
    card = json.loads((CHECKPOINTS / "vae" / "eval.json").read_text())
    assert card["classes_covered"] >= 9 and card["neg_iwae"] < card["neg_elbo"]
    torch.manual_seed(0)
    measured = model.likelihood_bounds(fashion_test, iwae=False)["neg_elbo"]
    assert measured == pytest.approx(card["neg_elbo"], abs=1.0)                 # the card tells the truth (in nats)


def test_the_logistic_vae_bounds_the_bits_per_dim_of_8_bit_images_as_its_card_says(fashion_test):
    """Its decoder is a distribution over the 256 levels, so −L_k/(D ln 2) bounds −log₂ P(k)/D: the card's bits/dim
    (core.evaluate --nll, k = 100) is its −IWAE in nats converted, under the −ELBO's, and the −ELBO re-measured on
    the whole test set matches the card."""
    model = load_model(CHECKPOINTS / "vae-logistic").eval()
    card = json.loads((CHECKPOINTS / "vae-logistic" / "eval.json").read_text())
    assert card["bits_per_dim_kind"] == "bound" and card["neg_iwae"] < card["neg_elbo"]
    assert card["bits_per_dim"] == pytest.approx(card["neg_iwae"] / (784 * math.log(2)), abs=0.005)
    torch.manual_seed(0)
    measured = model.likelihood_bounds(fashion_test, iwae=False)["neg_elbo"]
    assert measured == pytest.approx(card["neg_elbo"], abs=1.0)


def test_the_vamp_prior_vae_covers_every_class_and_bounds_log_likelihood_tighter(fashion_test):
    """With the VampPrior every class gets at least 2.5% of fresh samples (core.metrics' "covered"), where N(0, I)
    gives sandals 1.7%; its IWAE bound beats the N(0, I) VAE's on the card, and the card's −ELBO is re-measured."""
    model = load_model(CHECKPOINTS / "vae-vamp")
    assert model.config.prior == "vamp"
    _, logits = recognised(model.sample(2000, seed=3))
    shares = torch.bincount(logits.argmax(1), minlength=10) / 2000
    assert shares.min() >= 0.025, shares
    card, gaussian = (json.loads((CHECKPOINTS / name / "eval.json").read_text()) for name in ("vae-vamp", "vae"))
    assert card["classes_covered"] == 10 and card["neg_iwae"] < gaussian["neg_iwae"] and card["fid"] < gaussian["fid"]
    torch.manual_seed(0)
    measured = model.likelihood_bounds(fashion_test, iwae=False)["neg_elbo"]
    assert measured == pytest.approx(card["neg_elbo"], abs=1.0)


def test_the_autoencoder_reconstructs_better_but_samples_worse_than_the_vae():
    """MSE training gives the sharpest reconstructions and no generative model: N(0, I) decodes to junk."""
    ae = json.loads((CHECKPOINTS / "autoencoder" / "eval.json").read_text())
    vae = json.loads((CHECKPOINTS / "vae" / "eval.json").read_text())
    assert ae["mse"] < vae["mse"] and ae["fid"] > vae["fid"]
    assert load_model(CHECKPOINTS / "vae-2d").config.latent_dim == 2
    assert (CHECKPOINTS / "vae-2d" / "latent_grid.png").is_file()


def test_shipped_cyclegan_translates_sneakers_and_ankle_boots(fashion_test):
    model = load_model(CHECKPOINTS / "cyclegan")
    card = json.loads((CHECKPOINTS / "cyclegan" / "eval.json").read_text())
    measured = model.evaluate(fashion_test.subset([7, 9]), metric_yardstick())
    for direction in ("a2b", "b2a"):
        assert measured[f"{direction}_domain_accuracy"] >= 0.85
        assert measured[f"{direction}_domain_accuracy"] == pytest.approx(card[f"{direction}_domain_accuracy"], abs=0.01)


def test_pix2pix_turns_edge_maps_into_the_garments_its_card_reports(fashion_test):
    """Fresh translations of 2,000 test edge maps re-measure the card's L1; the metric classifier recognises the
    source image's class in most outputs; the card compares with the L1-only U-Net."""
    model = load_model(CHECKPOINTS / "pix2pix-edges")
    inputs, targets, labels = model.test_inputs(fashion_test.select(torch.arange(2000)))
    outputs = model.translate(inputs, seed=0)
    card = json.loads((CHECKPOINTS / "pix2pix-edges" / "eval.json").read_text())
    assert metrics.paired_figures(outputs, targets)["l1"] == pytest.approx(card["l1"], abs=0.005)
    _, logits = recognised(outputs)
    assert metrics.conditional_accuracy(logits, labels) > 0.8 and card["conditional_accuracy"] > 0.8
    assert any("L1 only" in table for table in card["tables"].values())


def test_simclr_neighbours_share_the_query_class_without_ever_seeing_a_label(fashion_test):
    """The shipped gallery holds the first 200 test images of each class; 1,000 other test images' 8 nearest
    gallery images vote for their class far above chance (10%)."""
    model = load_model(CHECKPOINTS / "simclr")
    assert torch.bincount(model.gallery_labels).tolist() == [200] * 10
    queries = fashion_test.select(torch.arange(9000, 10_000)).batch(slice(None))
    index, _ = model.nearest(queries.images, k=8)
    votes = torch.nn.functional.one_hot(model.gallery_labels[index], 10).sum(1)
    assert (votes.argmax(1) == queries.labels).float().mean() > 0.7


def test_stylegan_covers_every_class_and_truncation_trades_variety_for_realism(fashion_test, fresh_samples):
    """Fresh samples cover all 10 classes; at ψ = 0.5 more of them lie on the real manifold (precision) and they
    cover less of it (recall) than at ψ = 1; the card holds the comparison with the DCGAN."""
    model, images = fresh_samples("stylegan")
    yardstick = metric_yardstick()
    free, truncated = (yardstick.score(x, data=fashion_test) for x in (images, model.sample(len(images), 11, psi=0.5)))
    assert free["classes_covered"] == 10
    assert truncated["precision"] > free["precision"] and truncated["recall"] < free["recall"]
    card = json.loads((CHECKPOINTS / "stylegan" / "eval.json").read_text())
    assert card["samples"] == 10_000 and any("dcgan" in table for table in card["tables"].values())


def test_glow_bits_per_dim_are_what_its_card_says(fashion_test):
    """The card's test bits/dim (all 10k images, seed 0) re-measured on 2,000 of them with other dequantization
    noise: within four standard errors of a 2,000-image mean (the card's per-image spread). The card measured its
    samples at the configured T = 0.7, the T that sample() draws at by default."""
    model = load_model(CHECKPOINTS / "glow")
    card = json.loads((CHECKPOINTS / "glow" / "eval.json").read_text())
    spread = card["bits_per_dim_stderr"] * 10_000 ** 0.5
    measured = model.test_bits_per_dim(fashion_test.select(torch.arange(0, 10_000, 5)), seed=1)
    assert measured == pytest.approx(card["bits_per_dim"], abs=4 * spread / 2_000 ** 0.5)
    assert card["bits_per_dim"] < 3.5 and card["samples"] == 10_000 and model.config.temperature == 0.7


def test_vqvae_figures_are_what_its_card_says(fashion_test):
    """The card's test figures (all 10k images) re-measured on every fifth test image: the reconstruction MSE within
    5%, the prior's bits per code within 0.1, the codebook's perplexity within 10%; samples are garments of the class
    asked for most of the time (the card's conditional accuracy, from its 10k samples)."""
    model = load_model(CHECKPOINTS / "vqvae")
    card = json.loads((CHECKPOINTS / "vqvae" / "eval.json").read_text())
    measured = model.test_codes(fashion_test.select(torch.arange(0, 10_000, 5)))
    assert measured["reconstruction_mse"] == pytest.approx(card["reconstruction_mse"], rel=0.05)
    assert measured["bits_per_code"] == pytest.approx(card["bits_per_code"], abs=0.1)
    assert measured["codebook_perplexity"] == pytest.approx(card["codebook_perplexity"], rel=0.1)
    assert card["bits_per_code"] < 8 and card["samples"] == 10_000 and card["conditional_accuracy"] > 0.5


def test_pixelcnn_bits_per_dim_are_what_its_card_says(fashion_test):
    """Exact likelihoods need no noise: p(x | y) of every fifth test image re-measured lies within four standard
    errors (the card's per-image spread) of the card's 10k mean; p(x) = Σ_y p(x | y)/10 costs at most log₂ 10 bits
    per image more than p(x | y) with the true label."""
    model = load_model(CHECKPOINTS / "pixelcnn")
    card = json.loads((CHECKPOINTS / "pixelcnn" / "eval.json").read_text())
    spread = card["bits_per_dim_stderr"] * 10_000 ** 0.5
    measured = model.test_bits_per_dim(fashion_test.select(torch.arange(0, 10_000, 5)))
    assert measured == pytest.approx(card["bits_per_dim"], abs=4 * spread / 2_000 ** 0.5)
    batch = fashion_test.batch(torch.arange(0, 10_000, 500))
    with torch.no_grad():
        conditional, unconditional = model.bits_per_dim(batch.images, batch.labels), model.bits_per_dim(batch.images)
    gap = (unconditional - conditional) * 784
    assert (gap <= math.log2(10) + 1e-3).all() and card["samples"] == 10_000


def test_jem_classifies_as_its_card_says_and_its_energy_flags_noise(fashion_test):
    """Accuracy and ECE re-measured on all 10k test images match the card; the percentiles of the test energies the
    folder keeps for the app are the test set's; uniform noise gets a higher energy than 95% of the test images."""
    model = load_model(CHECKPOINTS / "jem").eval()
    card = json.loads((CHECKPOINTS / "jem" / "eval.json").read_text())
    batch = fashion_test.batch(slice(None))
    with torch.no_grad():
        logits = torch.cat([model(batch.images[i:i + 1000]) for i in range(0, 10_000, 1000)])
        noise = model.energy(torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert float((logits.argmax(1) == batch.labels).float().mean()) == pytest.approx(card["accuracy"], abs=1e-3)
    assert metrics.calibration(logits.softmax(1), batch.labels).ece == pytest.approx(card["ece"], abs=1e-3)
    torch.testing.assert_close(model.test_energy, torch.quantile(-logits.logsumexp(1), torch.linspace(0, 1, 101)),
                               rtol=0, atol=1e-3)
    assert float((noise > model.test_energy[95]).float().mean()) > 0.95


@pytest.mark.parametrize("name", ["glow", "pixelcnn", "vae-logistic"])
def test_the_likelihood_tabs_test_percentiles_belong_to_the_shipped_weights(fashion_test, name):
    """likelihood.json (bench/likelihood_reference.py) keeps the first test images' own bits/dim: re-scored with the
    shipped weights they agree, every percentile list is in order, and uniform noise lies above the 95th percentile
    of both scores (the flagged side)."""
    from core.likelihood import png_bits_per_dim
    from core.services.likelihood import image_bits
    kept = json.loads((CHECKPOINTS / name / "likelihood.json").read_text())
    model = load_model(CHECKPOINTS / name).eval()
    first = fashion_test.batch(slice(0, len(kept["first_images"]))).images
    torch.testing.assert_close(image_bits(model, first, seed=0), torch.tensor(kept["first_images"], dtype=torch.float64),
                               rtol=0, atol=1e-5)
    for key in ("bits_per_dim", "complexity"):
        assert len(kept[key]) == 101 and all(b >= a for a, b in zip(kept[key], kept[key][1:]))
    noise = torch.randint(0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    bits = image_bits(model, noise.float() / 127.5 - 1)
    assert (bits > kept["bits_per_dim"][95]).all() and (bits - png_bits_per_dim(noise) > kept["complexity"][95]).all()
