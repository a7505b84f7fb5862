"""What the apps call: one small service per family over a loaded model, checked requests in, pictures out.

    load_pipeline("dcgan", "gan").sample(n=16, seed=0)          -> PIL picture of a grid
    load_pipeline("ddpm", "ddpm").denoise(n, steps, ...)        -> pictures streamed while the reverse process runs

`load_pipeline` takes a manifest name or a Hub repo id (never a local path: a public app would read any folder),
loads the model once through core.hub, checks its family, and caches the service; each model has its own loading
lock, so a slow download of one repo never holds up requests for another. Every method checks its arguments
(core.requests) because API callers bypass the sliders; the bounds come from the models (steps, guidance, η) or are
written once below (images per request, path lengths). Pictures come back enlarged SCALE times with nearest
neighbour so that 28-pixel images stay crisp in a browser.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image, ImageDraw

from core.attacks import fgsm, pgd
from core.checkpoint import CheckpointError
from core.data import FASHION_CLASSES, edge_map, image_to_tensor, to_float, to_uint8
from core.families import FAMILIES
from core.hub import load_model, read_manifest, resolve
from core.images import PALETTE, Canvas, grid_picture, scatter_plot
from core.model import TrainableModel, fast_precision
from core.models import ddpm as diffusion
from core.models import perceptron as foundations
from core.models import stylegan as style
from core.models.simclr import principal_plane
from core.requests import MAX_SEED, RequestError, class_index, one_of, read_image, real_number, shown, \
    to_model_input, whole_number, without_paths
from core.schedulers import SCHEDULERS

SCALE = 3                      # every picture is enlarged 3x (a 28-pixel image is shown 84 pixels wide)
MAX_IMAGES = 64                # images per request
MAX_PATH = 32                  # images along an interpolation or a latent sweep
MAX_PER_CLASS = 10             # samples per class in a class grid
MAX_SPAN = 10.0                # a latent sweep goes from -span to +span
MAX_DIFFUSION_WORK = 16_000    # images x steps x network passes (2 with guidance) per request (~30-60 s on 2 cores)
LARGE_DIFFUSION_WORK = 2_000   # above this a diffusion request is large: one large request runs at a time
DIFFUSION_BUDGET_S = 90.0      # wall time one denoising request may take
MAX_PENDING_PER_CLIENT = 2     # diffusion requests one client (session) may have queued or running
LOAD_WAIT_S = 30.0             # how long a request waits for another request loading the same model
MAX_HUB_BYTES = 50 * 2**20     # model files of a Hub repo named in a request (the shipped models are all smaller)
HUB_IDS = "GENLAB_HUB_IDS"     # environment switch: "off" serves the manifest's models only (a public Space)
MAX_EPS = 0.5                  # attack budget, a fraction of the pixel range (core.attacks)
ATTACKS = ("fgsm", "fgsm_targeted", "pgd")
STREAM_FRAMES = 20             # pictures streamed during one denoising run
MAX_HIDDEN = 64                # hidden units of the universal-approximation fit
ANIMATION_FRAMES = 30          # pictures in a Foundations training animation
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")   # owner/name or owner/name@revision


# ------------------------------------------------------------------------------------------------------ pictures
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


# -------------------------------------------------------------------------------------------------------- models
def model_names(family: str) -> list[str]:
    """Names in the manifest (checkpoints/index.json, or GENLAB_MANIFEST) of one family, in manifest order."""
    return [name for name, entry in read_manifest().items() if entry["family"] == family]


def hub_ids_allowed() -> bool:
    return os.environ.get(HUB_IDS, "on").lower() not in ("off", "0", "false", "no")


def checked_spec(spec, family: str) -> str:
    """A manifest name or (unless $GENLAB_HUB_IDS is off) a Hub repo id. Local paths are not taken from requests
    (a public app would read any folder); to serve your own checkpoints, list them in a manifest and point
    GENLAB_MANIFEST at it."""
    hub = hub_ids_allowed()
    if isinstance(spec, str) and (spec in read_manifest() or (hub and len(spec) <= 200 and HUB_ID.fullmatch(spec))):
        return spec
    other = " or a Hub repo id such as owner/name@revision" if hub else ""
    raise RequestError(f"model must be one of {', '.join(model_names(family))}{other}, got {shown(spec)}", "model")


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def load_pipeline(spec, family: str) -> "Pipeline":
    """The cached service of a manifest name or Hub repo id, for one family."""
    spec = checked_spec(spec, family)
    with _locks_guard:
        lock = _locks.setdefault(spec, threading.Lock())
    if not lock.acquire(timeout=LOAD_WAIT_S):   # one load per model; other models load (and answer) meanwhile
        raise RequestError(f"model {spec!r} is still being loaded for another request; try again in a minute")
    try:
        return _load(spec, family)
    finally:
        lock.release()


@functools.lru_cache(maxsize=16)
def _load(spec: str, family: str) -> "Pipeline":
    try:
        model = load_model(spec, allow_local=False, max_bytes=None if spec in read_manifest() else MAX_HUB_BYTES)
    except (CheckpointError, OSError) as exc:
        raise RequestError(f"cannot load model {spec!r}: {without_paths(exc)}") from exc
    if not isinstance(model, FAMILIES[family]):
        raise RequestError(f"{spec!r} is a {type(model).__name__}; this needs a {FAMILIES[family].__name__}")
    return PIPELINES[family](model.eval().requires_grad_(False), spec)


def model_config(spec, family: str) -> dict:
    """A model's config.json as a dict (nothing is loaded)."""
    try:
        config = json.loads((resolve(checked_spec(spec, family), allow_local=False) / "config.json").read_text())
    except (CheckpointError, OSError, json.JSONDecodeError, TypeError) as exc:
        raise RequestError(f"cannot read the config of {spec!r}: {without_paths(exc)}") from exc
    return config if isinstance(config, dict) else {}


