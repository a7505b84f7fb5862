"""What the apps call: shipped or Hub models loaded once, every request checked, pictures out.

Each function here serves one app event (apps/sampler.py is widgets and wiring only). Its inputs may come from a
browser or straight from an API client, which bypasses every slider and dropdown, so each value is checked here and
a bad one raises `RequestError` with a message that says what is allowed. The limits below bound the work one
request can ask for. Pictures come back as PIL images, enlarged SCALE times with nearest neighbour so that 28-pixel
images stay crisp in a browser.
"""
from __future__ import annotations

import functools
import json
import math
import re
import threading
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from core.attacks import fgsm, pgd
from core.data import FASHION_CLASSES, image_to_tensor
from core.hub import CheckpointError, load_model, read_manifest, resolve
from core.images import grid_picture
from core.models.ddpm import MAX_STEPS as MAX_DIFFUSION_STEPS
from core.schedulers import SCHEDULERS

SCALE = 3                      # every picture is enlarged 3x (a 28-pixel image is shown 84 pixels wide)
MAX_IMAGES = 64                # images per request
MAX_SEED = 2**31 - 1
MAX_PATH = 32                  # images along an interpolation
MAX_DIFFUSION_WORK = 16_000    # images x steps per request: 16 images at 1000 steps, 64 at 250 (~30 s on 2 cores)
MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MB
MAX_UPLOAD_PIXELS = 25_000_000 # 5000 x 5000; checked from the file header, before decoding
MAX_EPS = 0.5                  # attack budget, a fraction of the pixel range (core.attacks)
ATTACKS = ("fgsm", "fgsm_targeted", "pgd")
FAMILY_CLASS = {"gan": "GAN", "vae": "VAE", "ddpm": "DDPM", "cyclegan": "CycleGAN", "classifier": "Classifier"}
STREAM_FRAMES = 20             # pictures streamed during one denoising run
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")   # owner/name or owner/name@revision
_load_lock = threading.Lock()


class RequestError(ValueError):
    """Bad input from a user or an API caller; the message says what is allowed."""


# ------------------------------------------------------------------------------------------------ checking input
def integer(value, name: str, low: int, high: int) -> int:
    """A whole number in [low, high]; 3.0 is accepted, 2.5, NaN, None, True and "3" are not."""
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not whole or not low <= value <= high:
        raise RequestError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:   # NaN fails too
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def choice(value, name: str, options) -> str:
    if value not in options:
        raise RequestError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


def read_image(upload) -> Image.Image:
    """An uploaded file (a path, or Gradio's file dict with a "path") opened with our own limits: at most
    MAX_UPLOAD_BYTES and MAX_UPLOAD_PIXELS (read from the header before any pixel is decoded)."""
    allowed = (f"upload a PNG, JPEG, WebP, GIF, BMP or TIFF image of at most {MAX_UPLOAD_BYTES // 2**20} MB and "
               f"{MAX_UPLOAD_PIXELS:,} pixels, or pick an example")
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not isinstance(path, (str, Path)) or not path:
        raise RequestError(f"no image: {allowed}")
    path = Path(path)
    if not path.is_file():
        raise RequestError(f"the image file is missing: {allowed}")
    size = path.stat().st_size
    if not 0 < size <= MAX_UPLOAD_BYTES:
        raise RequestError(f"the file has {size:,} bytes: {allowed}")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise RequestError(f"the image is {image.width}x{image.height} pixels: {allowed}")
            image.load()                                    # decoded now; usable after the file closes
            return image
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(f"{path.name} is not a readable image ({type(exc).__name__}): {allowed}") from exc


