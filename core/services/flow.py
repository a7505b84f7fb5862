"""The Flow tab: samples at a temperature, latent interpolation between two images with their exact bits/dim, and
an image's latents at every scale (core/models/flow.py).

A flow is invertible, so an image has exactly one latent point: encoding two images, walking the straight line
between their latents and decoding every point starts and ends at the images themselves (up to float error).
"""
from __future__ import annotations

import torch
from PIL import Image

from core.requests import MAX_SEED, RequestError, read_image, real_number, to_model_input, whole_number
from core.services.base import (CLASS_CHOICES, MAX_IMAGES, MAX_PATH, Choice, Endpoint, ModelChoice, Number, Output,
                                Service, Upload, class_and_temperature, count_input, label_or_none, path_input,
                                seed_input)
from core.services.pictures import grid_image

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 1.2    # T of z ~ N(μ, T²σ²): 0 is each prior's mean, 1 the model itself
NOISE_DRAWS = 8                # dequantization draws averaged in an upload's bits/dim
SHOWN_SIGMAS = 3.0             # a whitened latent's grey scale spans ±3σ
MODEL = ModelChoice("model", "model", "glow", "flow")
SEED = seed_input()
TEMPERATURE = Number("temperature", "temperature T", 0.7, MIN_TEMPERATURE, MAX_TEMPERATURE, step=0.05)
LABEL = Choice("label", "class (class-conditional flow only)", -1, CLASS_CHOICES)
IMAGE_A = Upload("image_a", "image A", "7-sneaker.png")


