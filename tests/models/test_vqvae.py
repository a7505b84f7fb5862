"""core/models/vqvae.py against references that cannot be argued with: quantization picks the code a brute-force
distance table picks; the straight-through estimator hands the encoder exactly the decoder's gradient at z_q; the
EMA update is Appendix A.1's formula on a hand case; unused codes are restarted from encoder outputs; the prior is
causal (later codes never change earlier logits) and its fast loop draws what the reference loop draws; a uniform
prior scores log₂ K bits per code; the Hub folder and the two-stage --init-from path keep the autoencoder."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from core.config import TrainConfig
from core.data import Batch, load_dataset
from core.hub import load_model
from core.models.vqvae import VQVAE, VQVAEConfig, ema_update, nearest_codes, perplexity
from core.train import train

TINY = VQVAEConfig(image_size=8, codes=16, code_dim=4, width=8, residual_blocks=1, prior_hidden=8, prior_layers=3,
                   prior_embed=4, num_classes=3, restart_after=3)


pytestmark = pytest.mark.usefixtures("one_thread")      # (conftest.py)


def digits(n: int = 64) -> Batch:
    data = load_dataset("digits", "train")
    return data.batch(torch.arange(n))


def test_quantization_picks_the_nearest_code_of_a_brute_force_table():
    torch.manual_seed(0)
    z, codebook = torch.randn(200, 5), torch.randn(12, 5)
    table = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)          # (N, K), every distance written out
    assert torch.equal(nearest_codes(z, codebook), table.argmin(1))
    assert torch.equal(nearest_codes(codebook, codebook), torch.arange(12))  # a code is its own nearest


def test_the_encoder_receives_the_decoders_gradient_at_z_q():
    torch.manual_seed(0)
    model, x = VQVAE(TINY), digits(8).images
    model.restart_dead_codes(model.encoder(x).detach().permute(0, 2, 3, 1).reshape(-1, 4))   # codes near z_e
    captured = []

    def keep(module, args, out):
        out.retain_grad()
        captured.append(out)
    model.encoder.register_forward_hook(keep)
    mse, commitment, _, codes = model.losses(x)
    mse.backward()
    z_q = model.lookup(codes).clone().requires_grad_()
    reference = F.mse_loss(model.decoder(z_q), x)
    reference.backward()
    torch.testing.assert_close(mse, reference)                             # the forward pass decodes z_q
    assert z_q.grad.abs().sum() > 0 and len(codes.unique()) > 1
    torch.testing.assert_close(captured[0].grad, z_q.grad)                 # copied through the argmin unchanged


def test_the_ema_update_is_appendix_a1_on_a_hand_case():
    size, total = torch.tensor([1.0, 1.0]), torch.tensor([[2.0], [4.0]])
    counts, sums = torch.tensor([2.0, 0.0]), torch.tensor([[6.0], [0.0]])
    n, m, e = ema_update(size, total, counts, sums, decay=0.5, epsilon=0.0)
    # N = 0.5·1 + 0.5·2 = 1.5 and 0.5·1 + 0 = 0.5; m = 0.5·2 + 0.5·6 = 4 and 0.5·4 = 2; e = m / N
    assert n.tolist() == [1.5, 0.5] and m.tolist() == [[4.0], [2.0]]
    torch.testing.assert_close(e, torch.tensor([[4 / 1.5], [4.0]]))
    _, _, smoothed = ema_update(size, total, counts, sums, decay=0.5, epsilon=1e-5)
    torch.testing.assert_close(smoothed, e, rtol=1e-4, atol=0)            # ε barely moves a used code


def test_update_codebook_writes_the_ema_and_restarts_unused_codes():
    torch.manual_seed(0)
    model = VQVAE(dataclasses.replace(TINY, restart_after=0))
    z_e, codes = torch.randn(2, 4, 2, 2), torch.tensor([[[0, 0], [1, 0]], [[1, 1], [0, 3]]])
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    counts = torch.bincount(codes.flatten(), minlength=16).float()
    sums = torch.stack([flat[codes.flatten() == k].sum(0) for k in range(16)])
    expected = ema_update(model.cluster_size.clone(), model.embed_sum.clone(), counts, sums, 0.99)
    assert model.update_codebook(z_e, codes) == 0
    for buffer, value in zip((model.cluster_size, model.embed_sum, model.codebook), expected):
        torch.testing.assert_close(buffer, value)

    model = VQVAE(TINY)                                          # restart after 3 idle steps; counters start at 3
    flat = torch.randn(32, 4) * 5
    z_e, used = flat.view(2, 4, 4, 4).permute(0, 3, 1, 2), torch.zeros(2, 4, 4, dtype=torch.long)
    assert model.update_codebook(z_e, used) == 15                # the first step: every unused code from the batch
    assert all((flat == code).all(1).any() for code in model.codebook[1:])
    before = model.codebook.clone()
    assert [model.update_codebook(z_e, used) for _ in range(3)] == [0, 0, 15]   # idle again for 3 steps
    assert not torch.equal(model.codebook[1:], before[1:]) and int(model.idle_steps.max()) == 0


def test_perplexity_is_k_for_uniform_use_and_1_for_one_code():
    assert perplexity(torch.ones(8)) == pytest.approx(8.0)
    assert perplexity(torch.tensor([5, 0, 0])) == pytest.approx(1.0)


def test_the_prior_is_causal_and_the_fast_loop_draws_the_reference_loops_codes():
    torch.manual_seed(0)
    model = VQVAE(TINY)
    codes, labels = torch.randint(0, 16, (2, 2, 2)), torch.tensor([0, 2])
    logits = model.prior(model.embed(codes), labels)
    for i in range(4):                                            # change every code from i on: logits < i stay
        changed = codes.clone().flatten(1)
        changed[:, i:] = (changed[:, i:] + 1) % 16
        after = model.prior(model.embed(changed.view(2, 2, 2)), labels)
        assert torch.equal(after.flatten(2)[:, :, :i + 1], logits.flatten(2)[:, :, :i + 1])
    model = VQVAE(dataclasses.replace(TINY, image_size=16))       # a 4x4 grid of codes
    draw = lambda fast: model.sample_codes(5, torch.tensor([0, 1, 2, 0, 1]), 1.0, torch.Generator().manual_seed(3),
                                           fast=fast)
    fast, reference = draw(True), draw(False)
    assert torch.equal(fast, reference) and len(fast.unique()) > 3


def test_a_uniform_prior_scores_log2_k_bits_per_code():
    model = VQVAE(TINY)
    torch.nn.init.zeros_(model.prior.head[-1].weight), torch.nn.init.zeros_(model.prior.head[-1].bias)
    codes = torch.randint(0, 16, (3, 2, 2))
    torch.testing.assert_close(model.bits_per_code(codes, torch.tensor([0, 1, 2])), torch.full((3,), math.log2(16)))


def test_a_short_run_improves_the_reconstruction_and_the_prior():
    torch.manual_seed(0)
    model, batch = VQVAE(TINY), digits(64)
    model.configure_optimizers(TrainConfig(lr=3e-3))
    mse = lambda: float(F.mse_loss(model.decode(model.encode(batch.images)[1]), batch.images))
    with torch.no_grad():
        before = mse()
    for step in range(60):
        logs = model.training_step(batch, step)
    with torch.no_grad():
        assert mse() < 0.5 * before
    assert float(logs["codebook/perplexity"]) > 4
    prior = VQVAE(dataclasses.replace(TINY, stage="prior"))
    prior.init_from(model)
    prior.configure_optimizers(TrainConfig(lr=3e-3))
    codes = prior.encode(batch.images)[1]
    with torch.no_grad():
        before = float(prior.bits_per_code(codes, batch.labels % 3).mean())
    for step in range(30):
        prior.training_step(Batch(batch.images, batch.labels % 3), step)
    with torch.no_grad():
        assert float(prior.bits_per_code(codes, batch.labels % 3).mean()) < before - 0.3


def test_the_hub_folder_gives_the_same_samples_and_reconstructions(tmp_path):
    torch.manual_seed(0)
    model, x = VQVAE(TINY).eval(), digits(4).images
    model.restart_dead_codes(torch.randn(64, 4))
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, VQVAE)
    assert torch.equal(loaded.sample(6, seed=2), model.sample(6, seed=2))
    assert torch.equal(loaded.reconstruct_pairs(x), model.reconstruct_pairs(x))


def test_the_second_stage_trains_only_the_prior_from_the_first_stages_folder(tmp_path):
    cfg = TrainConfig(dataset="digits", batch_size=32, max_steps=3, log_every=1, eval_size=16, checkpoint_every=0,
                      runs_dir=str(tmp_path), cpu=True)
    first = train(VQVAE(dataclasses.replace(TINY, num_classes=10)), dataclasses.replace(cfg, run_name="ae"), "vqvae")
    saved = load_model(first / "model")
    second = VQVAE(saved.fine_tuning_config())
    second.init_from(saved)
    assert second.config.stage == "prior"
    run = train(second, dataclasses.replace(cfg, run_name="prior"), "vqvae")
    trained = load_model(run / "model").state_dict()
    for name, tensor in saved.state_dict().items():
        if name.startswith(("encoder.", "decoder.", "codebook", "cluster_size", "embed_sum")):
            assert torch.equal(trained[name], tensor), name               # the autoencoder is frozen
    assert not torch.equal(trained["prior.head.3.weight"], saved.state_dict()["prior.head.3.weight"])
    figures = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval/" in line][-1]
    assert 0 < figures["eval/bits_per_code"] < math.log2(16) + 1 and 0 < figures["eval/codebook_usage"] <= 1
    assert figures["eval/reconstruction_mse"] > 0


def test_bad_requests_are_refused():
    model = VQVAE(TINY)
    with pytest.raises(ValueError, match="labels must be"):
        model.sample(2, labels=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match="stage"):
        VQVAE(dataclasses.replace(TINY, stage="both"))
