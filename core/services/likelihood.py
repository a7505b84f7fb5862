"""The Likelihood tab: an image's bits/dim under every likelihood model we ship, where it falls among the test
images' figures, and two out-of-distribution verdicts, by the likelihood alone and by the likelihood minus the
image's complexity (core/likelihood.py: S of Serrà et al. 2020). On an MNIST digit the first is fooled, the paradox
of Nalisnick et al. 2019, and the second is not.

Each model's folder keeps its test images' scores as percentiles (REFERENCE, written by
bench/likelihood_reference.py); a model without them is not listed (a VAE only has them if its decoder is a
distribution over the 8-bit levels). An answer takes one forward pass per model (ten for the class-conditional
PixelCNN's p(x) = Σ_y p(x | y)/10; k decoder passes for a VAE's importance-weighted bound), well under a second, so
it has no admission.
"""
from __future__ import annotations

import json

import torch
from PIL import Image
from torch import Tensor

from core.checkpoint import CheckpointError
from core.hub import read_manifest, resolve
from core.images import histogram_plot
from core.likelihood import pixel_levels, png_bits_per_dim, share_below
from core.requests import RequestError, read_image, to_model_input
from core.services.base import Endpoint, Output, Service, Upload
from core.services.flow import FlowService
from core.services.pictures import single_image
from core.services.pixelcnn import PixelCNNService
from core.services.vae import VAEService

REFERENCE = "likelihood.json"  # in a model's folder: {"bits_per_dim": 101 percentiles, "complexity": .., "kind", ..}
FAMILIES = {"flow": FlowService, "pixelcnn": PixelCNNService, "vae": VAEService}   # by the service that loads them
OOD_SHARE = 0.95               # a score above 95% of the test images' is flagged (5% false alarms)
SCORES = (("bits_per_dim", "bits/dim", "−log₂ p(x) / D"),
          ("complexity", "S", "bits/dim − PNG bits/dim"))


def image_bits(model, images: Tensor, seed: int = 0) -> Tensor:
    """Bits/dim of each image under a likelihood model (a flow draws its dequantization noise from `seed`)."""
    with torch.no_grad():
        return model.bits_per_dim(images, generator=torch.Generator().manual_seed(seed)).double()


def reference(spec: str) -> dict | None:
    """A shipped model's test-set percentiles (REFERENCE), or None if its folder has none."""
    try:
        path = resolve(spec, allow_local=False) / REFERENCE
        return json.loads(path.read_text()) if path.is_file() else None
    except (CheckpointError, OSError, json.JSONDecodeError):
        return None


def verdict(key: str, share: float) -> str:
    if share > OOD_SHARE:
        return "**unlike Fashion-MNIST**"
    if key == "bits_per_dim" and share < 1 - OOD_SHARE:
        return "typical: *more* likely than 95% of garments"
    return "typical"


class LikelihoodService(Service):
    tab = "Likelihood"
    about = r"""**Bits per dimension**: $-\log_2 p(x) / D$ for the 8-bit pixels of an image, $D = 784$, the length an
ideal coder driven by the model would spend per pixel (a uniform model: exactly 8). The flow's figure is an upper
bound (one draw of dequantization noise), so is the VAE's (its importance-weighted bound), the PixelCNN's is exact. A model trained on Fashion-MNIST should give
other images *more* bits, yet MNIST digits get *fewer* than its own test garments (Nalisnick et al. 2019, "Do deep
generative models know what they don't know?"): a thin stroke on a black page is cheap for any coder. **Input
complexity** (Serrà et al. 2020) measures that cheapness with a generic lossless compressor, here the image's PNG
file of $L(x)$ bits, and scores $S(x) = \text{bits/dim}(x) - L(x)/D$, the log-ratio of the compressor's likelihood
$2^{-L(x)}$ to the model's: positive where the model codes the image worse than PNG. Each score is placed among the
test images' scores; above 95% of them the image is flagged. S's 5% false alarms are mostly the simplest garments
(glow's S flags 27% of test sandals and 12% of sneakers, under 3% of every other class), and upside-down garments
fool both scores of the flow and the PixelCNN."""
    endpoints = (
        Endpoint("likelihood_judge", "judge",
                 (Upload("image", "image", "mnist-digit-3.png", examples="likelihood",
                         gallery="a garment, an MNIST digit, noise, a garment upside down"),),
                 (Output("", "text"),
                  Output("the image, and its scores (red) among the test images' (bits/dim left, S right)")),
                 "Score"),
    )

    @classmethod
    def models(cls) -> list[tuple[str, str]]:
        """(name, family) of the manifest's likelihood models that keep their test-set percentiles."""
        return [(name, entry["family"]) for name, entry in read_manifest().items()
                if entry["family"] in FAMILIES and reference(name)]

    @classmethod
    def judge(cls, image) -> tuple[str, Image.Image]:
        """(the table of scores and verdicts, the image beside each score's test-set histogram)."""
        x = to_model_input(read_image(image))[0][None]
        png = float(png_bits_per_dim(pixel_levels(x))[0])
        lines = [f"PNG: {png:.2f} bits/dim.", "",
                 "| model | score | value | test images below it | verdict |", "|---|---|---|---|---|"]
        plots = []
        for name, family in cls.models():
            known = reference(name)
            bits = float(image_bits(FAMILIES[family].load(name).model, x)[0])
            row = []
            for (key, score, meaning), value in zip(SCORES, (bits, bits - png)):
                share = share_below(known[key], value)
                lines.append(f"| `{name}` ({known['kind']}) | {score}: {meaning} | {value:.3f} | {100 * share:.0f}%"
                             f" | {verdict(key, share)} |")
                row.append(histogram_plot(torch.tensor(known[key]), value, f"{name}: {score} of test images"))
            plots.append(row)
        if not plots:
            raise RequestError("no likelihood model here keeps its test images' scores (bench/likelihood_reference.py)")
        return "\n".join(lines), side_by_side(single_image(x[0]), plots)


def side_by_side(image: Image.Image, rows: list[list[Image.Image]]) -> Image.Image:
    """The image (as tall as one row of plots) on the left, then the rows of plots."""
    height, width = rows[0][0].height, sum(plot.width for plot in rows[0])
    picture = image.convert("RGB").resize((height, height), Image.NEAREST)
    out = Image.new("RGB", (height + width, height * len(rows)), "white")
    out.paste(picture, (0, 0))
    for r, row in enumerate(rows):
        left = height
        for plot in row:
            out.paste(plot, (left, r * height))
            left += plot.width
    return out