class FlowService(Service):
    family, tab = "flow", "Flow"
    about = r"""**Normalizing flow**: an invertible network $z = f(x)$ onto a Gaussian, trained by exact maximum
likelihood with the change of variables (RealNVP, Dinh et al. 2017, Eq. 3):
$$\log p(x) = \log p_Z(f(x)) + \log\left|\det \frac{\partial f}{\partial x}\right|.$$
**Glow** (Kingma & Dhariwal 2018) stacks steps of ActNorm, an invertible 1×1 convolution (LU form) and an affine
coupling $y_b = x_b \odot e^{s(x_a)} + t(x_a)$, whose Jacobian is triangular, so $\log|\det| = \sum s(x_a)$. It is
multi-scale: each level squeezes the image and factors out half its channels as a latent $z_i$ with a Gaussian prior
$\mathcal N(\mu(h_i), \sigma(h_i))$ given what goes on. The 8-bit pixels are dequantized, $y = (k + u)/256$ with
$u \sim U[0, 1)$, and bits/dim $= \big(-\log p_Y(y) + D\log 256\big) / (D \log 2)$, $D = 784$: a uniform model scores
exactly 8. Sampling at temperature $T$ draws every latent as $\mu + T\sigma\varepsilon$ (Glow Sec. 5.4): $T = 0.7$
gives cleaner garments than $T = 1$ at the cost of variety; $T = 0$ decodes each prior's mean. The latents of an
image are shown whitened, $\varepsilon_i = (z_i - \mu_i)/\sigma_i$: noise where the model explains the image."""
    endpoints = (
        Endpoint("flow_sample", "sample", (MODEL, count_input(64), SEED, TEMPERATURE, LABEL),
                 (Output("samples at temperature T"),), "Sample"),
        Endpoint("flow_interpolate", "interpolate",
                 (MODEL, IMAGE_A, Upload("image_b", "image B", "9-ankle-boot.png"), path_input(), LABEL),
                 (Output("decoded straight path from z(A) to z(B)"), Output("", "text")), "Interpolate A -> B"),
        Endpoint("flow_latents", "latents", (MODEL, IMAGE_A.named("image"), LABEL),
                 (Output("whitened latents ε = (z − μ)/σ, a row per scale (grey 0, white +3σ)"), Output("", "text")),
                 "Latents of A"),
    )

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        """The class picker is live for a class-conditional flow; the slider starts at the model's own T."""
        return class_and_temperature(spec, cls.family, MIN_TEMPERATURE, MAX_TEMPERATURE)

    def sample(self, n, seed, temperature, label=-1) -> Image.Image:
        n, seed = whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)
        temperature = real_number(temperature, "temperature", MIN_TEMPERATURE, MAX_TEMPERATURE)
        label = label_or_none(label, self.model)
        labels = torch.full((n,), label) if label is not None else None
        return grid_image(self.model.sample(n, temperature, seed, labels))

    # ----------------------------------------------------------------------------------------------- uploads
    def image_of(self, upload) -> torch.Tensor:
        """An upload as the model sees it: (C, H, W) in [-1, 1], on 8-bit levels."""
        return to_model_input(read_image(upload), self.model.config.image_size)[0]

    def labels_of(self, label, n: int) -> torch.Tensor | None:
        """A class-conditional flow scores an image under one class's prior: the picker must name one."""
        label = label_or_none(label, self.model)
        if self.model.class_mean is not None and label is None:
            raise RequestError("this flow is class-conditional: pick the class whose prior scores the images", "label")
        return torch.full((n,), label) if label is not None else None

    def bits_per_dim(self, images: torch.Tensor, labels: torch.Tensor | None) -> list[float]:
        """Each image's bits/dim, the mean over NOISE_DRAWS seeded draws of the dequantization noise u."""
        repeated = images.repeat(NOISE_DRAWS, 1, 1, 1)
        labels = labels.repeat(NOISE_DRAWS) if labels is not None else None
        with torch.no_grad():
            bpd = self.model.bits_per_dim(repeated, labels, torch.Generator().manual_seed(0))
        return bpd.view(NOISE_DRAWS, len(images)).mean(0).tolist()

    def walk(self, upload_a, upload_b, steps, label=-1) -> torch.Tensor:
        """The decoded straight path between the two images' latents, (steps, C, H, W)."""
        steps = whole_number(steps, "steps", 2, MAX_PATH)
        labels = self.labels_of(label, 1)
        x_a, x_b = self.image_of(upload_a), self.image_of(upload_b)
        return self.model.interpolate(x_a, x_b, steps, int(labels[0]) if labels is not None else None)

    def interpolate(self, upload_a, upload_b, steps, label=-1) -> tuple[Image.Image, str]:
        path = self.walk(upload_a, upload_b, steps, label)
        bits = self.bits_per_dim(path[[0, -1]], self.labels_of(label, 2))
        return grid_image(path, len(path)), (f"bits/dim: A {bits[0]:.3f}, B {bits[1]:.3f} (exact −log₂ p / 784 "
                                             f"under uniform dequantization, mean of {NOISE_DRAWS} noise draws; a "
                                             f"uniform model scores 8)")

    def latents(self, upload, label=-1) -> tuple[Image.Image, str]:
        """The whitened latents of an image: for each scale a row of its channels, each enlarged to the image size."""
        x, labels = self.image_of(upload), self.labels_of(label, 1)
        whitened = self.model.whitened_latents(x[None], labels)
        side = self.model.config.image_size
        rows = []
        for eps in whitened:                                            # (1, C_i, S_i, S_i)
            cells = eps[0, :, None].clamp(-SHOWN_SIGMAS, SHOWN_SIGMAS) / SHOWN_SIGMAS      # (C_i, 1, S_i, S_i)
            rows.append(grid_image(torch.nn.functional.interpolate(cells, size=(side, side)), len(cells)))
        picture = Image.new(rows[0].mode, (max(r.width for r in rows), sum(r.height for r in rows)))
        for k, row in enumerate(rows):
            picture.paste(row, (0, sum(r.height for r in rows[:k])))
        shapes = ", ".join(f"{tuple(eps.shape[1:])}" for eps in whitened)
        rms = ", ".join(f"{float(eps.pow(2).mean().sqrt()):.2f}" for eps in whitened)
        bits = self.bits_per_dim(x[None], labels)[0]
        return picture, (f"bits/dim {bits:.3f}. Latents per scale {shapes}; root mean square of ε {rms} "
                         f"(1 for N(0, I) noise)")
