"""core/services/likelihood.py: what the Likelihood tab answers in-process on the shipped glow and pixelcnn: each
figure is the model's own bits/dim and S = bits/dim − PNG bits/dim of the image, placed among the test images'
percentiles that the model keeps; the MNIST example shows the paradox (its bits/dim pass, its S is flagged), noise is
flagged by every score, and a model without percentiles is left out."""
import re

import pytest
import torch

from conftest import ROOT
from core import requests as R
from core.likelihood import pixel_levels, png_bits_per_dim, share_below
from core.services import likelihood as L
from core.services.likelihood import LikelihoodService

EXAMPLES = ROOT / "apps" / "examples" / "likelihood"
MODELS = ("glow", "vae-logistic", "pixelcnn")     # the shipped likelihood models, in manifest order
ROW = re.compile(r"\| `(\S+)` \((exact|bound)\) \| (bits/dim|S): [^|]+ \| (-?\d+\.\d+) \| (\d+)% \| ([^|]+) \|")

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(text: str) -> dict[tuple[str, str], tuple[float, int, str]]:
    """{(model, score): (value, % of test images below, verdict)} from the tab's table."""
    return {(m[0], m[2]): (float(m[3]), int(m[4]), m[5].strip()) for m in ROW.findall(text)}


def test_every_figure_is_the_models_own_and_the_mnist_digit_shows_the_paradox():
    image = str(EXAMPLES / "mnist-digit-3.png")
    text, picture = LikelihoodService.judge(image)
    found = rows(text)
    assert {model for model, _ in found} == set(MODELS) and len(found) == 2 * len(MODELS)
    x = R.to_model_input(R.read_image(image))[0][None]
    png = float(png_bits_per_dim(pixel_levels(x))[0])
    assert f"PNG: {png:.2f} bits/dim." in text
    for model in MODELS:
        bits = float(L.image_bits(L.FAMILIES[L.read_manifest()[model]["family"]].load(model).model, x)[0])
        reference = L.reference(model)
        assert found[model, "bits/dim"][0] == pytest.approx(bits, abs=1e-3)
        assert found[model, "S"][0] == pytest.approx(bits - png, abs=1e-3)
        assert found[model, "bits/dim"][1] == round(100 * share_below(reference["bits_per_dim"], bits))
        # the paradox: a digit's likelihood looks like a garment's, its likelihood against PNG's does not
        assert found[model, "bits/dim"][2].startswith("typical") and found[model, "S"][2] == "**unlike Fashion-MNIST**"
    assert picture.size == (260 + 2 * 560, len(MODELS) * 260)   # the image, then a row of two histograms per model


def test_noise_is_flagged_by_every_score():
    text, _ = LikelihoodService.judge(str(EXAMPLES / "noise.png"))
    found = rows(text)
    assert len(found) == 2 * len(MODELS) and all(v[1] == 100 and v[2] == "**unlike Fashion-MNIST**" for v in found.values())
    assert all(value > 8 for (model, score), (value, _, _) in found.items() if score == "bits/dim")


def test_a_model_without_test_percentiles_is_left_out_and_none_is_an_error(monkeypatch):
    kept = L.reference
    monkeypatch.setattr(L, "reference", lambda spec: None if spec != "glow" else kept(spec))
    assert LikelihoodService.models() == [("glow", "flow")]
    assert set(rows(LikelihoodService.judge(str(EXAMPLES / "noise.png"))[0])) == {("glow", "bits/dim"), ("glow", "S")}
    monkeypatch.setattr(L, "reference", lambda spec: None)
    with pytest.raises(R.RequestError, match="no likelihood model here keeps its test images' scores"):
        LikelihoodService.judge(str(EXAMPLES / "noise.png"))


@pytest.mark.parametrize("upload, message", [(None, "no image"), ("", "no image"),
                                             ("/etc/passwd", "upload a PNG")])
def test_bad_uploads_are_refused(upload, message):
    with pytest.raises(R.RequestError, match=message):
        LikelihoodService.judge(upload)


def test_the_verdicts_read_the_shares():
    assert L.verdict("bits_per_dim", 0.96) == L.verdict("complexity", 0.96) == "**unlike Fashion-MNIST**"
    assert L.verdict("bits_per_dim", 0.04).startswith("typical: *more* likely")
    assert L.verdict("complexity", 0.04) == L.verdict("bits_per_dim", 0.5) == "typical"
    assert torch.tensor(L.reference("glow")["bits_per_dim"]).diff().min() >= 0
