"""The PixelCNN tab: samples drawn pixel by pixel and streamed row by row, completions of an image's lower rows, and an
image's exact bits/dim beside what an entropy coder driven by the model makes of it (core/models/pixelcnn.py).

Sampling is sequential: one network step per pixel, 784 per image, so a request costs images x pixels. A sampling
request's cost is checked before it is queued (admission; a completion, at most MAX_COMPLETIONS images, has no
admission, since Gradio checks an upload's file reference after admission and a refusal there would keep the
client's slot until it expires). A run is streamed row by row from a worker thread (core/services/streaming.py),
and stops at the next row when the client leaves or the run passes PIXELCNN_BUDGET_S.
"""
from __future__ import annotations

import io
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from core import compress
from core.data import FASHION_CLASSES
from core.models.pixelcnn import pixel_levels
from core.requests import RequestError, read_image, to_model_input, whole_number
from core.services.base import (MAX_IMAGES, Choice, Endpoint, ModelChoice, Number, Output, Service, StepwiseSampling,
                                Upload, count_input, label_or_none, seed_input)
from core.services.pictures import grid_image, single_image
from core.services.streaming import streamed

SIDE = 28                      # Fashion-MNIST's side: what admission assumes (the method re-checks the model's own)
MAX_WORK = MAX_IMAGES * SIDE * SIDE   # images x pixels per request: 64 images, 7.8 s of CPU on one thread with
                                     # the shipped 12-layer model (1 image 3.0 s: the steps' overhead dominates)
MAX_COMPLETIONS = 8            # completions of one image
PIXELCNN_BUDGET_S = 90.0       # wall time one request may take
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 1.2
HIDDEN = 0.0                   # the grey (in [-1, 1]) of pixels not drawn yet
SHOWN_CLASSES = 3              # classes listed with their posterior probability
MODEL = ModelChoice("model", "model", "pixelcnn", "pixelcnn")
SEED = seed_input()
TEMPERATURE = Number("temperature", "temperature T (softmax of logits / T)", 1.0, MIN_TEMPERATURE, MAX_TEMPERATURE,
                     step=0.05)
ANY_CLASS = "any: each in turn (samples), drawn from p(y | known rows) (completions)"
LABEL = Choice("label", "class (class-conditional model)", -1,
               ((ANY_CLASS, -1), *((name, k) for k, name in enumerate(FASHION_CLASSES))))
IMAGE = Upload("image", "image (its top rows are kept)", "7-sneaker.png")


def as_images(levels: torch.Tensor, shown_rows: int) -> torch.Tensor:
    """Levels (B, H, W) as images (B, 1, H, W) in [-1, 1], rows from `shown_rows` on grey (not drawn yet)."""
    images = levels[:, None].float() / 127.5 - 1
    images[:, :, shown_rows:] = HIDDEN
    return images