def is_conditional(spec, family: str) -> bool:
    """Whether a model takes a class label."""
    return bool(model_config(spec, family).get("num_classes"))


def sampler_names(spec) -> tuple[str, ...]:
    """The names of the schedulers that can sample a diffusion-family model, its own first (read from its config, so
    nothing is loaded)."""
    return diffusion.own_samplers(model_config(spec, "ddpm"))


def default_guidance(spec) -> float:
    """The guidance scale a diffusion-family model's card was measured at: its eval_guidance if it is guided
    (class-conditional or autoguided), else 1 (read from its config, so nothing is loaded)."""
    scale = diffusion.own_guidance(model_config(spec, "ddpm"))
    return real_number(scale, "the config's eval_guidance", *diffusion.GUIDANCE_RANGE)


def default_steps(spec) -> int:
    """The sampling steps a diffusion-family model's card was measured at: its eval_steps (read from its config)."""
    steps = model_config(spec, "ddpm").get("eval_steps", diffusion.DDPMConfig.eval_steps)
    return whole_number(steps, "the config's eval_steps", 1, diffusion.MAX_STEPS)


def diffusion_defaults(spec) -> tuple[tuple[str, ...], float, int]:
    """What a diffusion-family model's card was measured with: its schedulers (its own first), guidance and steps."""
    return sampler_names(spec), default_guidance(spec), default_steps(spec)


def label_or_none(value, model, name: str = "label") -> int | None:
    """-1 (or None) means every class in turn; otherwise a class index the model knows."""
    value = class_index(value)
    if value is None or value == -1:
        return None
    classes = model.config.num_classes
    if not classes:
        raise RequestError(f"this model is unconditional: {name} must be -1 (none)")
    return whole_number(value, name, -1, classes - 1)


class Pipeline:
    """A loaded model and the requests one app tab makes of it."""

    def __init__(self, model: TrainableModel, name: str):
        self.model, self.name = model, name


# ---------------------------------------------------------------------------------------------------------- GAN
class GANPipeline(Pipeline):
    def sample(self, n, seed, label=-1) -> Image.Image:
        n, seed = whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)
        label = label_or_none(label, self.model)
        labels = torch.full((n,), label) if label is not None else None
        return grid_image(self.model.sample(n, seed, labels))

    def interpolate(self, seed_a, seed_b, steps, spherical=True, label=-1) -> list[Image.Image]:
        """The images along a slerp (or lerp) path between two seeds' latent points, one picture per step."""
        seed_a, seed_b = whole_number(seed_a, "seed_a", 0, MAX_SEED), whole_number(seed_b, "seed_b", 0, MAX_SEED)
        steps, label = whole_number(steps, "steps", 2, MAX_PATH), label_or_none(label, self.model)
        if not isinstance(spherical, bool):
            raise RequestError(f"spherical must be true or false, got {shown(spherical)}")
        if self.model.conditional and label is None:
            label = 0
        return [single_image(image) for image in self.model.interpolate(seed_a, seed_b, steps, spherical, label)]

    def class_grid(self, per_class, seed) -> Image.Image:
        if not self.model.conditional:
            raise RequestError(f"{self.name!r} is unconditional: the class grid needs a conditional GAN such as cgan")
        per_class, seed = whole_number(per_class, "per_class", 1, MAX_PER_CLASS), whole_number(seed, "seed", 0, MAX_SEED)
        return grid_image(self.model.class_grid(per_class, seed), per_class)


