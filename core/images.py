"""Image grids as PNG, without torchvision: (N, C, H, W) in [-1, 1] -> one uint8 picture; and small plots drawn
with Pillow (a 2-D scatter, curves and decision regions), without matplotlib."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from core.data import to_uint8


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """Tile (N, C, H, W) images in [-1, 1] into a (C, H', W') uint8 grid, nrow images per row, white gaps."""
    n, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((channels, rows * (height + padding) + padding, nrow * (width + padding) + padding), 255,
                      dtype=torch.uint8)
    pixels = to_uint8(images.cpu())
    for i in range(n):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        grid[:, top:top + height, left:left + width] = pixels[i]
    return grid


def to_pil(grid: Tensor) -> Image.Image:
    """A (C, H, W) uint8 tensor as a PIL image (grayscale for C = 1)."""
    array = grid.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def grid_picture(images: Tensor, nrow: int | None = None, scale: int = 1, padding: int = 2) -> Image.Image:
    """make_grid as a PIL image, enlarged `scale` times with nearest neighbour (crisp 28-pixel images)."""
    picture = to_pil(make_grid(images, nrow, padding))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a grid PNG atomically (a reader never sees half a file); `scale` enlarges with nearest neighbour."""
    path = Path(path)
    picture = grid_picture(images, nrow, scale)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    picture.save(tmp)
    tmp.replace(path)
    return path


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]      # matplotlib's tab10


def scatter_plot(points: Tensor, labels: Tensor, names: list[str], size: int = 560, limit: float = 4.0,
                 marked: tuple[float, float] | None = None, axes: tuple[str, str] = ("z1", "z2")) -> Image.Image:
    """A 2-D scatter, one colour per class, with a legend: the picture of a 2-D latent space (no matplotlib).
    `marked`: one point drawn as a large black ring (a query)."""
    picture = Image.new("RGB", (size + 150, size), "white")
    draw = ImageDraw.Draw(picture)
    to_pixel = lambda v: (float(v) + limit) / (2 * limit) * (size - 20) + 10
    draw.rectangle([10, 10, size - 10, size - 10], outline="black")
    zero = to_pixel(0.0)
    draw.line([10, zero, size - 10, zero], fill=(200, 200, 200))
    draw.line([zero, 10, zero, size - 10], fill=(200, 200, 200))
    for (x, y), label in zip(points.clamp(-limit, limit).tolist(), labels.tolist()):
        px, py = to_pixel(x), size - to_pixel(y)                 # y axis points up
        draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=PALETTE[label % len(PALETTE)])
    for k, name in enumerate(names):
        draw.rectangle([size + 5, 20 + 18 * k, size + 15, 30 + 18 * k], fill=PALETTE[k % len(PALETTE)])
        draw.text((size + 20, 18 + 18 * k), str(name), fill="black")
    if marked is not None:
        x, y = (max(-limit, min(limit, float(v))) for v in marked)
        px, py = to_pixel(x), size - to_pixel(y)
        draw.ellipse([px - 9, py - 9, px + 9, py + 9], outline="black", width=3)
    draw.text((size - 60, size - 25), f"{axes[0]}, ±{limit:g}", fill="black")
    draw.text((14, 12), axes[1], fill="black")
    return picture


SHADES = {0: (214, 229, 244), 1: (255, 226, 199)}        # pale PALETTE[0] and [1]: where a model answers 0 or 1
GREY, BLACK = (190, 190, 190), (0, 0, 0)