class PixelCNNService(StepwiseSampling, Service):
    family, tab = "pixelcnn", "PixelCNN"
    unit, admitted, max_work, temperatures = "pixel", SIDE * SIDE, MAX_WORK, (MIN_TEMPERATURE, MAX_TEMPERATURE)
    about = r"""**PixelCNN** (van den Oord et al. 2016a): an image of $D = 784$ pixel levels $k_i \in \{0,\dots,255\}$
factorises exactly in raster order, $p(x \mid y) = \prod_{i=1}^{D} p(x_i \mid x_{<i}, y)$, each factor a 256-way
softmax read from the network at pixel $i$. Masked convolutions keep the network causal: a mask-A kernel (the first
layer) zeroes the centre and every later position, mask B (the later layers) only the later ones; stacked, they
leave a blind spot up and to the right. The **Gated PixelCNN** (2016b), shipped here, has a vertical stack (the rows
above) and a horizontal stack (the pixels to the left) joined by a 1×1 link, with no blind spot, and gated units
with the class $y$ as a learned bias on every gate: $h = \tanh(W_f * x + V_f y) \odot \sigma(W_g * x + V_g y)$.
Training maximises the exact likelihood; on 8-bit pixels it is discrete, so no dequantization enters:
$\text{bits/dim} = -\log_2 p(x)/D$, the mean cross-entropy of the softmaxes in bits (a uniform model scores 8).
Without a class the model is the mixture $p(x) = \frac1{10}\sum_y p(x \mid y)$. **Sampling** draws $x_1, x_2, \dots$
one at a time from $\mathrm{softmax}(\text{logits}/T)$, each after a network step (the cached fast path of
Ramachandran et al. 2017), which is why the grid fills in row by row. A **completion** keeps the top rows and draws
the rest; with "any" class, each completion first draws $y$ from $p(y \mid x_{\text{known}}) \propto
p(x_{\text{known}} \mid y)$ (exact: the causal network's factors at the known pixels see nothing below them), so
it samples the mixture's own $p(x_{\text{rest}} \mid x_{\text{known}})$. **Compression**: a range coder fed the
model's probabilities pixel by pixel writes an image in about $-\log_2 p(x)$ bits, Shannon's bound (core/compress.py:
a class-conditional model codes the best class first, $\log_2 10$ bits more at most), and decoding runs the same
network to read it back; PNG and WebP know nothing about garments."""
    endpoints = (
        Endpoint("pixelcnn_sample", "sample", (MODEL, count_input(16), SEED, TEMPERATURE, LABEL),
                 (Output("", "text"), Output("samples, drawn pixel by pixel (grey: not drawn yet)")), "Sample",
                 stream=True, cost="work", queue="pixelcnn"),
        Endpoint("pixelcnn_complete", "complete",
                 (MODEL, IMAGE, Number("known_rows", "known top rows", SIDE // 2, 0, SIDE),
                  Number("per_image", "completions", 4, 1, MAX_COMPLETIONS), SEED, TEMPERATURE, LABEL),
                 (Output("", "text"), Output("the image with its unknown rows greyed, then the completions")),
                 "Complete the lower rows", stream=True, queue="pixelcnn"),
        Endpoint("pixelcnn_compress", "compress", (MODEL, IMAGE),
                 (Output("", "text"), Output("the image as coded (28x28, 8-bit grey)")), "Compress losslessly",
                 queue="pixelcnn"),
    )

    @property
    def side(self) -> int:
        return self.model.config.image_size

    # ------------------------------------------------------------------------------------------------ sampling
    def sample(self, n, seed, temperature, label=-1) -> Iterator[tuple[float, tuple[str, Image.Image]]]:
        """Yield (fraction done, (status, grid with the rows drawn so far)) after each row, then the samples."""
        self.cost(n, self.side ** 2, seed, temperature)
        n, seed, temperature = int(n), int(seed), float(temperature)
        label = label_or_none(label, self.model)
        labels = torch.full((n,), label) if label is not None else self.model.default_labels(n)
        start = time.monotonic()
        run = lambda on_row: self.model.sample(n, seed, labels, temperature, on_row=on_row)
        for row, levels in streamed(run, PIXELCNN_BUDGET_S):
            seconds = time.monotonic() - start
            if row is None:
                yield 1.0, (f"{n} image{'s' * (n > 1)}, {n * self.side ** 2:,} pixels drawn one at a time in "
                            f"{seconds:.1f} s",
                            grid_image(levels))
            elif row < self.side - 1:
                yield (row + 1) / self.side, (f"row {row + 1}/{self.side} · {seconds:.1f} s",
                                              grid_image(as_images(levels, row + 1)))

    # ---------------------------------------------------------------------------------------------- completion
    def image_of(self, upload) -> torch.Tensor:
        """An upload as the model sees it: (1, H, W) in [-1, 1], on 8-bit levels."""
        return to_model_input(read_image(upload), self.side)[0]

    def class_posterior(self, x: torch.Tensor, known_rows: int) -> torch.Tensor:
        """p(y | rows < known_rows) ∝ p(rows < known_rows | y), (K,), uniform prior: one pass per class gives each
        exact likelihood, as the factors at the known pixels see nothing below them."""
        classes = self.model.config.num_classes
        levels = pixel_levels(x[None]).repeat(classes, 1, 1)                            # (K, H, W)
        with torch.no_grad():
            logits = self.model.logits(levels, torch.arange(classes)).float()
        nats = F.cross_entropy(logits, levels, reduction="none")[:, :known_rows].sum((1, 2))
        return torch.softmax(-nats, 0)

    def completion_labels(self, x, known_rows: int, per_image: int, label, seed: int) -> tuple[torch.Tensor | None,
                                                                                                   str]:
        """Each completion's class and a note saying where it came from."""
        label = label_or_none(label, self.model)
        if label is not None:
            return torch.full((per_image,), label), f"class: {FASHION_CLASSES[label]}"
        if not self.model.config.num_classes:
            return None, "unconditional model"
        posterior = self.class_posterior(x, known_rows)
        labels = torch.multinomial(posterior, per_image, True, generator=torch.Generator().manual_seed(seed))
        top = posterior.topk(min(SHOWN_CLASSES, len(posterior)))
        shown = ", ".join(f"{FASHION_CLASSES[k]} {p:.2f}" for p, k in zip(top.values.tolist(), top.indices.tolist()))
        drawn = ", ".join(FASHION_CLASSES[k] for k in labels.tolist())
        return labels, f"p(y | top {known_rows} rows): {shown}; drawn: {drawn}"

    def complete(self, upload, known_rows, per_image, seed, temperature, label=-1
                 ) -> Iterator[tuple[float, tuple[str, Image.Image]]]:
        """Yield (fraction done, (note, [masked image | completions so far])) after each drawn row, then the
        completions: the first cell shows the image with its unknown rows greyed."""
        known_rows = whole_number(known_rows, "known_rows", 0, self.side)
        per_image = whole_number(per_image, "per_image", 1, MAX_COMPLETIONS)
        self.cost(per_image, self.side ** 2, seed, temperature)
        seed, temperature = int(seed), float(temperature)
        x = self.image_of(upload)
        labels, note = self.completion_labels(x, known_rows, per_image, label, seed)
        masked = x.clone()[None]
        masked[:, :, known_rows:] = HIDDEN + 0.4 * masked[:, :, known_rows:]                # greyed, still legible
        start = time.monotonic()
        run = lambda on_row: self.model.complete(x[None].repeat(per_image, 1, 1, 1), known_rows, 1, seed, labels,
                                                 temperature, on_row=on_row)
        for row, levels in streamed(run, PIXELCNN_BUDGET_S):
            seconds = time.monotonic() - start
            if row is None:
                yield 1.0, (f"{note} · {seconds:.1f} s", grid_image(torch.cat([masked, levels]), per_image + 1))
            elif known_rows <= row < self.side - 1:
                fraction = (row + 1 - known_rows) / (self.side - known_rows)
                frame = torch.cat([masked, as_images(levels, row + 1)])
                yield fraction, (f"{note} · row {row + 1}/{self.side}", grid_image(frame, per_image + 1))

    # --------------------------------------------------------------------------------------------- compression
    def compress(self, upload) -> tuple[str, Image.Image]:
        """An image's exact bits/dim, and its size coded by the model's range coder (decoded back to check) beside
        lossless PNG and WebP of the same 8-bit pixels."""
        x = self.image_of(upload)
        levels = pixel_levels(x[None]).to(torch.uint8)                                    # (1, H, W)
        with torch.no_grad():
            bits = float(self.model.bits_per_dim(x[None])[0])                             # the mixture over classes
        start = time.monotonic()
        data = compress.encode(self.model, self.name, levels, ["image.png"])
        seconds = time.monotonic() - start
        decoded, _ = compress.decode(self.model, data)
        exact = "decoded back bit for bit" if (decoded == levels.numpy()).all() else "**decoded back wrong**"
        words = len(compress.unpack(data)[1])
        picture = Image.fromarray(levels[0].numpy(), "L")
        sizes = {kind: len(encoded(picture, kind)) for kind in ("PNG", "WEBP")}
        pixels = levels[0].numel()
        row = lambda name, size: f"| {name} | {size:,.0f} | {8 * size / pixels:.2f} |"
        return "\n".join([
            "| code | bytes | bits/dim |", "|---|---|---|",
            row("ideal: −log₂ p(x) under the model (exact)", bits * pixels / 8),
            row(f"the model's range coder: the code alone ({exact}, {seconds:.1f} s)", 4 * words),
            row("the same, as a file (with its header: model fingerprint, names, checksums)", len(data)),
            row("PNG, Pillow optimize=True", sizes["PNG"]), row("WebP lossless, method 6", sizes["WEBP"]),
            row("raw 8-bit pixels", pixels)]), single_image(x)


def encoded(picture: Image.Image, kind: str) -> bytes:
    """The bytes of a lossless PNG (optimized) or WebP (lossless, slowest method) of a grey picture."""
    out = io.BytesIO()
    options = {"optimize": True} if kind == "PNG" else {"lossless": True, "quality": 100, "method": 6}
    picture.save(out, kind, **options)
    return out.getvalue()