# ----------------------------------------------------------------------------------------------------- StyleGAN
MAX_MIX_SOURCES = 6            # sources along each side of a style-mixing grid
NOISE_DRAWS = 8                # noise draws shown for one w


class StyleGANPipeline(Pipeline):
    def psi(self, value) -> float:
        return real_number(value, "psi", *style.PSI_RANGE)

    def sample(self, n, seed, psi) -> Image.Image:
        n, seed = whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)
        return grid_image(self.model.sample(n, seed, self.psi(psi)))

    def style_mix(self, row_seed, column_seed, rows, columns, crossover, psi) -> Image.Image:
        """Rows take the coarse styles (layers before `crossover`) of sources A = row_seed, row_seed + 1, ...;
        columns the fine styles of sources B = column_seed, ...; the sources themselves along the top and left."""
        row_seed = whole_number(row_seed, "row_seed", 0, MAX_SEED - MAX_MIX_SOURCES)
        column_seed = whole_number(column_seed, "column_seed", 0, MAX_SEED - MAX_MIX_SOURCES)
        rows, columns = (whole_number(v, name, 1, MAX_MIX_SOURCES) for v, name in ((rows, "rows"), (columns, "columns")))
        crossover = whole_number(crossover, "crossover", 1, self.model.num_ws - 1)
        grid = self.model.style_mix(list(range(row_seed, row_seed + rows)),
                                    list(range(column_seed, column_seed + columns)), crossover, self.psi(psi))
        return grid_image(grid, columns + 1)

    def noise(self, seed, psi) -> tuple[Image.Image, Image.Image]:
        """(NOISE_DRAWS images of one w with different noise, [no noise, per-pixel spread over the draws])."""
        variants, quiet, spread = self.model.noise_variants(whole_number(seed, "seed", 0, MAX_SEED), NOISE_DRAWS,
                                                            self.psi(psi))
        return grid_image(variants, NOISE_DRAWS), grid_image(torch.cat([quiet, spread]), 2)

    def interpolate(self, seed_a, seed_b, steps, psi) -> Image.Image:
        """Two strips: the straight line between the seeds in W (top) and in Z (bottom)."""
        seed_a, seed_b = whole_number(seed_a, "seed_a", 0, MAX_SEED), whole_number(seed_b, "seed_b", 0, MAX_SEED)
        steps, psi = whole_number(steps, "steps", 2, MAX_PATH), self.psi(psi)
        return grid_image(torch.cat([self.model.interpolate(seed_a, seed_b, steps, space, psi)
                                     for space in ("w", "z")]), steps)


