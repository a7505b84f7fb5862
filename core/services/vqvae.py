"""The VQ-VAE tab: samples whose codes the class-conditional PixelCNN prior draws position by position (streamed a
code row at a time) and the decoder turns into images, and an upload's reconstruction through its code grid with
what the prior says those codes cost in bits (core/models/vqvae.py).

Sampling is sequential over the code grid: one network step per code, 49 per 28x28 image (a 7x7 grid), so a
request costs images x codes, checked before it is queued (admission, counted with diffusion and PixelCNN sampling
toward a client's slow requests). A costed endpoint streams (the app releases the client's slot when the stream
ends); the run is streamed from a worker thread (core/services/streaming.py), which stops when the client leaves
or after PIXELCNN_BUDGET_S. A reconstruction is one pass of the encoder, the decoder and the prior: no admission (an upload's
file reference is checked after admission; see core/services/pixelcnn.py).
"""
from __future__ import annotations

import colorsys
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from core.data import FASHION_CLASSES
from core.requests import read_image, to_model_input
from core.services.base import (MAX_IMAGES, Choice, Endpoint, ModelChoice, Number, Output, Service, StepwiseSampling,
                                Upload, count_input, label_or_none, seed_input)
from core.services.pictures import grid_image
from core.services.pixelcnn import HIDDEN, PIXELCNN_BUDGET_S
from core.services.streaming import streamed

DOWNSAMPLING = 4               # image side / code grid side (two stride-2 convolutions)
GRID = 28 // DOWNSAMPLING      # Fashion-MNIST's 7x7 grid: what admission assumes (the method re-checks the model's)
MAX_WORK = MAX_IMAGES * GRID * GRID   # images x codes per request: 64 images, 0.22 s of CPU on one thread with the
                                      # shipped 6-layer prior, decoding included (1 image 0.11 s)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 1.5
PIXEL_BITS = 8                 # bits of one raw 8-bit pixel
CODE_CELL = 28                 # pixels per code in the picture of the code grid (7 codes: 196 pixels)
SHOWN_HEIGHT = 240             # the height of the reconstruction's two picture boxes (the code grid under its label)
MODEL = ModelChoice("model", "model", "vqvae", "vqvae")
SEED = seed_input()
TEMPERATURE = Number("temperature", "temperature T of the prior (softmax of logits / T)", 1.0, MIN_TEMPERATURE,
                     MAX_TEMPERATURE, step=0.05)
ANY_CLASS = "any: each in turn (samples), the mixture over classes (bits)"
LABEL = Choice("label", "class (class-conditional prior)", -1,
               ((ANY_CLASS, -1), *((name, k) for k, name in enumerate(FASHION_CLASSES))))
IMAGE = Upload("image", "image", "7-sneaker.png")


def code_colours(codes: int) -> list[tuple[int, int, int]]:
    """One colour per codebook entry: hues a golden angle apart, so that neighbouring indices differ."""
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1, 0.45, 0.95)) for k in range(codes)]


def code_picture(codes: torch.Tensor, entries: int) -> Image.Image:
    """A (h, w) code grid as a picture: a CODE_CELL-pixel square per code in its entry's colour, with its index."""
    colours, (h, w) = code_colours(entries), codes.shape
    picture = Image.new("RGB", (w * CODE_CELL, h * CODE_CELL), "white")
    draw = ImageDraw.Draw(picture)
    for (row, col), k in zip(((r, c) for r in range(h) for c in range(w)), codes.flatten().tolist()):
        box = (col * CODE_CELL, row * CODE_CELL, (col + 1) * CODE_CELL - 1, (row + 1) * CODE_CELL - 1)
        draw.rectangle(box, fill=colours[k], outline="white")
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(k), fill="black", anchor="mm")
    return picture