class Canvas:
    """Small plots without matplotlib (curves, points, lines, shaded decision regions), for the Foundations tab: a
    white picture with data coordinates x ∈ x_range, y ∈ y_range mapped onto it (y grows upward)."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], size: int = 360, margin: int = 34):
        self.x_range, self.y_range, self.size, self.margin = x_range, y_range, size, margin
        self.image = Image.new("RGB", (size, size), "white")
        self.draw = ImageDraw.Draw(self.image)

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1), inner = self.x_range, self.y_range, self.size - 2 * self.margin
        return self.margin + (x - x0) / (x1 - x0) * inner, self.margin + (y1 - y) / (y1 - y0) * inner

    def regions(self, classify: Callable[[Tensor], Tensor], resolution: int = 120) -> Canvas:
        """Shade the plot area by `classify` ((N, 2) points -> (N,) 0/1) evaluated on a resolution² grid."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        xs, ys = torch.linspace(x0, x1, resolution), torch.linspace(y1, y0, resolution)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)   # rows top to bottom
        answers = classify(grid).reshape(resolution, resolution).bool()
        colors = torch.where(answers[..., None], torch.tensor(SHADES[1]), torch.tensor(SHADES[0])).to(torch.uint8)
        inner = self.size - 2 * self.margin
        self.image.paste(Image.fromarray(colors.numpy()).resize((inner, inner), Image.NEAREST),
                         (self.margin, self.margin))
        return self

    def axes(self, ticks: tuple[float, ...] = ()) -> Canvas:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        self.draw.rectangle([self.pixel(x0, y1), self.pixel(x1, y0)], outline=BLACK)
        if x0 < 0 < x1:
            self.draw.line([self.pixel(0, y0), self.pixel(0, y1)], fill=GREY)
        if y0 < 0 < y1:
            self.draw.line([self.pixel(x0, 0), self.pixel(x1, 0)], fill=GREY)
        for value in ticks:
            px, _ = self.pixel(value, y0)
            self.draw.text((px - 8, self.size - self.margin + 4), f"{value:g}", fill=BLACK)
            _, py = self.pixel(x0, value)
            self.draw.text((4, py - 6), f"{value:g}", fill=BLACK)
        return self

    def curve(self, xs: Tensor, ys: Tensor, color=BLACK, width: int = 2) -> Canvas:
        (y0, y1) = self.y_range
        points = [self.pixel(float(x), min(max(float(y), y0), y1)) for x, y in zip(xs, ys)]
        self.draw.line(points, fill=color, width=width)
        return self

    def line(self, w: Tensor, b: float, color=BLACK, width: int = 2) -> Canvas:
        """The line w₀ x + w₁ y + b = 0 where it crosses the plot (nothing if w = 0 or it misses the plot)."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        w0, w1, b = float(w[0]), float(w[1]), float(b)
        crossings = []
        if w1 != 0:                                           # where it meets the left and right edges
            crossings += [(x, -(w0 * x + b) / w1) for x in (x0, x1)]
        if w0 != 0:                                           # ... and the bottom and top edges
            crossings += [(-(w1 * y + b) / w0, y) for y in (y0, y1)]
        inside = [(x, y) for x, y in crossings if x0 - 1e-9 <= x <= x1 + 1e-9 and y0 - 1e-9 <= y <= y1 + 1e-9]
        if len(inside) >= 2:
            ends = (min(inside), max(inside))
            self.draw.line([self.pixel(*end) for end in ends], fill=color, width=width)
        return self

    def points(self, points: Tensor, classes: Tensor, radius: int = 8) -> Canvas:
        for (x, y), k in zip(points.tolist(), classes.tolist()):
            px, py = self.pixel(x, y)
            self.draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=PALETTE[int(k)], outline=BLACK)
        return self

    def title(self, text: str) -> Canvas:
        self.draw.text((self.margin, 8), text, fill=BLACK)
        return self


def histogram_plot(percentiles: Tensor, marked: float, label: str, size: tuple[int, int] = (560, 260)) -> Image.Image:
    """The density of a quantity drawn from its percentiles 0, 1, ..., 100 (each 1% of the mass between two of
    them), with one value `marked` as a red line: where a query falls among reference values (no matplotlib)."""
    width, height = size
    edges = percentiles.double()
    low, high = min(float(edges[0]), marked), max(float(edges[-1]), marked)
    pad = 0.05 * (high - low or 1.0)
    low, high = low - pad, high + pad
    to_x = lambda v: 10 + (v - low) / (high - low) * (width - 20)
    density = 0.01 / (edges[1:] - edges[:-1]).clamp(min=1e-9 * (high - low))
    density = density.clamp(max=float(density.quantile(0.95)) * 2)        # a tiny gap would make a spike
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    for a, b, d in zip(edges[:-1].tolist(), edges[1:].tolist(), density.tolist()):
        top = height - 30 - d / float(density.max()) * (height - 60)
        draw.rectangle([to_x(a), top, max(to_x(b), to_x(a) + 1), height - 30], fill=PALETTE[0])
    draw.line([10, height - 30, width - 10, height - 30], fill="black")
    draw.line([to_x(marked), 20, to_x(marked), height - 30], fill=(220, 30, 30), width=3)
    for v in (low + pad, high - pad):
        draw.text((to_x(v) - 15, height - 25), f"{v:.3g}", fill="black")
    draw.text((12, 4), label, fill="black")
    return picture