# ---------------------------------------------------------------------------------------------------------- VAE
class VAEPipeline(Pipeline):
    def sample(self, n, seed) -> Image.Image:
        return grid_image(self.model.sample(whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)))

    def reconstruct(self, upload) -> tuple[Image.Image, Image.Image]:
        """(what the model saw, decode(μ(x)))."""
        x, _ = to_model_input(read_image(upload))
        return single_image(x), single_image(self.model.reconstruct(x[None])[0])

    def interpolate(self, upload_a, upload_b, steps) -> Image.Image:
        steps = whole_number(steps, "steps", 2, MAX_PATH)
        x_a, x_b = to_model_input(read_image(upload_a))[0], to_model_input(read_image(upload_b))[0]
        return grid_image(self.model.interpolate(x_a, x_b, steps), steps)

    def traverse(self, upload, dim, span=3.0, steps=9) -> Image.Image:
        """μ(x) with one latent coordinate swept from −span to span (Higgins et al.'s traversal), as a strip."""
        dim = whole_number(dim, "dim", 0, self.model.config.latent_dim - 1)
        span, steps = real_number(span, "span", 0.0, MAX_SPAN), whole_number(steps, "steps", 2, MAX_PATH)
        x, _ = to_model_input(read_image(upload))
        return grid_image(self.model.traverse(x, dim, span, steps), steps)

    def latent_plane(self, upload, side: int = 15) -> tuple[Image.Image, tuple[float, float]]:
        """The 2-D latent plane (decoded N(0, 1) quantiles) with μ(x) of the image marked by a red ring. The
        grid's cells sit at equally spaced quantiles, so a point's position along an axis is Φ(z), not z."""
        vae = self.model
        if vae.config.latent_dim != 2:
            raise RequestError(f"{self.name!r} has a {vae.config.latent_dim}-D latent space; the plane needs a 2-D one")
        grid = grid_image(vae.latent_grid(side), side).convert("RGB")
        z = vae.encode(to_model_input(read_image(upload))[0][None])[0][0]
        low, high, cell = 0.05, 0.95, (vae.config.image_size + 2) * SCALE
        phi = torch.distributions.Normal(0.0, 1.0).cdf(z).clamp(low, high)
        centre = lambda p: 2 * SCALE + cell * (p - low) / (high - low) * (side - 1) + (cell - 2 * SCALE) / 2
        x, y = centre(float(phi[0])), centre(float(high + low - phi[1]))          # z₂ rises bottom to top
        draw, radius = ImageDraw.Draw(grid), cell * 0.6
        for width, colour in ((7, "white"), (4, "red")):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=width)
        return grid, (float(z[0]), float(z[1]))


def compare_autoencoders(upload, seed, ae: str = "autoencoder", vae: str = "vae") -> tuple[Image.Image, Image.Image]:
    """MSE blur, side by side: (input | autoencoder | VAE reconstructions, 8 prior samples of each as two rows)."""
    autoencoder, variational = load_pipeline(ae, "vae").model, load_pipeline(vae, "vae").model
    x, _ = to_model_input(read_image(upload))
    seed = whole_number(seed, "seed", 0, MAX_SEED)
    reconstructions = torch.stack([x, autoencoder.reconstruct(x[None])[0], variational.reconstruct(x[None])[0]])
    samples = torch.cat([autoencoder.sample(8, seed), variational.sample(8, seed)])
    return grid_image(reconstructions, 3), grid_image(samples, 8)


# ---------------------------------------------------------------------------------------------------- diffusion
def diffusion_work(n, steps, scheduler, eta, seed, guidance_scale) -> int:
    """The checked cost of a denoising request: images x steps x network passes (classifier-free guidance runs the
    network twice, a second-order scheduler twice per step). Cheap, so it also serves admission before a request is
    queued."""
    n, steps = whole_number(n, "n", 1, MAX_IMAGES), whole_number(steps, "steps", 1, diffusion.MAX_STEPS)
    one_of(scheduler, "scheduler", tuple(SCHEDULERS)), real_number(eta, "eta", *diffusion.ETA_RANGE)
    whole_number(seed, "seed", 0, MAX_SEED)
    passes = 1 if real_number(guidance_scale, "guidance_scale", *diffusion.GUIDANCE_RANGE) == 1.0 else 2
    passes *= SCHEDULERS[scheduler].order                                # Heun: two network passes per step
    if n * steps * passes > MAX_DIFFUSION_WORK:
        raise RequestError(f"n x steps x passes must be at most {MAX_DIFFUSION_WORK:,} (guidance ≠ 1 runs the network "
                           f"twice, Heun twice per step; e.g. 16 images at 1000 steps, or 64 at 125 with guidance), "
                           f"got {n} x {steps} x {passes} = {n * steps * passes:,}")
    return n * steps * passes


class Admission:
    """Diffusion requests per client, counted from admission (before queueing) to the end of the run, so one client
    cannot fill the queue. An entry whose run never started (the client left) expires after `expiry` seconds."""

    def __init__(self, limit: int = MAX_PENDING_PER_CLIENT, expiry: float = 600.0):
        self.limit, self.expiry = limit, expiry
        self._pending: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            alive = [t for t in self._pending.get(client, []) if now - t < self.expiry]
            if len(alive) >= self.limit:
                raise RequestError(f"you already have {len(alive)} diffusion requests queued or running; at most "
                                   f"{self.limit} at a time: wait for one to finish")
            self._pending[client] = alive + [now]

    def release(self, client: str) -> None:
        with self._lock:
            pending = self._pending.get(client, [])
            if pending:
                pending.pop(0)
            if not pending:
                self._pending.pop(client, None)


