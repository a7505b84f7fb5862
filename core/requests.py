"""What an app request may carry: whole numbers, numbers and choices in range, and uploaded images.

Inputs may come from a browser or straight from an API client, which bypasses every slider and dropdown, so each
value is checked here, and a bad one raises `RequestError` with a message that says what is allowed. Echoed values
are cut to ECHO characters, and no message names a server path.

Uploads are client-chosen paths: the sampler takes its file inputs unprocessed, and Gradio only vets references
that carry its own file tag, so `{"path": "/etc/passwd"}` would reach us as is. `read_image` resolves the path
(symlinks, `..`) and opens only files inside `upload_roots()` (Gradio's upload cache and the shipped examples),
with an explicit list of image formats, at most MAX_UPLOAD_BYTES and MAX_UPLOAD_PIXELS (read from the header
before any pixel is decoded). Every refusal of a path says the same thing, so a caller learns nothing of the disk.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.data import image_to_tensor

MAX_SEED = 2**31 - 1
MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MB
MAX_UPLOAD_PIXELS = 25_000_000 # 5000 x 5000; checked from the file header, before decoding
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")   # what Pillow may open: no EPS (Ghostscript), ...
EXAMPLES = Path(__file__).resolve().parents[1] / "apps" / "examples"
ECHO = 80                      # characters of a bad value repeated in a message


class RequestError(ValueError):
    """Bad input from a user or an API caller; the message says what is allowed, `field` which input it was (None
    where no single one: a cost over the cap)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def shown(value) -> str:
    """repr(value), cut to ECHO characters."""
    text = repr(value)
    return text if len(text) <= ECHO else text[:ECHO - 3] + "..."


SERVER_PATH = re.compile(r"(?<![\w:/.])(/[\w.@+-]+)+/?")      # an absolute path, not a URL's path


def without_paths(text: str) -> str:
    """A message for a client: server paths (cache folders, checkpoints) replaced by "<server path>"."""
    return SERVER_PATH.sub("<server path>", str(text))


def whole_number(value, name: str, low: int, high: int) -> int:
    """A whole number in [low, high]; 3.0 is accepted, 2.5, NaN, None, True and "3" are not."""
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not whole or not low <= value <= high:
        raise RequestError(f"{name} must be a whole number from {low} to {high}, got {shown(value)}", name)
    return int(value)


def real_number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:   # NaN fails too
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}, got {shown(value)}", name)
    return float(value)


def one_of(value, name: str, options) -> str:
    if isinstance(value, (list, dict)) or value not in options:
        raise RequestError(f"{name} must be one of {', '.join(map(str, options))}; got {shown(value)}", name)
    return value


def class_index(value):
    """Dropdowns of classes hold integers, which Gradio's API description lists as strings: take "3" as 3."""
    return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 4 else value


# ---------------------------------------------------------------------------------------------------- uploads
def upload_roots() -> tuple[Path, ...]:
    """Where an image may be read from: Gradio's upload cache ($GRADIO_TEMP_DIR, else <tmp>/gradio, as Gradio
    decides) and the shipped examples."""
    cache = os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio"
    return Path(cache).resolve(), EXAMPLES


def allowed_file(upload, roots: tuple[Path, ...]) -> Path | None:
    """The resolved path of an upload when it is an existing file inside one of `roots`, else None."""
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not isinstance(path, (str, Path)) or not str(path) or len(str(path)) > 4096 or "\0" in str(path):
        return None
    try:
        resolved = Path(path).resolve()
        inside = any(resolved.is_relative_to(root.resolve()) for root in roots)
        return resolved if inside and resolved.is_file() else None
    except (OSError, ValueError, RuntimeError):
        return None


def read_image(upload, roots: tuple[Path, ...] | None = None) -> Image.Image:
    """An uploaded file (a path, or Gradio's file dict with a "path") inside `roots` (default `upload_roots()`),
    opened with our own limits."""
    allowed = (f"upload a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image of at most "
               f"{MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_PIXELS:,} pixels, or pick an example")
    if upload is None or upload == "" or (isinstance(upload, dict) and not upload.get("path")):
        raise RequestError(f"no image: {allowed}")
    path = allowed_file(upload, roots if roots is not None else upload_roots())
    if path is None:
        raise RequestError(f"that file was not uploaded to this app: {allowed}")
    if not 0 < path.stat().st_size <= MAX_UPLOAD_BYTES:
        raise RequestError(f"the file is empty or larger than {MAX_UPLOAD_BYTES // 2**20} MB: {allowed}")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise RequestError(f"the image is {image.width}x{image.height} pixels: {allowed}")
            image.load()                                    # decoded now; usable after the file closes
            return image
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(f"the file is not a readable image ({type(exc).__name__}): {allowed}") from exc


def to_model_input(image: Image.Image, size: int = 28) -> tuple[torch.Tensor, bool]:
    """Any picture as the models see Fashion-MNIST: grey, a light object on black, centred on a square, size x size
    pixels, in [-1, 1]. A picture whose border is light (a photo on white) is inverted first; says whether it was."""
    grey = image.convert("L")
    border = [grey.getpixel((x, y)) for x in (0, grey.width - 1) for y in range(0, grey.height, max(1, grey.height // 8))]
    inverted = sum(border) / len(border) > 127
    pixels = image_to_tensor(ImageOps.invert(grey) if inverted else grey, size, channels=1)
    return pixels.float() / 127.5 - 1.0, inverted
