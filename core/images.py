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


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a grid PNG atomically (a reader never sees half a file); `scale` enlarges with nearest neighbour."""
    path = Path(path)
    picture = to_pil(make_grid(images, nrow))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    picture.save(tmp)
    tmp.replace(path)
    return path
