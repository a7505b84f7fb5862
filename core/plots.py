"""Small plots drawn with Pillow (curves, points, lines and shaded decision regions), for the pictures of the
Foundations tab: no plotting library needed, and every picture is a plain PIL image like the sampler's grids."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image, ImageDraw
from torch import Tensor

COLORS = {0: (31, 119, 180), 1: (255, 127, 14)}          # class 0 blue, class 1 orange (and two curves)
SHADES = {0: (214, 229, 244), 1: (255, 226, 199)}        # the regions where a model answers 0 or 1
GREY, BLACK, GREEN = (190, 190, 190), (0, 0, 0), (44, 160, 44)


class Canvas:
    """A white picture with data coordinates x ∈ x_range, y ∈ y_range mapped onto it (y grows upward)."""

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
            self.draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=COLORS[int(k)], outline=BLACK)
        return self

    def title(self, text: str) -> Canvas:
        self.draw.text((self.margin, 8), text, fill=BLACK)
        return self
