"""core/services/vqvae.py: what the VQ-VAE tab answers in-process, on the shipped vqvae (64 samples take 0.2 s) and,
where training is what is checked, beside a small VQ-VAE with random weights: requests checked, the stream's code
rows in order ending in the model's own samples, seeds and classes, the cost refused before anything loads, and a
reconstruction's MSE, codes and bits."""
import math
import re

import numpy as np
import pytest
import torch

from conftest import ROOT
from core import requests as R
from core.models.vqvae import VQVAE, VQVAEConfig
from core.services import vqvae as V
from core.services.pictures import SCALE, grid_image
from core.services.vqvae import VQVAEService

SNEAKER = str(ROOT / "apps" / "examples" / "7-sneaker.png")
SIDE = lambda cells: (cells * 30 + 2) * SCALE          # a grid of `cells` 28-pixel images with 2-pixel gaps
CELL = lambda picture, row, col: np.asarray(picture.convert("L"))[            # one 28-pixel cell, enlarged
    (2 + 30 * row) * SCALE:(30 + 30 * row) * SCALE, (2 + 30 * col) * SCALE:(30 + 30 * col) * SCALE]


pytestmark = pytest.mark.usefixtures("one_thread")      # (conftest.py)


@pytest.fixture(scope="module")
def service():
    return VQVAEService.load("vqvae")


def random_vqvae(**options) -> VQVAE:
    torch.manual_seed(0)
    config = VQVAEConfig(stage="prior", codes=16, code_dim=4, width=8, residual_blocks=0, prior_hidden=8,
                         prior_layers=2, prior_embed=4, **options)
    return VQVAE(config).eval().requires_grad_(False)


def last(frames):
    return list(frames)[-1][1]


def mse_of(note: str) -> float:
    return float(re.search(r"MSE \*\*([\d.]+)\*\*", note).group(1))


def test_samples_stream_code_row_by_row_and_end_in_the_models_samples(service):
    frames = list(service.sample(4, 5, 0.9, -1))
    fractions = [fraction for fraction, _ in frames]
    assert len(frames) == 7 and fractions == sorted(fractions) and fractions == [(k + 1) / 7 for k in range(7)]
    assert [f[1][0] for f in frames[:2]] == ["code row 1/7", "code row 2/7"]
    assert frames[-1][1][0] == "4 images: 196 codes drawn one at a time, decoded"
    assert all(outputs[1].size == (SIDE(2), SIDE(2)) for _, outputs in frames)
    early = CELL(frames[1][1][1], 0, 0)                                     # two code rows: 8 pixel rows drawn
    assert (early[8 * SCALE:] == 128).all() and not (early[:8 * SCALE] == 128).all()
    expected = service.model.sample(4, 5, service.model.default_labels(4), 0.9)
    assert np.array_equal(np.asarray(frames[-1][1][1]), np.asarray(grid_image(expected)))


def test_samples_are_seeded_and_the_class_matters(service):
    grid = lambda seed, label=-1, t=1.0: np.asarray(last(service.sample(8, seed, t, label))[1])
    assert np.array_equal(grid(3), grid(3)) and not np.array_equal(grid(3), grid(4))
    assert not np.array_equal(grid(3, 1), grid(3, 7)) and not np.array_equal(grid(3, -1, 0.5), grid(3, -1, 1.5))
    trousers, sneakers = (service.model.sample(16, 0, torch.full((16,), k)) for k in (1, 7))
    # a trouser is tall and narrow, a sneaker low and wide: the rows each class fills differ
    filled_rows = lambda images: (images.mean(3) > -0.9).float().mean().item()
    assert filled_rows(trousers) > filled_rows(sneakers) + 0.2


@pytest.mark.parametrize("method, arguments, field, message", [
    ("sample", (65, 0, 1.0), "n", "n must be a whole number from 1 to 64"),
    ("sample", (0, 0, 1.0), "n", "n must be a whole number from 1 to 64"),
    ("sample", (4, -1, 1.0), "seed", "seed must be a whole number from 0"),
    ("sample", (4, 0, 1.6), "temperature", "temperature must be a number from 0.5 to 1.5"),
    ("sample", (4, 0, 0.4), "temperature", "temperature must be a number from 0.5 to 1.5"),
    ("sample", (4, 0, math.nan), "temperature", "temperature must be a number from 0.5 to 1.5"),
    ("sample", (4, 0, 1.0, 10), "label", "label must be a whole number from -1 to 9"),
    ("reconstruct", (SNEAKER, 10), "label", "label must be a whole number from -1 to 9"),
    ("reconstruct", (None,), None, "no image"),
    ("reconstruct", ("/etc/passwd",), None, "that file was not uploaded to this app"),
])
def test_bad_requests_are_refused_naming_the_field(service, method, arguments, field, message):
    with pytest.raises(R.RequestError, match=message) as caught:
        result = getattr(service, method)(*arguments)
        if method == "sample":
            next(result)                                   # a stream checks its request before its first frame
    assert caught.value.field == field


