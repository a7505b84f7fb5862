"""StyleGAN: equalized learning rate, the modulated and demodulated convolution against its per-sample definition,
style mixing, w̄ and truncation, the noise inputs, the lazy R1 schedule, the style-mixing grid, and a short training
on the digits that measurably improves the samples."""
import pytest
import torch
import torch.nn.functional as F

from core.config import TrainConfig
from core.metrics import Yardstick
from core.models.stylegan import EqualLinear, MappingNetwork, ModulatedConv, StyleGAN, StyleGANConfig, leaky

TINY = dict(width=2, latent_dim=8, mapping_layers=2, image_size=8)


def test_equalized_learning_rate_scales_weights_at_run_time():
    torch.manual_seed(0)
    layer = EqualLinear(400, 300, lr_mul=0.01)
    assert float(layer.weight.detach().std()) == pytest.approx(100, rel=0.02)   # stored as N(0, 1) / lr_mul
    x = torch.randn(256, 400)
    torch.testing.assert_close(layer(x), x @ (layer.weight * 0.01 / 20).T + layer.bias * 0.01)
    assert float(layer(x).detach().std()) == pytest.approx(1, rel=0.1)   # unit variance in, unit variance out
    mapping = MappingNetwork(64, 4, lr_mul=0.01)
    z = torch.randn(512, 64)
    torch.testing.assert_close(mapping(5 * z), mapping(z))              # z is normalised first: its scale is lost
    assert 0.3 < float(mapping(z).std()) < 3


def test_modulated_convolution_equals_the_per_sample_weights_of_the_paper():
    """w'_ijk = s_i w_ijk, w''_ijk = w'_ijk / sqrt(Σ_ik w'_ijk² + ε), each image convolved with its own weights."""
    torch.manual_seed(0)
    conv = ModulatedConv(5, 3, 3, w_dim=8)
    with torch.no_grad():
        conv.bias.normal_()
        conv.noise_strength.fill_(0.7)
    x, w, noise = torch.randn(4, 5, 6, 6), torch.randn(4, 8), torch.randn(4, 1, 6, 6)
    out = conv(x, w, noise)
    for b in range(4):
        s = conv.affine(w[b:b + 1])[0]
        weight = conv.weight * conv.scale * s[None, :, None, None]
        weight = weight / (weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        expected = leaky(F.conv2d(x[b:b + 1], weight, padding=1) + 0.7 * noise[b] + conv.bias[None, :, None, None])
        torch.testing.assert_close(out[b:b + 1], expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():                                                # every style ×10: demodulation undoes it
        conv.affine.bias.mul_(10)
        conv.affine.weight.mul_(10)
    torch.testing.assert_close(conv(x, w, noise), out, atol=1e-4, rtol=1e-4)


def test_style_mixing_splits_the_layers_at_one_crossover_and_w_avg_follows_w():
    torch.manual_seed(0)
    mixing = StyleGAN(StyleGANConfig(**TINY, style_mixing=1.0, w_avg_decay=0.5))
    ws = mixing.training_ws(6, "cpu")
    assert ws.shape == (6, mixing.num_ws, 8)
    same = [torch.equal(ws[:, 0], ws[:, k]) for k in range(mixing.num_ws)]
    crossover = same.index(False)
    assert all(same[:crossover]) and not any(same[crossover:])
    assert all(torch.equal(ws[:, crossover], ws[:, k]) for k in range(crossover, mixing.num_ws))
    torch.testing.assert_close(mixing.generator.mapping.w_avg, 0.5 * ws[:, 0].mean(0))    # from 0, halfway
    plain = StyleGAN(StyleGANConfig(**TINY, style_mixing=0.0)).training_ws(6, "cpu")
    assert all(torch.equal(plain[:, 0], plain[:, k]) for k in range(plain.shape[1]))


def test_truncation_and_noise_inputs():
    torch.manual_seed(0)
    model = StyleGAN(StyleGANConfig(**TINY))
    model.generator.mapping.w_avg.normal_()
    for layer in model.generator.modules():
        if isinstance(layer, ModulatedConv) and layer.noise_strength is not None:
            layer.noise_strength.data.fill_(0.5)
    model.ema.update(model.generator)                    # the EMA copies w̄ (a buffer) and the noise strengths
    z = model.latent(5, seed=1)
    torch.testing.assert_close(model.mapped(z, psi=0.0), model.generator.mapping.w_avg.expand(5, -1))
    w = model.mapped(z)
    torch.testing.assert_close(model.mapped(z, psi=0.5), model.generator.mapping.w_avg + 0.5 * (w - model.generator.mapping.w_avg))
    at_mean = model.synthesize(model.mapped(z, psi=0.0), noise="none")
    assert torch.allclose(at_mean, at_mean[:1].expand_as(at_mean))          # ψ = 0: every sample is w̄'s image
    quiet = model.synthesize(w, noise="none")
    assert torch.equal(quiet, model.synthesize(w, noise="none"))
    assert torch.equal(model.synthesize(w, "random", 3), model.synthesize(w, "random", 3))
    assert not torch.equal(model.synthesize(w, "random", 3), model.synthesize(w, "random", 4))
    with pytest.raises(ValueError, match="noise must be one of"):
        model.synthesize(w, noise="fixed")


def test_style_mixing_grid_has_the_sources_in_its_first_row_and_column():
    model = StyleGAN(StyleGANConfig(**TINY))
    grid = model.style_mix([1, 2], [3, 4, 5], crossover=2)
    assert grid.shape == (3 * 4, 1, 8, 8)
    source_a = model.synthesize(model.mapped(torch.cat([model.latent(1, 1), model.latent(1, 2)]))).clamp(-1, 1)
    source_b = model.synthesize(model.mapped(torch.cat([model.latent(1, s) for s in (3, 4, 5)]))).clamp(-1, 1)
    torch.testing.assert_close(grid[1:4], source_b)
    torch.testing.assert_close(grid[[4, 8]], source_a)
    assert (grid[0] == -1).all()
    with pytest.raises(ValueError, match="crossover must be from 1 to 2"):      # 8x8: layers 4, 8, 8
        model.style_mix([1], [2], crossover=3)


def test_r1_is_applied_every_interval_steps(digits):
    model = StyleGAN(StyleGANConfig(**TINY, r1_interval=4))
    model.configure_optimizers(TrainConfig(lr=1e-3))
    batches = list(digits.batches(16, seed=0, epoch=0))[:5]
    logged = ["loss/r1" in model.training_step(b, step) for step, b in enumerate(batches)]
    assert logged == [True, False, False, False, True]


def test_a_short_training_improves_the_samples(digits, digits_test, digits_classifier):
    """FID on the digits classifier's features, before and after 8 epochs on the 8x8 digits (about 10 s)."""
    torch.manual_seed(0)
    model = StyleGAN(StyleGANConfig(width=4, latent_dim=32, mapping_layers=2, image_size=8, ema_decay=0.9))
    yardstick = Yardstick(digits_classifier)
    before = yardstick.score(model.sample(300), data=digits_test)["fid"]
    model.configure_optimizers(TrainConfig(lr=2e-3))
    step = 0
    for epoch in range(8):
        for batch in digits.batches(64, seed=0, epoch=epoch):
            model.training_step(batch, step)
            step += 1
    after = yardstick.score(model.sample(300), data=digits_test)["fid"]
    assert after < 0.65 * before, (before, after)