_large_diffusion = threading.Lock()


class DiffusionPipeline(Pipeline):
    def __init__(self, model, name):
        super().__init__(model.set_precision(fast_precision()), name)     # bf16 where the CPU has it

    def denoise(self, n, steps, scheduler, eta, seed, label=-1, guidance_scale=1.0
                ) -> Iterator[tuple[int, int, Image.Image, Image.Image, Image.Image | None]]:
        """Yield (step, steps, grid of x_t, grid of x̂_0, None) about STREAM_FRAMES times while the reverse process
        runs, then (steps, steps, grid of x_0, grid of the last x̂_0, strip): x̂_0 is the network's guess of the
        final images at that step; the strip shows the first (up to 4) images at 10 moments of the run, x_t above
        x̂_0.
        A large request (over LARGE_DIFFUSION_WORK) runs only while no other large one does, so small requests
        never wait behind two of them; every request stops after DIFFUSION_BUDGET_S seconds."""
        ddpm = self.model
        work = diffusion_work(n, steps, scheduler, eta, seed, guidance_scale)
        label = label_or_none(label, ddpm)
        if not ddpm.guided and guidance_scale != 1.0:
            raise RequestError("guidance_scale needs a guided model (classifier-free: ddpm-cond; autoguidance: ddpm); "
                               "it must be 1 here")
        large = work > LARGE_DIFFUSION_WORK
        if large and not _large_diffusion.acquire(blocking=False):
            raise RequestError(f"another large diffusion request is running; ask for at most "
                               f"{LARGE_DIFFUSION_WORK:,} images x steps now, or try again in a minute")
        try:
            yield from self._denoise(int(n), int(steps), scheduler, float(eta), int(seed), label,
                                     float(guidance_scale))
        finally:
            if large:
                _large_diffusion.release()

    def _denoise(self, n, steps, scheduler, eta, seed, label, guidance_scale):
        rows = min(n, 4)
        moments = {round(k * (steps - 1) / 9) for k in range(10)}
        strip, start = [], time.monotonic()
        try:
            for i, x_t, x0 in self.model.denoise(n, steps, scheduler, seed, guidance_scale, label, eta):
                if time.monotonic() - start > DIFFUSION_BUDGET_S:
                    raise RequestError(f"stopped after {DIFFUSION_BUDGET_S:.0f} s with {i + 1} of {steps} steps done: "
                                       "ask for fewer images or steps")
                x_t, x0 = x_t.clamp(-1, 1).cpu(), x0.clamp(-1, 1).cpu()
                if i in moments:
                    strip.append(torch.cat([x_t[:rows], x0[:rows]]))
                if i == steps - 1:
                    columns = torch.stack(strip, dim=1).flatten(0, 1)          # (2 rows * 10, C, H, W), row-major
                    yield steps, steps, grid_image(x_t), grid_image(x0), grid_image(columns, len(strip))
                elif (i + 1) * STREAM_FRAMES // steps > i * STREAM_FRAMES // steps:   # STREAM_FRAMES evenly spread
                    yield i + 1, steps, grid_image(x_t), grid_image(x0), None
        except ValueError as exc:                # a scheduler that cannot take this many steps, say so
            raise RequestError(str(exc)) from exc


# ----------------------------------------------------------------------------------------------------- CycleGAN
class CycleGANPipeline(Pipeline):
    def translate(self, upload, direction) -> tuple[Image.Image, Image.Image, Image.Image, bool]:
        """(what the model saw, translation, cycle reconstruction, whether the upload was inverted)."""
        direction = one_of(direction, "direction", ("a2b", "b2a"))
        x, inverted = to_model_input(read_image(upload))
        translated, reconstructed = self.model.translate(x, direction)
        return single_image(x), single_image(translated), single_image(reconstructed), inverted


# ------------------------------------------------------------------------------------------------------ Pix2Pix
EDGE_SOURCES = ("drawing", "edge map", "picture")   # a sketch pad, an uploaded edge map as is, a picture's edges
PIX2PIX_OUTPUTS = 4            # outputs per request, one per dropout draw (the generator's noise)
INK = 40                       # a drawing's pixels brighter than this (of 255, lines light on dark) are ink


def sketch_file(value):
    """The file a sketch pad sends: the flattened `composite` of Gradio's editor value, or a plain upload."""
    return value.get("composite") if isinstance(value, dict) and "composite" in value else value