def test_the_cost_is_checked_before_anything_loads(monkeypatch):
    monkeypatch.setattr(VQVAEService, "load", lambda spec: pytest.fail("admission loaded a model"))
    assert VQVAEService.work("someone/vqvae", 64, 0, 1.0, -1) == 64 * 49 == V.MAX_WORK      # not downloaded
    for arguments, message in [(("someone/vqvae", 65, 0, 1.0), "n must be"), (("/etc/passwd", 4, 0, 1.0), "model must"),
                               (("someone/vqvae", 4, 0, 9.0), "temperature must")]:
        with pytest.raises(R.RequestError, match=message):
            VQVAEService.work(*arguments)
    big = VQVAEService(random_vqvae(image_size=64), "big")                  # a Hub model: a 16x16 code grid
    with pytest.raises(R.RequestError, match="images x codes must be at most 3,136.*13 x 256") as caught:
        next(big.sample(13, 0, 1.0))
    assert caught.value.field == "n"
    frames = list(big.sample(12, 0, 1.0))                                  # 12 x 256 = 3,072 fits
    assert len(frames) == 16 and frames[-1][1][0] == "12 images: 3,072 codes drawn one at a time, decoded"


def test_a_reconstruction_shows_the_image_its_reconstruction_and_its_codes(service):
    note, both, codes = service.reconstruct(SNEAKER)
    x = service.image_of(SNEAKER)
    grid = service.model.encode(x[None])[1]
    reconstruction = service.model.decode(grid)[0]
    assert both.size == (SIDE(2), SIDE(1)) and codes.size == (7 * V.CODE_CELL, 7 * V.CODE_CELL)
    assert np.array_equal(np.asarray(both), np.asarray(grid_image(torch.stack([x, reconstruction]), 2)))
    assert mse_of(note) == pytest.approx(float((reconstruction - x).pow(2).mean()), abs=1e-4)
    assert f"**{len(grid.unique())}** distinct codes of 256 in the 7x7 grid" in note
    middle = lambda row, col: codes.getpixel(((col + 0.5) * V.CODE_CELL, (row + 0.1) * V.CODE_CELL))
    colours = V.code_colours(256)                                  # each cell in its code's colour
    assert all(middle(r, c) == colours[int(grid[0, r, c])] for r in range(7) for c in range(7))


def test_the_shipped_model_reconstructs_and_a_random_one_does_not(service):
    """Training is what makes the reconstruction close: the shipped model's MSE on every example image is far
    below 0.03 (its test-set mean is 0.020); the untrained VQ-VAE's is far above."""
    examples = sorted(str(p) for p in (ROOT / "apps" / "examples").glob("*.png"))
    shipped = [mse_of(service.reconstruct(path)[0]) for path in examples]
    untrained = VQVAEService(random_vqvae(), "random")
    random = [mse_of(untrained.reconstruct(path)[0]) for path in examples]
    assert len(examples) == 10 and max(shipped) < 0.03 < 0.1 < min(random), (shipped, random)


def test_bits_are_the_priors_bits_per_code(service):
    x = service.image_of(SNEAKER)
    codes = service.model.encode(x[None])[1]
    per_class = [float(service.model.bits_per_code(codes, torch.tensor([y]))) for y in range(10)]
    bits, prior = service.bits_per_code(codes, 7)
    assert bits == per_class[7] and prior == "p(k | sneaker)"
    note = service.reconstruct(SNEAKER, 7)[0]
    assert f"**{bits:.2f} bits per code** (uniform: 8), so 49 x {bits:.2f} = **{49 * bits:,.0f} bits**" in note
    assert "against 784 x 8 = 6,272 bits of raw pixels" in note
    mixture, prior = service.bits_per_code(codes, -1)                     # −log₂((1/10) Σ_y 2^(−49 b_y)) / 49
    expected = -math.log2(sum(2 ** (-49 * b) for b in per_class) / 10) / 49
    assert mixture == pytest.approx(expected, rel=1e-6) and prior.startswith("p(k) = (1/10)")
    assert min(per_class) <= mixture <= min(per_class) + math.log2(10) / 49
    assert per_class[7] == min(per_class)                          # the prior knows a sneaker's codes best
    unconditional = VQVAEService(random_vqvae(num_classes=0), "random-unconditional")
    codes = unconditional.model.encode(x[None])[1]
    assert unconditional.bits_per_code(codes, -1) == (float(unconditional.model.bits_per_code(codes, None)), "p(k)")
    with pytest.raises(R.RequestError, match="this model is unconditional"):
        unconditional.reconstruct(SNEAKER, 3)


def test_the_class_picker_and_temperature_follow_the_model(monkeypatch, tmp_path):
    from core.services import base
    (tmp_path / "config.json").write_text('{"_class_name": "VQVAE", "num_classes": 10, "temperature": 0.8}')
    monkeypatch.setattr(base, "resolve", lambda spec, allow_local: tmp_path)
    assert VQVAEService.follow("someone/vqvae") == {"label": {"interactive": True}, "temperature": {"value": 0.8}}
    (tmp_path / "config.json").write_text('{"_class_name": "VQVAE", "num_classes": 0, "temperature": 2}')
    assert VQVAEService.follow("someone/plain") == {"label": {"interactive": False, "value": -1},
                                                   "temperature": {"value": 1.5}}
