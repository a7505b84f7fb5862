"""core/services/jem.py: what the JEM tab answers in-process, on the shipped jem and on a small JEM with random
weights: requests checked and costed before anything loads, the stream's frames in order ending in the model's own
samples, and an upload's class probabilities, energy and verdict against the test energies the model keeps."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from core import requests as R
from core.models.energy import JEM, JEMConfig
from core.services import jem as J
from core.services.jem import JEMService
from core.services.pictures import SCALE, grid_image

SNEAKER = str(ROOT / "apps" / "examples" / "7-sneaker.png")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = JEM(JEMConfig(width=4, hidden=8, buffer_size=4, sample_steps=3)).eval()
    return JEMService(model, "small")


@pytest.fixture(scope="module")
def shipped():
    return JEMService.load("jem")


def test_the_stream_shows_the_chains_in_order_and_ends_in_the_models_samples(small):
    frames = list(small.sgld(3, 80, 4, 2))
    fractions = [fraction for fraction, _ in frames]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(frames) == 40
    assert frames[0][1][0].startswith("step 2/80 on E(x, pullover)")
    assert frames[-1][1][0].startswith("3 chains on E(x, pullover), 80 steps in")
    expected = small.model.sample(3, 4, torch.full((3,), 2), 80)
    assert np.array_equal(np.asarray(frames[-1][1][1]), np.asarray(grid_image(expected)))
    unconditional = list(small.sgld(1, 2, 0, -1))
    assert len(unconditional) == 2 and "on E(x)," in unconditional[-1][1][0]


@pytest.mark.parametrize("n, steps, seed, field", [(0, 10, 0, "n"), (65, 1, 0, "n"), (1, 0, 0, "steps"),
                                                   (1, J.MAX_STEPS + 1, 0, "steps"), (1, 1, -1, "seed"),
                                                   (16, 201, 0, "n"), ("2", 10, 0, "n")])
def test_requests_out_of_bounds_are_refused_by_admission_without_loading(n, steps, seed, field):
    with pytest.raises(R.RequestError) as info:
        JEMService.work("jem", n, steps, seed, 0)
    assert info.value.field == field
    assert JEMService.work("jem", 16, 200, 0, 0) == J.MAX_WORK
    with pytest.raises(R.RequestError):
        JEMService.work("/etc/passwd", 1, 1, 0, 0)


def test_an_upload_gets_its_class_probabilities_energy_and_verdict(small):
    x = R.to_model_input(R.read_image(SNEAKER), 28)[0][None]
    with pytest.raises(R.RequestError, match="never evaluated"):
        small.judge(SNEAKER)
    energy = float(small.model.energy(x)[0].detach())
    small.model.test_energy.copy_(torch.linspace(energy - 2, energy - 1, 101))        # every test image lower
    verdict, scores, picture = small.judge(SNEAKER)
    assert f"E(x) = {energy:.2f}" in verdict and "unlike Fashion-MNIST" in verdict and "100%" in verdict
    with torch.no_grad():
        assert abs(sum(scores.values()) - float(small.model(x).softmax(1).topk(3).values.sum())) < 1e-6
    small.model.test_energy.copy_(torch.linspace(energy - 1, energy + 1, 101))        # in the middle
    verdict, _, picture = small.judge(SNEAKER)
    assert "typical" in verdict and re.search(r"above about (49|50|51)%", verdict)
    assert picture.height == 260 and picture.width == 260 + 560


def test_the_shipped_model_knows_a_sneaker_and_flags_noise(shipped, tmp_path, monkeypatch):
    verdict, scores, _ = shipped.judge(SNEAKER)
    assert max(scores, key=scores.get) == "sneaker" and "typical" in verdict
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))                    # as if uploaded
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(noise)
    verdict, _, _ = shipped.judge(str(noise))
    assert "unlike Fashion-MNIST" in verdict
