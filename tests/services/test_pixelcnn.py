"""core/services/pixelcnn.py: what the PixelCNN tab answers in-process, on a small class-conditional PixelCNN with
random weights (shapes, seeds, the streamed rows and the class posterior need no training): requests checked, the
stream's rows drawn in order with a fraction that rises to 1, the cost refused before anything loads."""
import math

import numpy as np
import pytest
import torch

from conftest import ROOT
from core import requests as R
from core.models.pixelcnn import PixelCNN, PixelCNNConfig
from core.services import pixelcnn as P
from core.services.pixelcnn import PixelCNNService
from core.services.pictures import SCALE

SNEAKER = str(ROOT / "apps" / "examples" / "7-sneaker.png")
SIDE = lambda cells: (cells * 30 + 2) * SCALE          # a grid of `cells` 28-pixel images with 2-pixel gaps
CELL = lambda picture, row, col: np.asarray(picture.convert("L"))[            # one 28-pixel cell, enlarged
    (2 + 30 * row) * SCALE:(30 + 30 * row) * SCALE, (2 + 30 * col) * SCALE:(30 + 30 * col) * SCALE]


pytestmark = pytest.mark.usefixtures("one_thread")      # (conftest.py)


def random_pixelcnn(num_classes: int = 10) -> PixelCNN:
    """A small Gated PixelCNN at 28x28 whose class biases are large enough to tell the classes apart."""
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig(hidden=8, layers=2, num_classes=num_classes))
    if num_classes:
        with torch.no_grad():
            for layer in model.network.layers:
                layer.class_bias.weight.normal_(0, 2)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def service():
    return PixelCNNService(random_pixelcnn(), "random")


def last(frames):
    return list(frames)[-1][1]


def test_samples_stream_row_by_row_and_end_in_the_grid(service):
    frames = list(service.sample(4, 0, 1.0, -1))
    fractions = [fraction for fraction, _ in frames]
    assert len(frames) == 28 and fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 1 / 28
    assert [f[1][0].split(" · ")[0] for f in frames[:2]] == ["row 1/28", "row 2/28"]
    assert frames[-1][1][0].startswith("4 images, 3,136 pixels drawn one at a time in ")
    assert all(outputs[1].size == (SIDE(2), SIDE(2)) for _, outputs in frames)
    early, final = CELL(frames[2][1][1], 0, 0), CELL(frames[-1][1][1], 0, 0)
    assert (early[3 * SCALE:] == 128).all() and not (final[3 * SCALE:] == 128).all()   # rows below row 3 still grey
    assert np.array_equal(early[:3 * SCALE], final[:3 * SCALE])                          # drawn rows stay


def test_samples_are_seeded_and_classes_matter(service):
    grid = lambda seed, label=-1, t=1.0: np.asarray(last(service.sample(2, seed, t, label))[1])
    assert np.array_equal(grid(3), grid(3)) and not np.array_equal(grid(3), grid(4))
    assert not np.array_equal(grid(3, 2), grid(3, 7)) and not np.array_equal(grid(3, -1, 0.5), grid(3, -1, 1.2))


@pytest.mark.parametrize("method, arguments, field, message", [
    ("sample", (65, 0, 1.0), "n", "n must be a whole number from 1 to 64"),
    ("sample", (0, 0, 1.0), "n", "n must be a whole number from 1 to 64"),
    ("sample", (4, -1, 1.0), "seed", "seed must be a whole number from 0"),
    ("sample", (4, 0, 1.3), "temperature", "temperature must be a number from 0.5 to 1.2"),
    ("sample", (4, 0, 0.4), "temperature", "temperature must be a number from 0.5 to 1.2"),
    ("sample", (4, 0, math.nan), "temperature", "temperature must be a number from 0.5 to 1.2"),
    ("sample", (4, 0, 1.0, 10), "label", "label must be a whole number from -1 to 9"),
    ("complete", (SNEAKER, 29, 4, 0, 1.0), "known_rows", "known_rows must be a whole number from 0 to 28"),
    ("complete", (SNEAKER, 14, 9, 0, 1.0), "per_image", "per_image must be a whole number from 1 to 8"),
    ("complete", (SNEAKER, 14, 4, 0, 2.0), "temperature", "temperature must be a number from 0.5 to 1.2"),
    ("complete", (None, 14, 4, 0, 1.0), None, "no image"),
    ("complete", ("/etc/passwd", 14, 4, 0, 1.0), None, "that file was not uploaded to this app"),
])
def test_bad_requests_are_refused_naming_the_field(service, method, arguments, field, message):
    with pytest.raises(R.RequestError, match=message) as caught:
        next(getattr(service, method)(*arguments))
    assert caught.value.field == field


