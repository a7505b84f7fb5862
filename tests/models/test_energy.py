"""JEM (core/models/energy.py): the energy and its three distributions, the SGLD step by its formula, the replay
buffer, the divergence stop (in the model and in the loop), calibration bins, training and the shipped folder."""
import dataclasses
import json

import pytest
import torch

from core.config import TrainConfig
from core.data import Batch
from core.hub import load_model
from core.metrics import calibration
from core.models.energy import JEM, Diverged, JEMConfig, sgld
from core.train import train

TINY = JEMConfig(image_size=8, width=4, hidden=8, num_classes=3, buffer_size=20, sgld_steps=2, sample_steps=3,
                 shipped_buffer=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_sgld_step_on_a_quadratic_energy_moves_by_the_formula():
    """E(x) = a‖x − m‖²/2 has ∇E = a(x − m): one step is x − s·a(x − m) + σε, with ε from the same generator."""
    a, m, s, sigma = 3.0, torch.full((2, 1, 4, 4), 0.25), 0.1, 0.05
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    energy = lambda x: 0.5 * a * ((x - m) ** 2).flatten(1).sum(1)
    moved = sgld(energy, x0, 1, s, sigma, torch.Generator().manual_seed(7))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(moved, x0 - s * a * (x0 - m) + sigma * eps, rtol=0, atol=1e-12)
    noiseless = sgld(energy, x0, 50, s, 0.0)                  # without noise it is gradient descent to the minimum m
    torch.testing.assert_close(noiseless, m.double().expand_as(x0), rtol=0, atol=1e-6)


def test_the_energies_give_the_classifier_and_the_marginal():
    """exp(−E(x, y)) / exp(−E(x)) = softmax(f(x))_y: the classifier is p(y | x) of the joint energy."""
    torch.manual_seed(0)
    model = JEM(TINY).double()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64) * 2 - 1
    logits, marginal = model(x), model.energy(x)
    torch.testing.assert_close(marginal, -torch.log(torch.exp(logits).sum(1)))
    for y in range(3):
        joint = model.energy(x, torch.full((5,), y))
        torch.testing.assert_close(torch.exp(marginal - joint), logits.softmax(1)[:, y])


def test_chains_return_to_the_buffer_and_a_share_restarts_from_noise():
    torch.manual_seed(0)
    model = JEM(dataclasses.replace(TINY, reinit=0.0))
    model.replay.fill_(0.5)
    starts, index = model.chain_starts(200)
    assert torch.equal(starts, torch.full_like(starts, 0.5)) and index.max() < 20
    model = JEM(dataclasses.replace(TINY, reinit=1.0))
    model.replay.fill_(5.0)
    starts, _ = model.chain_starts(200)
    assert starts.abs().max() <= 1 and starts.std() > 0.5                  # all uniform noise, none from the buffer
    model = JEM(TINY)
    model.configure_optimizers(TrainConfig(lr=1e-3))
    before = model.replay.clone()
    model.training_step(Batch(torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 3), 0)
    changed = (model.replay != before).flatten(1).any(1)
    assert 0 < int(changed.sum()) <= 16                                    # the chain ends went back in


def test_a_run_whose_energies_drift_apart_stops_with_a_clear_message():
    torch.manual_seed(0)
    batch = Batch(torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3)
    model = JEM(dataclasses.replace(TINY, max_energy_gap=1e-6))
    model.configure_optimizers(TrainConfig())
    with pytest.raises(Diverged, match="E\\(samples\\) − E\\(data\\) = .* --energy-l2"):
        model.training_step(batch, 3)
    model = JEM(TINY)
    model.configure_optimizers(TrainConfig())
    with torch.no_grad():
        model.network[-1].bias.fill_(float("nan"))
    with pytest.raises(Diverged, match="nan"):
        model.training_step(batch, 0)


def test_the_loop_stops_on_divergence_before_writing_a_checkpoint(tmp_path):
    cfg = TrainConfig(dataset="digits", batch_size=16, max_steps=4, log_every=1, eval_size=16, checkpoint_every=1,
                      runs_dir=str(tmp_path), run_name="run", cpu=True)
    with pytest.raises(Diverged):
        train(JEM(dataclasses.replace(TINY, num_classes=10, max_energy_gap=1e-9)), cfg, "jem")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "diverged" in status["error"]
    assert not list((tmp_path / "run").glob("checkpoint*")) and not (tmp_path / "run" / "model").exists()


def test_calibration_bins_and_ece_by_hand():
    """Two confident right answers (0.95) and two unsure wrong ones (0.55): ECE = ½·0.05 + ½·0.55 = 0.3."""
    probabilities = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]])
    result = calibration(probabilities, torch.tensor([0, 1, 1, 0]))
    assert result.counts[14] == 2 and result.counts[8] == 2 and sum(result.counts) == 4
    assert result.accuracy[14] == 1.0 and result.accuracy[8] == 0.0
    assert result.ece == pytest.approx(0.3)


def test_a_short_run_learns_the_classes_and_the_shipped_folder_keeps_part_of_the_buffer(tmp_path):
    """Three grey levels, one per class: the run separates them, and the data's energy falls below noise's."""
    torch.manual_seed(0)
    model = JEM(dataclasses.replace(TINY, width=8, hidden=16, augment=False, energy_l2=0.1))
    model.configure_optimizers(TrainConfig(lr=2e-3))
    images = torch.stack([torch.full((1, 8, 8), v) for v in (-0.8, 0.0, 0.8)]).repeat(6, 1, 1, 1)
    batch = Batch(images + 0.05 * torch.randn_like(images), torch.arange(18) % 3)
    noise = torch.rand(64, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert abs(model.energy(batch.images).mean() - model.energy(noise).mean()) < 0.05     # untrained: alike
    for step in range(60):
        model.training_step(batch, step)
    with torch.no_grad():
        assert (model(batch.images).argmax(1) == batch.labels).float().mean() >= 0.6
        assert model.energy(batch.images).mean() < model.energy(noise).mean() - 0.5
    model.exported().save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.buffer_size == 5 and torch.equal(loaded.replay, model.replay[:5])
    torch.testing.assert_close(loaded(batch.images), model(batch.images))
    tuned = JEM(loaded.fine_tuning_config())
    tuned.init_from(loaded)
    assert len(tuned.replay) == JEMConfig().buffer_size and torch.equal(tuned.replay[:5], loaded.replay)


def test_samples_are_seeded_in_range_and_follow_the_requested_class():
    torch.manual_seed(0)
    model = JEM(TINY)
    a, b = model.sample(4, seed=3), model.sample(4, seed=3)
    assert torch.equal(a, b) and a.shape == (4, 1, 8, 8) and a.abs().max() <= 1
    assert not torch.equal(a, model.sample(4, seed=4))
    seen = []
    model.sample(2, seed=0, labels=torch.tensor([0, 2]), steps=5, on_step=lambda k, x: seen.append(k))
    assert seen == [1, 2, 3, 4, 5]


def test_without_the_px_term_it_trains_a_plain_classifier_and_runs_no_chain():
    torch.manual_seed(0)
    model = JEM(dataclasses.replace(TINY, px_weight=0.0, augment=False, data_noise=0.0))
    model.configure_optimizers(TrainConfig(lr=0.0))
    before = model.replay.clone()
    batch = Batch(torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3)
    losses = model.training_step(batch, 0)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(batch.images), batch.labels)
    assert torch.equal(model.replay, before) and "energy/gap" not in losses
    torch.testing.assert_close(losses["loss/train"], expected)