def to_model_input(image: Image.Image, size: int = 28) -> tuple[torch.Tensor, bool]:
    """Any picture as the models see Fashion-MNIST: grey, a light object on black, centred on a square, size x size
    pixels, in [-1, 1]. A picture whose border is light (a photo on white) is inverted first; says whether it was."""
    grey = image.convert("L")
    border = [grey.getpixel((x, y)) for x in (0, grey.width - 1) for y in range(0, grey.height, max(1, grey.height // 8))]
    inverted = sum(border) / len(border) > 127
    pixels = image_to_tensor(ImageOps.invert(grey) if inverted else grey, size, channels=1)
    return pixels.float() / 127.5 - 1.0, inverted


# -------------------------------------------------------------------------------------------------------- models
def model_names(family: str) -> list[str]:
    """Names in the manifest (checkpoints/index.json, or GENLAB_MANIFEST) of one family, in manifest order."""
    return [name for name, entry in read_manifest().items() if entry["family"] == family]


def checked_spec(spec, family: str) -> str:
    """A manifest name or a Hub repo id. Local paths are not taken from requests (a public app would read any
    folder); to serve your own checkpoints, list them in a manifest and point GENLAB_MANIFEST at it."""
    if isinstance(spec, str) and (spec in read_manifest() or (len(spec) <= 200 and HUB_ID.fullmatch(spec))):
        return spec
    raise RequestError(f"model must be one of {', '.join(model_names(family))} or a Hub repo id such as "
                       f"owner/name@revision, got {spec!r}")


def model(spec, family: str):
    """A manifest name or a Hub repo id, loaded once (through core.hub) and cached."""
    spec = checked_spec(spec, family)
    with _load_lock:
        return _load(spec, family)


@functools.lru_cache(maxsize=16)
def _load(spec: str, family: str):
    try:
        loaded = load_model(spec)
    except (CheckpointError, OSError) as exc:
        raise RequestError(f"cannot load model {spec!r}: {exc}") from exc
    if type(loaded).__name__ != FAMILY_CLASS[family]:
        raise RequestError(f"{spec!r} is a {type(loaded).__name__}; this needs a {FAMILY_CLASS[family]}")
    return loaded.eval().requires_grad_(False)


def conditional(spec, family: str) -> bool:
    """Whether a model takes a class label, read from its config.json (nothing is loaded)."""
    try:
        config = json.loads((resolve(checked_spec(spec, family)) / "config.json").read_text())
    except (CheckpointError, OSError, json.JSONDecodeError, TypeError) as exc:
        raise RequestError(f"cannot read the config of {spec!r}: {exc}") from exc
    return bool(config.get("num_classes")) if isinstance(config, dict) else False


def figures(spec: str) -> dict:
    """The measured figures of a checkpoint (its eval.json), for the apps' About sections; {} if it has none."""
    try:
        path = resolve(spec) / "eval.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    except (CheckpointError, OSError, json.JSONDecodeError):
        return {}


@functools.cache
def bf16() -> bool:
    """bf16 autocast for the U-Net only where the CPU has AMX (2.5x faster here); elsewhere it would be slower."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------------ pictures
def picture(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    return grid_picture(images, nrow, SCALE)


def one(image: torch.Tensor) -> Image.Image:
    """A single (C, H, W) image in [-1, 1], enlarged, without a frame."""
    return grid_picture(image[None], 1, SCALE, padding=0)


def strip(pictures: list[Image.Image]) -> Image.Image:
    """Equal-sized pictures side by side."""
    row = Image.new(pictures[0].mode, (sum(p.width for p in pictures), pictures[0].height))
    for i, p in enumerate(pictures):
        row.paste(p, (i * p.width, 0))
    return row


def class_index(value):
    """Dropdowns of classes hold integers, which Gradio's API description lists as strings: take "3" as 3."""
    return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 4 else value


def label_argument(value, model, name: str = "label") -> int | None:
    """-1 (or None) means every class in turn; otherwise a class index the model knows."""
    value = class_index(value)
    if value is None or value == -1:
        return None
    classes = model.config.num_classes
    if not classes:
        raise RequestError(f"this model is unconditional: {name} must be -1 (none)")
    return integer(value, name, -1, classes - 1)


# ---------------------------------------------------------------------------------------------------------- GAN
def gan_sample(spec, n, seed, label=-1) -> Image.Image:
    gan = model(spec, "gan")
    n, seed, label = integer(n, "n", 1, MAX_IMAGES), integer(seed, "seed", 0, MAX_SEED), label_argument(label, gan)
    labels = torch.full((n,), label) if label is not None else None
    return picture(gan.sample(n, seed, labels))


def gan_interpolate(spec, seed_a, seed_b, steps, spherical=True, label=-1) -> list[Image.Image]:
    """The images along a slerp (or lerp) path between two seeds' latent points, one picture per step."""
    gan = model(spec, "gan")
    seed_a, seed_b = integer(seed_a, "seed_a", 0, MAX_SEED), integer(seed_b, "seed_b", 0, MAX_SEED)
    steps, label = integer(steps, "steps", 2, MAX_PATH), label_argument(label, gan)
    if not isinstance(spherical, bool):
        raise RequestError(f"spherical must be true or false, got {spherical!r}")
    if gan.conditional and label is None:
        label = 0
    return [one(image) for image in gan.interpolate(seed_a, seed_b, steps, spherical, label)]


def gan_class_grid(spec, per_class, seed) -> Image.Image:
    gan = model(spec, "gan")
    if not gan.conditional:
        raise RequestError(f"{spec!r} is unconditional: the class grid needs a conditional GAN such as cgan")
    per_class, seed = integer(per_class, "per_class", 1, 10), integer(seed, "seed", 0, MAX_SEED)
    return picture(gan.class_grid(per_class, seed), per_class)


# ---------------------------------------------------------------------------------------------------------- VAE
def vae_sample(spec, n, seed) -> Image.Image:
    vae = model(spec, "vae")
    return picture(vae.sample(integer(n, "n", 1, MAX_IMAGES), integer(seed, "seed", 0, MAX_SEED)))


def vae_reconstruct(spec, upload) -> tuple[Image.Image, Image.Image]:
    """(what the model saw, decode(μ(x)))."""
    vae = model(spec, "vae")
    x, _ = to_model_input(read_image(upload))
    return one(x), one(vae.reconstruct(x[None])[0])


def vae_interpolate(spec, upload_a, upload_b, steps) -> Image.Image:
    vae = model(spec, "vae")
    steps = integer(steps, "steps", 2, MAX_PATH)
    x_a, x_b = to_model_input(read_image(upload_a))[0], to_model_input(read_image(upload_b))[0]
    return picture(vae.interpolate(x_a, x_b, steps), steps)


def vae_traverse(spec, upload, dim, span=3.0, steps=9) -> Image.Image:
    """μ(x) with one latent coordinate swept from −span to span (Higgins et al.'s traversal), as a strip."""
    vae = model(spec, "vae")
    dim = integer(dim, "dim", 0, vae.config.latent_dim - 1)
    span, steps = number(span, "span", 0.0, 10.0), integer(steps, "steps", 2, MAX_PATH)
    x, _ = to_model_input(read_image(upload))
    return picture(vae.traverse(x, dim, span, steps), steps)


def vae_compare(upload, seed, ae: str = "autoencoder", vae: str = "vae") -> tuple[Image.Image, Image.Image]:
    """MSE blur, side by side: (input | autoencoder | VAE reconstructions, 8 prior samples of each as two rows)."""
    autoencoder, variational = model(ae, "vae"), model(vae, "vae")
    x, _ = to_model_input(read_image(upload))
    seed = integer(seed, "seed", 0, MAX_SEED)
    reconstructions = torch.stack([x, autoencoder.reconstruct(x[None])[0], variational.reconstruct(x[None])[0]])
    samples = torch.cat([autoencoder.sample(8, seed), variational.sample(8, seed)])
    return picture(reconstructions, 3), picture(samples, 8)


def vae_latent_plane(upload, spec: str = "vae-2d", side: int = 15) -> tuple[Image.Image, tuple[float, float]]:
    """The 2-D VAE's latent plane (decoded N(0, 1) quantiles) with μ(x) of the image marked by a red ring.
    The grid's cells sit at equally spaced quantiles, so a point's position along an axis is Φ(z), not z."""
    vae = model(spec, "vae")
    if vae.config.latent_dim != 2:
        raise RequestError(f"{spec!r} has a {vae.config.latent_dim}-D latent space; the plane needs a 2-D one")
    grid = picture(vae.latent_grid(side), side).convert("RGB")
    z = vae.encode(to_model_input(read_image(upload))[0][None])[0][0]
    low, high, cell = 0.05, 0.95, (vae.config.image_size + 2) * SCALE
    phi = torch.distributions.Normal(0.0, 1.0).cdf(z).clamp(low, high)
    centre = lambda p: 2 * SCALE + cell * (p - low) / (high - low) * (side - 1) + (cell - 2 * SCALE) / 2
    x, y = centre(float(phi[0])), centre(float(high + low - phi[1]))          # z₂ rises bottom to top
    draw, radius = ImageDraw.Draw(grid), cell * 0.6
    for width, colour in ((7, "white"), (4, "red")):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=width)
    return grid, (float(z[0]), float(z[1]))


# --------------------------------------------------------------------------------------------------------- DDPM
def ddpm_denoise(spec, n, steps, scheduler, eta, seed, label=-1, guidance_scale=1.0
                 ) -> Iterator[tuple[int, int, Image.Image, Image.Image | None]]:
    """Yield (step, steps, grid of x_t, None) about STREAM_FRAMES times while the reverse process runs, then
    (steps, steps, grid of x_0, strip): the strip shows the first (up to 4) images at 10 moments of the run."""
    ddpm = model(spec, "ddpm")
    n, steps = integer(n, "n", 1, MAX_IMAGES), integer(steps, "steps", 1, MAX_DIFFUSION_STEPS)
    scheduler, eta = choice(scheduler, "scheduler", tuple(SCHEDULERS)), number(eta, "eta", 0.0, 1.0)
    seed, label = integer(seed, "seed", 0, MAX_SEED), label_argument(label, ddpm)
    guidance_scale = number(guidance_scale, "guidance_scale", 0.0, 20.0)
    if n * steps > MAX_DIFFUSION_WORK:
        raise RequestError(f"n x steps must be at most {MAX_DIFFUSION_WORK:,} (e.g. 16 images at 1000 steps or 64 at "
                           f"250), got {n} x {steps} = {n * steps:,}")
    if not ddpm.conditional and guidance_scale != 1.0:
        raise RequestError("guidance_scale needs a conditional model (ddpm-cond); it must be 1 here")
    rows = min(n, 4)
    moments = {round(k * (steps - 1) / 9) for k in range(10)}
    strip = []
    for i, x_t, _ in ddpm.denoise(n, steps, scheduler, seed, guidance_scale, label, eta, bf16=bf16()):
        if i in moments:
            strip.append(x_t[:rows].clamp(-1, 1).cpu())
        if i == steps - 1:
            columns = torch.stack(strip, dim=1).flatten(0, 1)                  # (rows * 10, C, H, W), row-major
            yield steps, steps, picture(x_t.clamp(-1, 1).cpu()), picture(columns, len(strip))
        elif (i + 1) * STREAM_FRAMES // steps > i * STREAM_FRAMES // steps:      # STREAM_FRAMES evenly spread
            yield i + 1, steps, picture(x_t.clamp(-1, 1).cpu()), None


# ----------------------------------------------------------------------------------------------------- CycleGAN
def cyclegan_translate(spec, upload, direction) -> tuple[Image.Image, Image.Image, Image.Image, bool]:
    """(what the model saw, translation, cycle reconstruction, whether the upload was inverted)."""
    cyclegan = model(spec, "cyclegan")
    direction = choice(direction, "direction", ("a2b", "b2a"))
    x, inverted = to_model_input(read_image(upload))
    translated, reconstructed = cyclegan.translate(x, direction)
    return one(x), one(translated), one(reconstructed), inverted


# --------------------------------------------------------------------------------------------------------- FGSM
def top_classes(logits: torch.Tensor, k: int = 3) -> dict[str, float]:
    probabilities = logits.softmax(-1)
    values, index = probabilities.topk(k)
    return {FASHION_CLASSES[i]: float(v) for v, i in zip(values, index)}


def fgsm_attack(spec, upload, attack, eps, target=0) -> tuple[Image.Image, Image.Image, Image.Image, dict, dict]:
    """(image, perturbation amplified to the full grey range, adversarial image, top-3 before, top-3 after).
    Untargeted attacks push away from the classifier's own prediction; targeted FGSM pulls toward `target`."""
    classifier = model(spec, "classifier")
    attack, eps = choice(attack, "attack", ATTACKS), number(eps, "eps", 0.0, MAX_EPS)
    target = integer(class_index(target), "target", 0, len(FASHION_CLASSES) - 1)
    x, _ = to_model_input(read_image(upload))
    x = x[None]
    with torch.no_grad():
        before = classifier(x)[0]
    with torch.enable_grad():
        if attack == "fgsm_targeted":
            adversarial = fgsm(classifier, x, torch.tensor([target]), eps, targeted=True)
        elif attack == "fgsm":
            adversarial = fgsm(classifier, x, before.argmax()[None], eps)
        else:
            adversarial = pgd(classifier, x, before.argmax()[None], eps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = classifier(adversarial)[0]
    delta = adversarial[0] - x[0]
    amplified = (delta / (2 * eps)).clamp(-1, 1) if eps > 0 else delta     # ±ε -> black / white, 0 -> grey
    return one(x[0]), one(amplified), one(adversarial[0]), top_classes(before), top_classes(after)


def robustness_table(specs: list[str]) -> list[dict]:
    """Rows (model, eps, accuracy) of each classifier's FGSM curve on the test set, from its model card."""
    rows = []
    for spec in specs:
        scores = figures(spec)
        points = {0.0: scores.get("accuracy")} | {float(key.rsplit("eps", 1)[1]): value for key, value in scores.items()
                                                  if key.startswith("fgsm_accuracy_eps")}
        rows += [{"model": spec, "eps": eps, "accuracy": acc} for eps, acc in sorted(points.items()) if acc is not None]
    return rows


FIGURES = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall", "classes_covered": "classes",
           "kl_to_uniform": "KL to uniform", "conditional_accuracy": "conditional accuracy", "neg_elbo": "−ELBO (nats)",
           "neg_iwae": "IWAE bound (nats)", "mse": "MSE", "accuracy": "test accuracy",
           "fgsm_accuracy_eps0.1": "FGSM accuracy at ε = 0.1", "a2b_domain_accuracy": "A→B domain accuracy",
           "b2a_domain_accuracy": "B→A domain accuracy", "a2b_fid": "A→B FID", "b2a_fid": "B→A FID",
           "samples": "samples measured"}


def figures_markdown(specs: list[str]) -> str:
    """The headline figures of each checkpoint's card as one Markdown table (a column per model)."""
    scores = {spec: figures(spec) for spec in specs}
    keys = [key for key in FIGURES if any(isinstance(s.get(key), (int, float)) for s in scores.values())]
    if not keys:
        return ""
    cell = lambda v: "" if not isinstance(v, (int, float)) else f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    lines = ["| | " + " | ".join(f"`{spec}`" for spec in specs) + " |", "|---" * (len(specs) + 1) + "|"]
    lines += [f"| {FIGURES[key]} | " + " | ".join(cell(scores[spec].get(key)) for spec in specs) + " |" for key in keys]
    return "\n".join(lines)
