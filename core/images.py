"""Image grids as PNG, without torchvision: (N, C, H, W) in [-1, 1] -> one uint8 picture."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image
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


def scatter_plot(points: Tensor, labels: Tensor, names: list[str], size: int = 560, limit: float = 4.0) -> Image.Image:
    """A 2-D scatter, one colour per class, with a legend: the picture of a 2-D latent space (no matplotlib)."""
    from PIL import ImageDraw
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
    draw.text((size - 60, size - 25), f"z1, ±{limit:g}", fill="black")
    draw.text((14, 12), "z2", fill="black")
    return picture