def drawn_edges(image: Image.Image, crop: bool) -> torch.Tensor:
    """A drawing or an edge map (dark lines on light or light lines on dark) as the edges model reads one: white
    lines on black, 28x28, in {-1, 1}. A transparent background (a sketch pad's) counts as white. `crop`: cut to the
    drawn lines first, so a small drawing fills the frame as a Fashion-MNIST item does."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    x, _ = to_model_input(image)
    if crop:
        grey = Image.fromarray(to_uint8(x)[0].numpy())
        box = grey.point(lambda v: 255 if v > INK else 0).getbbox()
        if box is None:
            raise RequestError("the drawing is empty: draw the outline of a garment (dark lines on the white pad)")
        x = to_float(image_to_tensor(grey.crop(box), 28))
    return torch.where(x > INK / 127.5 - 1, 1.0, -1.0)


class Pix2PixPipeline(Pipeline):
    def translate(self, sketch, upload, source, seed) -> tuple[Image.Image, Image.Image, str]:
        """(the edge map the model saw, PIX2PIX_OUTPUTS outputs, a note). `source`: "drawing" reads the sketch pad,
        "edge map" takes the upload as an edge map, "picture" computes the upload's edges (core.data.edge_map)."""
        source = one_of(source, "source", EDGE_SOURCES)
        seed = whole_number(seed, "seed", 0, MAX_SEED)
        if self.model.config.task != "edges":
            raise RequestError(f"this tab draws edge maps, but {self.name} was trained for the "
                               f"{self.model.config.task!r} task")
        note = ""
        if source == "picture":
            x, inverted = to_model_input(read_image(upload))
            edges = edge_map(x[None])[0]
            note = "The picture had a light background and was inverted first. " if inverted else ""
        else:
            edges = drawn_edges(read_image(sketch_file(sketch) if source == "drawing" else upload),
                                crop=source == "drawing")
        outputs = self.model.translate(edges[None].expand(PIX2PIX_OUTPUTS, -1, -1, -1), seed=seed)
        note += (f"{PIX2PIX_OUTPUTS} outputs from seed {seed}: they differ only by the generator's dropout noise, "
                 "which Pix2Pix keeps on at sampling.")
        return single_image(edges), grid_image(outputs, nrow=PIX2PIX_OUTPUTS), note


# ------------------------------------------------------------------------------------------------------- SimCLR
NEIGHBOURS = 8                 # gallery images shown for a query
PLANE_LIMIT = 4.0              # the plot's range, ± this many of the gallery's standard deviations on each axis


class SimCLRPipeline(Pipeline):
    """Similarity search in the model's gallery, and the gallery's 2-D principal plane (both computed at load)."""

    def __init__(self, model, name):
        super().__init__(model, name)
        if model.config.gallery == 0:
            raise RequestError(f"{name!r} holds no gallery of images to search")
        self.bank = model.gallery_features()
        self.mean, self.basis = principal_plane(self.bank)
        plane = (self.bank - self.mean) @ self.basis
        self.scale = plane.std(0)
        self.plane = plane / self.scale

    def nearest(self, upload) -> tuple[Image.Image, Image.Image, Image.Image, str]:
        """(what the model saw, its NEIGHBOURS nearest gallery images, the principal plane with the query ringed, a
        note naming the neighbours' classes)."""
        x, inverted = to_model_input(read_image(upload))
        index, similarity = self.model.nearest(x[None], NEIGHBOURS, self.bank)
        index, similarity = index[0], similarity[0]
        gallery = to_float(self.model.gallery_images[index])
        query = ((self.model.representations(x[None]) - self.mean) @ self.basis / self.scale)[0]
        labels = self.model.gallery_labels
        picture = scatter_plot(self.plane, labels, list(FASHION_CLASSES), limit=PLANE_LIMIT,
                               marked=tuple(query.tolist()), axes=("PC1", "PC2"))
        names = [f"{FASHION_CLASSES[int(labels[i])]} ({float(s):.2f})" for i, s in zip(index, similarity)]
        note = ("The upload had a light background and was inverted first. " if inverted else "") + \
            f"Nearest of {len(labels):,} test images (cosine similarity): " + ", ".join(names) + "."
        return single_image(x), grid_image(gallery, NEIGHBOURS), picture, note