def test_the_cost_is_checked_before_anything_loads(monkeypatch):
    monkeypatch.setattr(PixelCNNService, "load", lambda spec: pytest.fail("admission loaded a model"))
    assert PixelCNNService.work("someone/pixelcnn", 64, 0, 1.0, -1) == 64 * 784 == P.MAX_WORK   # not downloaded
    for arguments, message in [(("someone/pixelcnn", 65, 0, 1.0), "n must be"),
                               (("/etc/passwd", 4, 0, 1.0), "model must"),
                               (("someone/pixelcnn", 4, 0, 9.0), "temperature must")]:
        with pytest.raises(R.RequestError, match=message):
            PixelCNNService.work(*arguments)
    big = PixelCNNService(PixelCNN(PixelCNNConfig(hidden=4, layers=1, image_size=64)), "big")   # a Hub model
    with pytest.raises(R.RequestError, match="images x pixels must be at most 50,176.*13 x 4,096") as caught:
        next(big.sample(13, 0, 1.0))
    assert caught.value.field == "n"


def test_completions_keep_the_known_rows_and_grey_the_rest_of_the_original(service):
    frames = list(service.complete(SNEAKER, 14, 3, 0, 1.0, 7))
    fractions = [fraction for fraction, _ in frames]
    assert len(frames) == 14 and fractions == sorted(fractions) and fractions[-1] == 1.0
    note, picture = frames[-1][1]
    assert picture.size == (SIDE(4), SIDE(1)) and note.startswith("class: sneaker · ")
    original = np.asarray(service.image_of(SNEAKER)[0].add(1).mul(127.5).round())      # (28, 28) levels
    top = slice(0, 14 * SCALE)
    for k in range(1, 4):            # every completion keeps the top 14 rows of the image
        assert np.abs(CELL(picture, 0, k)[top][::SCALE, ::SCALE] - original[:14]).max() <= 1
    greyed = CELL(picture, 0, 0)[14 * SCALE:][::SCALE, ::SCALE]
    assert greyed.min() >= 70 and greyed.max() <= 185            # grey ± 0.4 of the image, not the image itself
    assert not np.array_equal(CELL(picture, 0, 1), CELL(picture, 0, 2))
    again = last(service.complete(SNEAKER, 14, 3, 0, 1.0, 7))[1]
    assert np.array_equal(np.asarray(again), np.asarray(picture))


def test_any_class_draws_it_from_the_posterior_of_the_known_rows(service):
    """p(y | known rows) ∝ p(known rows | y): checked against the model's exact per-class bits/dim when every row is
    known, and uniform when none is."""
    x = service.image_of(SNEAKER)
    bits = torch.stack([service.model.bits_per_dim(x[None], torch.tensor([y])) for y in range(10)])[:, 0]
    expected = torch.softmax(-bits * 784 * math.log(2), 0)
    torch.testing.assert_close(service.class_posterior(x, 28), expected, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(service.class_posterior(x, 0), torch.full((10,), 0.1))
    note = last(service.complete(SNEAKER, 20, 2, 0, 1.0, -1))[0]
    assert note.startswith("p(y | top 20 rows): ") and "; drawn: " in note
    unconditional = PixelCNNService(random_pixelcnn(0), "random-unconditional")
    assert last(unconditional.complete(SNEAKER, 14, 1, 0, 1.0, -1))[0].startswith("unconditional model · ")
    with pytest.raises(R.RequestError, match="this model is unconditional"):
        next(unconditional.sample(2, 0, 1.0, 3))


def test_the_class_picker_and_temperature_follow_the_model(monkeypatch, tmp_path):
    from core.services import base
    (tmp_path / "config.json").write_text('{"_class_name": "PixelCNN", "num_classes": 10, "temperature": 0.9}')
    monkeypatch.setattr(base, "resolve", lambda spec, allow_local: tmp_path)
    assert PixelCNNService.follow("someone/pixelcnn") == {"label": {"interactive": True},
                                                         "temperature": {"value": 0.9}}
    (tmp_path / "config.json").write_text('{"_class_name": "PixelCNN", "num_classes": 0, "temperature": 5}')
    assert PixelCNNService.follow("someone/plain") == {"label": {"interactive": False, "value": -1},
                                                      "temperature": {"value": 1.2}}


def test_compression_reports_the_exact_likelihood_and_a_code_that_decodes(service):
    """A random model codes worse than raw pixels (near 8 bits/dim): what matters here is that the table says so
    from the real numbers; the shipped model's gain is on its card."""
    text, seen = service.compress(SNEAKER)
    x = service.image_of(SNEAKER)
    bits = float(service.model.bits_per_dim(x[None])[0])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in text.splitlines()[2:]}
    assert rows["ideal: −log₂ p(x) under the model (exact)"] == [f"{bits * 98:,.0f}", f"{bits:.2f} |"]
    coder = next(value for name, value in rows.items() if name.startswith("the model's range coder"))
    assert "decoded back bit for bit" in text and abs(float(coder[1].rstrip(" |")) - bits) < 0.1
    picture = P.Image.fromarray(np.asarray(x[0].add(1).mul(127.5).round(), dtype=np.uint8), "L")
    assert rows["PNG, Pillow optimize=True"][0] == f"{len(P.encoded(picture, 'PNG')):,}"
    assert rows["raw 8-bit pixels"] == ["784", "8.00 |"] and seen.size == (28 * SCALE, 28 * SCALE)
