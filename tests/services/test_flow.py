"""core/services/flow.py: what the Flow tab answers in-process. The maths runs on a small flow with random weights
(exact inversion and a temperature need no training); the shipped glow is checked for what training adds."""
import math

import numpy as np
import pytest
import torch

from conftest import ROOT
from core import requests as R
from core.models.flow import Flow, FlowConfig
from core.services.flow import MAX_TEMPERATURE, MIN_TEMPERATURE, TEMPERATURE, FlowService
from core.services.pictures import SCALE

SNEAKER, BOOT = (str(ROOT / "apps" / "examples" / name) for name in ("7-sneaker.png", "9-ankle-boot.png"))
SIDE = lambda cells: (cells * 30 + 2) * SCALE          # a grid of `cells` 28-pixel images with 2-pixel gaps


def random_flow(**options) -> Flow:
    """A two-level Glow at 28x28: ActNorm initialised on one batch of noise images, then every parameter moved off
    its initial value (zero-initialised convolutions would make every coupling and prior the identity)."""
    torch.manual_seed(0)
    model = Flow(FlowConfig(steps=1, hidden=8, **options))
    labels = torch.arange(16) % model.config.num_classes if model.config.num_classes else None
    model.log_density(torch.rand(16, 1, 28, 28), labels)         # training mode: ActNorm's data-dependent init
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def service():
    return FlowService(random_flow(), "random")


def pixels(picture) -> np.ndarray:
    return np.asarray(picture.convert("L"))


def test_samples_fill_a_grid_and_temperature_zero_decodes_the_prior_means(service):
    assert service.sample(16, 0, 0.7).size == (SIDE(4), SIDE(4)) and service.sample(1, 0, 0.7).size == (SIDE(1),) * 2
    assert np.array_equal(pixels(service.sample(4, 1, 0.0)), pixels(service.sample(4, 2, 0.0)))   # z = μ: no noise
    assert not np.array_equal(pixels(service.sample(4, 1, 0.7)), pixels(service.sample(4, 2, 0.7)))
    assert np.array_equal(pixels(service.sample(4, 1, 0.7)), pixels(service.sample(4, 1, 0.7)))
    service.sample(2, 0, MAX_TEMPERATURE), service.sample(2, 0, MIN_TEMPERATURE)        # both ends are allowed
    assert (TEMPERATURE.low, TEMPERATURE.high) == (MIN_TEMPERATURE, MAX_TEMPERATURE)    # the slider's bounds


@pytest.mark.parametrize("method, arguments, field, message", [
    ("sample", (65, 0, 0.7), "n", "n must be a whole number from 1 to 64"),
    ("sample", (4, -1, 0.7), "seed", "seed must be a whole number from 0"),
    ("sample", (4, 0, MAX_TEMPERATURE + 0.05), "temperature", "temperature must be a number from 0 to 1.2"),
    ("sample", (4, 0, -0.1), "temperature", "temperature must be a number from 0 to 1.2"),
    ("sample", (4, 0, math.nan), "temperature", "temperature must be a number from 0 to 1.2"),
    ("sample", (4, 0, "hot"), "temperature", "temperature must be a number"),
    ("sample", (4, 0, 0.7, 3), None, "this model is unconditional: label must be -1"),
    ("interpolate", (SNEAKER, BOOT, 1), "steps", "steps must be a whole number from 2 to 32"),
    ("interpolate", (SNEAKER, BOOT, 33), "steps", "steps must be a whole number from 2 to 32"),
    ("interpolate", (SNEAKER, None, 8), None, "no image"),
    ("latents", ("/etc/passwd",), None, "that file was not uploaded to this app"),
])
def test_bad_requests_are_refused_naming_the_field(service, method, arguments, field, message):
    with pytest.raises(R.RequestError, match=message) as caught:
        getattr(service, method)(*arguments)
    assert caught.value.field == field


def test_interpolation_starts_and_ends_at_the_uploads(service):
    """A flow is invertible: decoding the latents of A and of B gives A and B back (bin centres quantise back to
    the same 8-bit levels), and the path between them is neither."""
    path = service.walk(SNEAKER, BOOT, 6)
    a, b = service.image_of(SNEAKER), service.image_of(BOOT)
    assert path.shape == (6, 1, 28, 28)
    torch.testing.assert_close(path[0], a, atol=1e-4, rtol=0)
    torch.testing.assert_close(path[-1], b, atol=1e-4, rtol=0)
    assert (path[2] - a).abs().max() > 0.1 and (path[2] - b).abs().max() > 0.1
    picture, note = service.interpolate(SNEAKER, BOOT, 6)
    assert picture.size == (SIDE(6), SIDE(1)) and note.startswith("bits/dim: A ")
    bits = service.bits_per_dim(torch.stack([a, b]), None)
    assert f"A {bits[0]:.3f}, B {bits[1]:.3f}" in note and bits == service.bits_per_dim(torch.stack([a, b]), None)


def test_latents_are_whitened_by_their_priors_a_row_per_scale(service):
    model = service.model
    x = service.image_of(SNEAKER)
    whitened = model.whitened_latents(x[None])
    assert [tuple(eps.shape) for eps in whitened] == [(1, 2, 14, 14), (1, 8, 7, 7)]
    top = (model.latents_of(x[None])[-1] - model.top_mean) * (-model.top_log_std).exp()
    torch.testing.assert_close(whitened[-1], top)
    picture, note = service.latents(SNEAKER)
    assert picture.size == (SIDE(8), SIDE(1) * 2) and note.startswith("bits/dim ") and "(2, 14, 14), (8, 7, 7)" in note


def test_a_class_conditional_flow_needs_a_class_to_score_an_image():
    conditional = FlowService(random_flow(num_classes=10), "random-conditional")
    with pytest.raises(R.RequestError, match="this flow is class-conditional") as caught:
        conditional.interpolate(SNEAKER, BOOT, 4, -1)
    assert caught.value.field == "label"
    assert conditional.interpolate(SNEAKER, BOOT, 4, 7)[0].size == (SIDE(4), SIDE(1))
    assert conditional.sample(4, 0, 0.7, 3).size == conditional.sample(4, 0, 0.7, -1).size == (SIDE(2), SIDE(2))
    with pytest.raises(R.RequestError, match="label must be a whole number from -1 to 9"):
        conditional.sample(4, 0, 0.7, 10)


def test_the_shipped_glow_starts_at_its_own_temperature_and_explains_a_test_image():
    """The slider starts at the config's T; a trained flow gives a test image far fewer bits/dim than a random one
    (2.7 against 8.8 for the sneaker) and whitens it to noise of about unit variance (an easy image, mostly black
    background, to somewhat less: 0.66 here)."""
    assert FlowService.follow("glow") == {"label": {"interactive": False, "value": -1}, "temperature": {"value": 0.7}}
    glow, untrained = FlowService.load("glow"), FlowService(random_flow(), "random")
    x = glow.image_of(SNEAKER)[None]
    assert glow.bits_per_dim(x, None)[0] < 4 < 8 < untrained.bits_per_dim(x, None)[0]
    rms = [float(eps.pow(2).mean().sqrt()) for eps in glow.model.whitened_latents(x)]
    assert all(0.5 < r < 1.5 for r in rms), rms