# ------------------------------------------------------------------------------------------ classifier attacks
def top_classes(logits: torch.Tensor, k: int = 3) -> dict[str, float]:
    probabilities = logits.softmax(-1)
    values, index = probabilities.topk(k)
    return {FASHION_CLASSES[i]: float(v) for v, i in zip(values, index)}


class AttackPipeline(Pipeline):
    def attack(self, upload, attack, eps, target=0) -> tuple[Image.Image, Image.Image, Image.Image, dict, dict]:
        """(image, perturbation amplified to the full grey range, adversarial image, top-3 before, top-3 after).
        Untargeted attacks push away from the classifier's own prediction; targeted FGSM pulls toward `target`."""
        classifier = self.model
        attack, eps = one_of(attack, "attack", ATTACKS), real_number(eps, "eps", 0.0, MAX_EPS)
        target = whole_number(class_index(target), "target", 0, len(FASHION_CLASSES) - 1)
        x = to_model_input(read_image(upload))[0][None]
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
        return (single_image(x[0]), single_image(amplified), single_image(adversarial[0]), top_classes(before),
                top_classes(after))


PIPELINES: dict[str, type[Pipeline]] = {"gan": GANPipeline, "vae": VAEPipeline, "ddpm": DiffusionPipeline,
                                        "stylegan": StyleGANPipeline, "cyclegan": CycleGANPipeline,
                                        "pix2pix": Pix2PixPipeline, "simclr": SimCLRPipeline,
                                        "classifier": AttackPipeline}


# ---------------------------------------------------------------------------------------------- foundations
SQUARE = (-0.5, 1.5)           # the plot range around the truth table's four points


@functools.lru_cache(maxsize=64)
def _foundations_run(gate: str, learner: str, activation: str, seed: int) -> tuple[list, list[int]]:
    """[(classify, hidden lines) after each epoch], mistakes per epoch: one training run, milliseconds."""
    targets = foundations.GATES[gate]
    if learner == "two-layer MLP":
        network, states, mistakes = foundations.train_xor_mlp(targets, activation, seed=seed)
        phi = foundations.ACTIVATIONS[activation].function

        def frame(state):
            logit = lambda x: phi(x @ state["0.weight"].T + state["0.bias"]) @ state["2.weight"][0] + state["2.bias"]
            return lambda x: foundations.step(logit(x)), list(zip(state["0.weight"], state["0.bias"]))
        return [frame(state) for state in states], mistakes
    train = foundations.perceptron_rule if learner == "perceptron rule" else foundations.gradient_descent
    history = train(targets)
    frames = [(lambda x, w=w, b=b: foundations.step(x @ w + b), [(w, b)])
              for w, b in zip(history.weights, history.biases)]
    return frames, history.errors


def _boundary_picture(gate: str, classify, lines, title: str) -> Image.Image:
    canvas = Canvas(SQUARE, SQUARE).regions(classify)
    for w, b in lines:
        canvas.line(w, b, PALETTE[2] if len(lines) > 1 else (0, 0, 0))
    return canvas.points(foundations.INPUTS, foundations.GATES[gate]).axes((0, 1)).title(title).image


