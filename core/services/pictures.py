"""Pictures out: image batches as enlarged grids, and the files an app answers with.

Pictures come back enlarged SCALE times with nearest neighbour so that 28-pixel images stay crisp in a browser.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path

import torch
from PIL import Image

from core.images import grid_picture

SCALE = 3                      # every picture is enlarged 3x (a 28-pixel image is shown 84 pixels wide)


def grid_image(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """A batch (B, C, H, W) in [-1, 1] as one enlarged grid picture."""
    return grid_picture(images, nrow, SCALE)


def single_image(image: torch.Tensor) -> Image.Image:
    """A single (C, H, W) image in [-1, 1], enlarged, without a frame."""
    return grid_picture(image[None], 1, SCALE, padding=0)


def side_by_side(pictures: list[Image.Image]) -> Image.Image:
    """Equal-sized pictures in one row."""
    row = Image.new(pictures[0].mode, (sum(p.width for p in pictures), pictures[0].height))
    for i, p in enumerate(pictures):
        row.paste(p, (i * p.width, 0))
    return row


class OutputFiles:
    """The files an app answers with: each picture in its own uniquely named file (Gradio names PIL outputs by
    content, and two identical concurrent answers would share one half-written file), the oldest removed beyond
    `keep`, and the whole folder removed by `close()` (the app calls it on exit)."""

    def __init__(self, keep: int = 2000):
        self.folder = Path(tempfile.mkdtemp(prefix="genlab-sampler-"))
        self.keep = keep
        self._written: deque[Path] = deque()
        self._lock = threading.Lock()

    def _new(self, suffix: str) -> Path:
        path = self.folder / f"{uuid.uuid4().hex}{suffix}"
        with self._lock:
            self._written.append(path)
            while len(self._written) > self.keep:
                self._written.popleft().unlink(missing_ok=True)
        return path

    def png(self, picture: Image.Image) -> str:
        path = self._new(".png")
        picture.save(path)
        return str(path)

    def gif(self, frames: list[Image.Image], duration_ms: int = 120, bounce: bool = True) -> str:
        """A looping animation that goes there and back (with bounce) or starts over."""
        path = self._new(".gif")
        frames = frames + frames[-2:0:-1] if bounce else frames
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
        return str(path)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