class VQVAEService(StepwiseSampling, Service):
    family, tab = "vqvae", "VQ-VAE"
    unit, admitted, max_work, temperatures = "code", GRID * GRID, MAX_WORK, (MIN_TEMPERATURE, MAX_TEMPERATURE)
    about = r"""**VQ-VAE** (van den Oord et al. 2017): an encoder maps an image to a grid of vectors $z_e(x)$ (here
28×28 → 7×7), each replaced by its nearest entry of a codebook $e \in \mathbb R^{K \times D}$ ($K = 256$):
$k = \arg\min_j \lVert z_e(x) - e_j \rVert_2$, $z_q(x) = e_k$; the decoder maps the grid $z_q$ back to the image.
The argmin has no gradient: the straight-through estimator copies the decoder's gradient at $z_q$ to $z_e$. Loss:
$\lVert x - D(z_q) \rVert^2 + \lVert \mathrm{sg}[z_e] - e \rVert^2 + \beta \lVert z_e - \mathrm{sg}[e] \rVert^2$,
the middle (codebook) term replaced by exponential moving averages of the vectors assigned to each code, and codes
left unused restarted on encoder outputs. An image is then 49 indices: the **prior**, a class-conditional Gated
PixelCNN trained afterwards with the autoencoder frozen, models them in raster order,
$p(k \mid y) = \prod_{i=1}^{49} p(k_i \mid k_{<i}, y)$. **Sampling** draws $k_1, k_2, \dots$ one at a time from
$\mathrm{softmax}(\text{logits}/T)$ and decodes $D(e_k)$: 49 network steps per image where a pixel-level PixelCNN
takes 784. **Reconstruction** shows $D(z_q(x))$, the codes, and the prior's bits per code
$-\log_2 p(k \mid y)/49$ (with "any" class: the mixture $p(k) = \frac1{10}\sum_y p(k \mid y)$; a uniform prior
scores $\log_2 K = 8$): $49 \times$ bits/code is what an entropy coder driven by the prior would spend on the codes,
against $784 \times 8$ bits of raw pixels; lossy, since the codes describe the reconstruction, not the image."""
    endpoints = (
        Endpoint("vqvae_sample", "sample", (MODEL, count_input(64), SEED, TEMPERATURE, LABEL),
                 (Output("", "text"), Output("samples: codes drawn by the prior, decoded (grey: not drawn yet)")),
                 "Sample", stream=True, cost="work"),
        Endpoint("vqvae_reconstruct", "reconstruct", (MODEL, IMAGE, LABEL),
                 (Output("", "text"), Output("the image and its reconstruction D(z_q(x))", height=SHOWN_HEIGHT),
                  Output("its codes (a colour per codebook entry)", height=SHOWN_HEIGHT)), "Reconstruct"),
    )

    @property
    def grid(self) -> int:
        return self.model.grid

    # ------------------------------------------------------------------------------------------------ sampling
    def partly_drawn(self, codes: torch.Tensor, rows: int) -> torch.Tensor:
        """The codes decoded, (B, C, H, W), the pixels of code rows from `rows` on grey (not drawn yet)."""
        with torch.no_grad():
            images = self.model.decode(codes).cpu()
        images[:, :, rows * DOWNSAMPLING:] = HIDDEN
        return images

    def sample(self, n, seed, temperature, label=-1) -> Iterator[tuple[float, tuple[str, Image.Image]]]:
        """Yield (fraction done, (status, grid with the code rows drawn so far, decoded)) after each code row,
        then the samples: the same as the model's own `sample` for the same seed."""
        self.cost(n, self.grid ** 2, seed, temperature)
        n, seed, temperature = int(n), int(seed), float(temperature)
        label = label_or_none(label, self.model)
        labels = torch.full((n,), label) if label is not None else self.model.default_labels(n)
        generator = torch.Generator().manual_seed(seed)
        run = lambda on_row: self.model.sample_codes(n, labels, temperature, generator, on_row=on_row)
        for row, codes in streamed(run, PIXELCNN_BUDGET_S):
            if row is None:
                yield 1.0, (f"{n} image{'s' * (n > 1)}: {n * self.grid ** 2:,} codes drawn one at a time, decoded",
                            grid_image(self.partly_drawn(codes, self.grid)))
            elif row < self.grid - 1:
                yield (row + 1) / self.grid, (f"code row {row + 1}/{self.grid}",
                                              grid_image(self.partly_drawn(codes, row + 1)))

    # -------------------------------------------------------------------------------------------- reconstruction
    def image_of(self, upload) -> torch.Tensor:
        """An upload as the model sees it: (C, H, W) in [-1, 1], on 8-bit levels."""
        return to_model_input(read_image(upload), self.model.config.image_size)[0]

    def bits_per_code(self, codes: torch.Tensor, label) -> tuple[float, str]:
        """−log₂ p(k | y) / codes for one code grid (1, h, w), and what p is: the class picked, the mixture
        (1/K) Σ_y p(k | y) of a class-conditional prior when none is, or the unconditional prior."""
        label = label_or_none(label, self.model)
        classes = self.model.config.num_classes
        with torch.no_grad():
            if label is not None:
                return float(self.model.bits_per_code(codes, torch.tensor([label]))), f"p(k | {FASHION_CLASSES[label]})"
            if not classes:
                return float(self.model.bits_per_code(codes, None)), "p(k)"
            nats = self.model.code_nats(codes.repeat(classes, 1, 1), torch.arange(classes))         # (K,)
        mixture = float(math.log(classes) - torch.logsumexp(-nats.double(), 0))
        return mixture / (codes[0].numel() * math.log(2)), f"p(k) = (1/{classes}) Σ_y p(k | y)"

    def reconstruct(self, upload, label=-1) -> tuple[str, Image.Image, Image.Image]:
        """The image beside D(z_q(x)), its code grid, and a note: the MSE, the codes used and their bits."""
        x = self.image_of(upload)
        with torch.no_grad():
            codes = self.model.encode(x[None])[1].cpu()                                    # (1, h, w)
            out = self.model.decode(codes).cpu()
        bits, prior = self.bits_per_code(codes, label)
        cells, pixels, entries = codes[0].numel(), x.numel(), self.model.config.codes
        mse = float(F.mse_loss(out[0], x))
        total, raw = cells * bits, pixels * PIXEL_BITS
        note = (f"Reconstruction MSE **{mse:.4f}** on [-1, 1] pixels. **{len(codes.unique())}** distinct codes of "
                f"{entries} in the {codes.shape[1]}x{codes.shape[2]} grid. The prior {prior}: **{bits:.2f} bits per "
                f"code** (uniform: {math.log2(entries):.0f}), so {cells} x {bits:.2f} = **{total:,.0f} bits** for the "
                f"codes, against {pixels} x {PIXEL_BITS} = {raw:,} bits of raw pixels ({raw / total:.0f}x fewer; "
                f"lossy: the codes describe the reconstruction).")
        return note, grid_image(torch.cat([x[None], out]), 2), code_picture(codes[0], entries)