def foundations_training(gate, learner, activation, seed, epoch) -> tuple[Image.Image, list[Image.Image], str]:
    """(the decision regions after `epoch`, the regions along the whole run for an animation, a Markdown note).
    Blue and orange regions: where the model answers 0 and 1; green lines: the MLP's hidden units."""
    gate = one_of(gate, "gate", tuple(foundations.GATES))
    learner = one_of(learner, "learner", foundations.LEARNERS)
    activation = one_of(activation, "activation", tuple(foundations.ACTIVATIONS))
    seed = whole_number(seed, "seed", 0, MAX_SEED)
    epoch = whole_number(epoch, "epoch", 0, foundations.MAX_EPOCHS)
    frames, mistakes = _foundations_run(gate, learner, activation, seed if learner == "two-layer MLP" else 0)
    shown_epoch = min(epoch, len(frames) - 1)                # the perceptron rule stops once it is right
    wrong = mistakes[shown_epoch - 1] if shown_epoch else "-"
    picture = _boundary_picture(gate, *frames[shown_epoch], f"{gate}, {learner}: epoch {shown_epoch}, wrong {wrong}")
    every = max(1, len(frames) // ANIMATION_FRAMES)
    animation = [_boundary_picture(gate, *frames[k], f"{gate}, {learner}: epoch {k}")
                 for k in range(0, len(frames), every)]
    solved = next((k + 1 for k, m in enumerate(mistakes) if m == 0), None)
    note = (f"All four points right from epoch {solved}." if solved else
            f"Never all four right in {len(mistakes)} epochs (fewest wrong: {min(mistakes)}).")
    if learner == "perceptron rule" and gate == "XOR":
        note += " The rule cycles: no line separates XOR's classes."
    return picture, animation, note


def activation_picture(name) -> tuple[Image.Image, str]:
    """φ (blue) and φ' (orange) on [−4, 4], and the formulas."""
    name = one_of(name, "activation", tuple(foundations.ACTIVATIONS))
    activation = foundations.ACTIVATIONS[name]
    a = torch.linspace(-4, 4, 401)
    canvas = Canvas((-4, 4), (-1.5, 4)).axes((-4, -1, 0, 1, 4))
    canvas.curve(a, activation.function(a), PALETTE[0]).curve(a, activation.derivative(a), PALETTE[1])
    return canvas.title(f"{name}: the function (blue) and its derivative (orange)").image, activation.formula


_approximation = functools.lru_cache(maxsize=128)(foundations.approximate)


def approximation_picture(target, hidden, activation) -> tuple[Image.Image, str]:
    """The target on [−π, π] (black) and the fit of one hidden layer of `hidden` units (blue)."""
    target = one_of(target, "target", tuple(foundations.TARGETS))
    hidden = whole_number(hidden, "hidden units", 1, MAX_HIDDEN)
    activation = one_of(activation, "activation", tuple(foundations.ACTIVATIONS))
    x, y, fit, error = _approximation(target, hidden, activation)
    canvas = Canvas((-3.2, 3.2), (-1.5, 1.5)).axes((-3, 0, 3)).curve(x, y).curve(x, fit, PALETTE[0])
    return canvas.title(f"{target} with {hidden} {activation} units").image, f"mean squared error {error:.2e}"


# --------------------------------------------------------------------------------------------- card figures
def card_figures(spec: str) -> dict:
    """The measured figures of a checkpoint (its eval.json), for the apps' About sections; {} if it has none."""
    try:
        path = resolve(spec, allow_local=False) / "eval.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    except (CheckpointError, OSError, json.JSONDecodeError):
        return {}


def robustness_table(specs: list[str]) -> list[dict]:
    """Rows (model, eps, accuracy) of each classifier's FGSM curve on the test set, from its model card."""
    rows = []
    for spec in specs:
        scores = card_figures(spec)
        points = {0.0: scores.get("accuracy")} | {float(key.rsplit("eps", 1)[1]): value for key, value in scores.items()
                                                  if key.startswith("fgsm_accuracy_eps")}
        rows += [{"model": spec, "eps": eps, "accuracy": acc} for eps, acc in sorted(points.items()) if acc is not None]
    return rows


FIGURES = {"fid": "FID", "off_manifold": "off-manifold share", "precision": "precision", "recall": "recall",
           "copies": "copies", "fid_penultimate": "FID (penultimate, earlier cards)", "kid": "KID",
           "classes_covered": "classes", "smallest_class_share": "smallest class share", "kl_to_uniform": "KL to uniform",
           "conditional_accuracy": "conditional accuracy", "neg_elbo": "−ELBO (nats)", "neg_iwae": "IWAE bound (nats)",
           "mse": "MSE", "accuracy": "test accuracy", "fgsm_accuracy_eps0.1": "FGSM accuracy at ε = 0.1",
           "a2b_domain_accuracy": "A→B domain accuracy", "b2a_domain_accuracy": "B→A domain accuracy",
           "a2b_fid": "A→B FID", "b2a_fid": "B→A FID", "samples": "samples measured"}


def figures_markdown(specs: list[str]) -> str:
    """The headline figures of each checkpoint's card as one Markdown table (a column per model)."""
    scores = {spec: card_figures(spec) for spec in specs}
    keys = [key for key in FIGURES if any(isinstance(s.get(key), (int, float)) for s in scores.values())]
    if not keys:
        return ""
    cell = lambda v: "" if not isinstance(v, (int, float)) else f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    lines = ["| | " + " | ".join(f"`{spec}`" for spec in specs) + " |", "|---" * (len(specs) + 1) + "|"]
    lines += [f"| {FIGURES[key]} | " + " | ".join(cell(scores[spec].get(key)) for spec in specs) + " |" for key in keys]
    return "\n".join(lines)
