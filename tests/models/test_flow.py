"""core/models/flow.py and flow_layers.py, checked against references that cannot be argued with: every layer is
inverted by its inverse, its log-determinant is autograd's brute-force log|det J|, and the bits per dimension of a
flow whose answer is known in closed form (an identity flow on a standard normal base; a uniform density) come out
exactly."""
import dataclasses
import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from core.config import TrainConfig
from core.hub import load_model
from core.models.flow import Flow, FlowConfig, VariationalDequantizer
from core.models.flow_layers import ActNorm, AffineCoupling, FlowSequence, InvertibleConv, Squeeze
from core.train import train

TINY = dict(image_size=8, steps=2, hidden=8)


pytestmark = pytest.mark.usefixtures("one_thread")      # (conftest.py)


def randomised(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter moved off its initial value (zero-initialised convolutions make couplings the identity)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def layer_cases() -> dict[str, tuple[torch.nn.Module, tuple[int, ...], int]]:
    """name -> (layer in float64, input shape (C, H, W), context channels)."""
    torch.manual_seed(0)
    return {"actnorm": (ActNorm(4), (4, 4, 4), 0), "invertible_conv": (InvertibleConv(4), (4, 4, 4), 0),
            "coupling_channel_0": (AffineCoupling(4, 8, "channel", 0), (4, 4, 4), 0),
            "coupling_channel_1": (AffineCoupling(4, 8, "channel", 1), (4, 4, 4), 0),
            "coupling_checkerboard_0": (AffineCoupling(2, 8, "checkerboard", 0), (2, 4, 4), 0),
            "coupling_checkerboard_1": (AffineCoupling(2, 8, "checkerboard", 1), (2, 4, 4), 0),
            "coupling_with_context": (AffineCoupling(2, 8, "checkerboard", 1, context_channels=3), (2, 4, 4), 3),
            "squeeze": (Squeeze(), (2, 4, 4), 0),
            "glow_level": (Flow(FlowConfig(**TINY)).levels[0], (1, 8, 8), 0),
            "realnvp_level": (Flow(FlowConfig(**TINY, kind="realnvp")).levels[0], (1, 8, 8), 0)}


CASES = layer_cases()


def prepared(name: str):
    layer, shape, context_channels = CASES[name]
    layer = randomised(layer.double(), 0.05 if name.endswith("level") else 0.3).eval()    # (deep: keep J well scaled)
    context = torch.randn(1, context_channels, *shape[1:], dtype=torch.float64) if context_channels else None
    return layer, shape, context


@pytest.mark.parametrize("name", CASES)
def test_every_layer_is_inverted_by_its_inverse(name):
    layer, shape, context = prepared(name)
    x = torch.randn(3, *shape, dtype=torch.float64)
    context = None if context is None else context.expand(3, -1, -1, -1)
    with torch.no_grad():
        y, logdet = layer(x, context)
        torch.testing.assert_close(layer.inverse(y, context), x, atol=1e-5, rtol=0)
    assert logdet.shape == (3,)


@pytest.mark.parametrize("name", CASES)
def test_every_log_determinant_is_autograds_brute_force_log_det_jacobian(name):
    layer, shape, context = prepared(name)
    x = torch.randn(1, *shape, dtype=torch.float64)
    forward = lambda flat: layer(flat.view(1, *shape), context)[0].flatten()
    brute = torch.linalg.slogdet(jacobian(forward, x.flatten()))
    assert brute.sign != 0
    torch.testing.assert_close(layer(x, context)[1][0], brute.logabsdet, atol=1e-8, rtol=1e-8)


def test_the_whole_flow_inverts_in_float64():
    for kind in ("glow", "realnvp"):
        torch.manual_seed(0)
        model = randomised(Flow(FlowConfig(**TINY, kind=kind, levels=3)).double(), 0.1).eval()
        y = torch.rand(4, 1, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            latents, log_density = model.encode(y)
            torch.testing.assert_close(model.decode(latents), y, atol=1e-5, rtol=0)
        assert [z.shape[1:] for z in latents] == [(2, 4, 4), (4, 2, 2), (16, 1, 1)]    # 32 + 16 + 16 = 64 dims
        assert torch.isfinite(log_density).all()


def test_actnorm_initialises_to_zero_mean_and_unit_variance_per_channel():
    layer = ActNorm(3).train()
    x = torch.randn(16, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + torch.tensor([1.0, -3.0, 10.0]).view(1, 3, 1, 1)
    y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    before = layer.bias.detach().clone()
    layer(x * 3)                                                   # initialised once, on the first batch only
    assert torch.equal(layer.bias, before) and layer.initialized == 1


def test_lu_convolution_log_determinant_is_slogdet_of_its_weight_times_hw():
    torch.manual_seed(0)
    layer = randomised(InvertibleConv(6).double())
    weight = layer.weight()
    _, logdet = layer(torch.randn(2, 6, 5, 3, dtype=torch.float64))
    torch.testing.assert_close(logdet, torch.linalg.slogdet(weight).logabsdet.expand(2) * 5 * 3)
    lower = layer.lower * layer.lower_mask + torch.eye(6, dtype=torch.float64)
    assert torch.equal(lower.diagonal(), torch.ones(6, dtype=torch.float64))          # L has a unit diagonal


def test_bits_per_dim_of_an_identity_flow_on_a_standard_normal_base_is_the_closed_form(digits):
    """With K = 0 steps the flow is squeezes and splits only (a permutation, log|det| = 0) and every prior starts at
    N(0, I): log p_Y(y) = Σ log N(y − ½; 0, 1). With y = (k + u)/256 and the same u:
    bpd = (−Σ log N(y − ½) + D log 256) / (D log 2)."""
    model = Flow(FlowConfig(image_size=8, steps=0)).eval()
    images = next(digits.batches(16, seed=0, epoch=0)).images
    bpd = model.bits_per_dim(images, generator=torch.Generator().manual_seed(3))
    k = torch.round((images + 1) * 127.5)
    y = (k + torch.rand(k.shape, generator=torch.Generator().manual_seed(3))) / 256
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(y - 0.5).flatten(1).sum(1)
    torch.testing.assert_close(bpd, (-log_p + 64 * math.log(256)) / (64 * math.log(2)))
    assert k.min() >= 0 and k.max() <= 255 and torch.equal(k, k.round())


def test_a_uniform_density_on_the_unit_cube_scores_exactly_8_bits_per_dim(digits):
    """p_Y = 1 on [0, 1]^D puts 256^−D on every 8-bit image: −log₂ P / D = 8."""
    model = Flow(FlowConfig(**TINY)).eval()
    model.log_density = lambda y, labels=None: torch.zeros(len(y))
    images = next(digits.batches(16, seed=0, epoch=0)).images
    torch.testing.assert_close(model.bits_per_dim(images), torch.full((16,), 8.0))


def test_variational_dequantization_log_q_is_the_change_of_variables_of_its_flow():
    """log q(u|x) = log N(ε) − log|det ∂u/∂ε|, with the Jacobian by autograd; u lies in (0, 1)."""
    torch.manual_seed(0)
    dequantizer = randomised(VariationalDequantizer(1, 8, 2).double())
    eps, x = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    u, log_q = dequantizer(eps, x)
    brute = torch.linalg.slogdet(jacobian(lambda e: dequantizer(e.view(1, 1, 4, 4), x)[0].flatten(), eps.flatten()))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() - brute.logabsdet
    torch.testing.assert_close(log_q[0], expected)
    assert 0 < u.min() and u.max() < 1


@pytest.mark.parametrize("options", [dict(), dict(kind="realnvp"), dict(dequantization="variational", dequant_hidden=8),
                                     dict(num_classes=10)])
def test_a_short_training_lowers_bits_per_dim(options, digits, digits_test):
    torch.manual_seed(0)
    model = Flow(FlowConfig(**TINY, **options))
    model.configure_optimizers(TrainConfig(lr=3e-3))
    before = model.eval().test_bits_per_dim(digits_test)
    model.train()
    for step, batch in enumerate(list(digits.batches(64, seed=0, epoch=0))[:10] * 2):
        logs = model.training_step(batch, step)
        assert all(math.isfinite(float(v)) for v in logs.values())
    after = model.eval().test_bits_per_dim(digits_test)
    assert after < before - 0.5, (before, after)


def test_sampling_temperature_interpolation_and_the_class_prior(digits):
    torch.manual_seed(0)
    model = randomised(Flow(FlowConfig(**TINY, num_classes=3)), 0.05).eval()
    samples = model.sample(6, temperature=0.7, seed=1)
    assert samples.shape == (6, 1, 8, 8) and torch.equal(samples, model.sample(6, temperature=0.7, seed=1))
    assert set(((samples + 1) * 127.5).round().unique().tolist()) <= set(range(256))      # 8-bit levels
    torch.testing.assert_close(model.sample(4, temperature=0.0, seed=1), model.sample(4, temperature=0.0, seed=2))
    hot, cold = model.sample(200, 1.0, seed=0), model.sample(200, 0.3, seed=0)
    assert hot.std(0).mean() > cold.std(0).mean()                        # T scales the spread of the latents
    torch.testing.assert_close(model.sample(6, seed=1), samples)     # T defaults to the config's (0.7), not 1
    overflowed = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])     # a decode that blew up
    torch.testing.assert_close(Flow.to_images(overflowed), torch.tensor([-1.0, 1.0, -1.0, 128 / 127.5 - 1]))
    assert not torch.equal(model.sample(6, seed=1), model.sample(6, temperature=1.0, seed=1))
    with torch.no_grad():
        model.class_mean.weight[1] += 2.0                                # a class's learned mean moves its samples
    assert not torch.equal(model.sample(2, 0.0, labels=torch.tensor([0, 0])),
                           model.sample(2, 0.0, labels=torch.tensor([1, 1])))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        model.sample(2, labels=torch.tensor([0, 3]))
    images = next(digits.batches(2, seed=0, epoch=0)).images
    path = model.interpolate(images[0], images[1], steps=5, label=1)
    assert path.shape == (5, 1, 8, 8)
    torch.testing.assert_close(path[[0, -1]], images)                    # the endpoints are the images themselves


def test_training_run_round_trips_through_the_hub_folder(tiny_config, digits_test):
    cfg = dataclasses.replace(tiny_config, eval_size=32)
    torch.manual_seed(0)
    model = Flow(FlowConfig(**TINY))
    run = train(model, cfg, "flow")
    loaded = load_model(run / "model")
    assert isinstance(loaded, Flow) and all(layer.initialized == 1 for layer in loaded.modules()
                                            if isinstance(layer, ActNorm))
    torch.testing.assert_close(loaded.sample(3, seed=2), model.eval().sample(3, seed=2))
    images = next(digits_test.batches(8, seed=0, epoch=0)).images
    generator = lambda: torch.Generator().manual_seed(0)
    torch.testing.assert_close(loaded.bits_per_dim(images, generator=generator()),
                               model.bits_per_dim(images, generator=generator()))
    evaluation = json.loads((run / "model" / "eval.json").read_text())
    assert 0 < evaluation["bits_per_dim"] < 9 and "fid" in evaluation


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="divisible by 2"):
        Flow(FlowConfig(image_size=28, levels=3))
    with pytest.raises(ValueError, match="channel mask needs an even"):
        AffineCoupling(3, 8, "channel")
    with pytest.raises(ValueError, match="needs labels"):
        Flow(FlowConfig(**TINY, num_classes=2)).bits_per_dim(torch.zeros(1, 1, 8, 8))
    assert isinstance(Flow(FlowConfig(**TINY)).levels[0], FlowSequence)
