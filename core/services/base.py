"""What every family's service needs: finding and loading a model once, an endpoint table, and pictures out.

A service wraps one loaded model and answers the requests of one app tab:

    GANService.load("dcgan").sample(n=16, seed=0, label=-1)        -> PIL picture of a grid

`Service.load` takes a manifest name or a Hub repo id (never a local path: a public app would read any folder),
loads the model once through core.hub, checks its family, and caches the service; each model has its own loading
lock, so a slow download of one repo never holds up requests for another. Every method checks its arguments
(core.requests) because API callers bypass the sliders. A service class declares its endpoints in one table
(`endpoints`): api name, method, inputs with their bounds, outputs, and whether admission costs a request before it
is queued; apps/sampler.py builds its tabs from these tables and writes no adapter of its own.
"""
from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from core.checkpoint import CheckpointError
from core.data import FASHION_CLASSES
from core.families import FAMILIES
from core.hub import load_model, read_config, read_manifest, resolve
from core.runs import FIGURE_NAMES
from core.model import TrainableModel
from core.requests import MAX_SEED, RequestError, class_index, real_number, shown, whole_number, without_paths

MAX_IMAGES = 64                # images per request
MAX_PATH = 32                  # images along an interpolation or a latent sweep
LOAD_WAIT_S = 30.0             # how long a request waits for another request loading the same model
MAX_HUB_BYTES = 50 * 2**20     # model files of a Hub repo named in a request (the shipped models are all smaller)
HUB_IDS = "GENLAB_HUB_IDS"     # environment switch: "off" serves the manifest's models only (a public Space)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")   # owner/name or owner/name@revision


# ------------------------------------------------------------------------------------------ the endpoint table
@dataclass(frozen=True)
class Input:
    """One argument of an endpoint (`key`: its name in the API and in error messages), and the widget that sets it
    (`widget`: its name within the tab, the key unless set; inputs of a tab that name the same widget share it)."""
    key: str
    label: str
    default: Any = None
    widget: str = field(default="", kw_only=True)

    @property
    def widget_name(self) -> str:
        return self.widget or self.key

    def named(self, key: str) -> "Input":
        """The same widget as the argument `key` of another endpoint."""
        return replace(self, key=key, widget=self.widget_name)


@dataclass(frozen=True)
class ModelChoice(Input):
    """A model of `family`: a manifest name, or a Hub repo id typed in."""
    family: str = ""


@dataclass(frozen=True)
class Number(Input):
    """A number from `low` to `high` in steps of `step` (a slider; `box`: a number box, for seeds)."""
    low: float = 0
    high: float = 1
    step: float = 1
    box: bool = False


@dataclass(frozen=True)
class Choice(Input):
    """One of `choices`, (label, value) pairs (`radio`: shown as radio buttons)."""
    choices: tuple = ()
    radio: bool = False


@dataclass(frozen=True)
class Flag(Input):
    pass


@dataclass(frozen=True)
class Upload(Input):
    """An image file; `examples`: the folder under apps/examples whose images are offered (default: the example
    shown), `gallery` what they are; `selects` (widget, value): picking an example sets that widget too, and
    `upload_selects` is the value a file of the user's own sets it to."""
    examples: str = "."
    gallery: str = "Fashion-MNIST test images"
    selects: tuple = ()
    upload_selects: str | None = None


@dataclass(frozen=True)
class Sketch(Input):
    """A drawing pad (its value: Gradio's editor data with a flattened `composite`); `selects` (widget, value):
    drawing sets that widget."""
    selects: tuple = ()


@dataclass(frozen=True)
class Output:
    label: str
    kind: str = "picture"      # picture (PIL), animation (PIL frames, there and back), loop (PIL frames, starting
    height: int | None = None  # over), text (Markdown), scores ({class: probability})


@dataclass(frozen=True)
class Endpoint:
    """An API endpoint and its button. `method` is the service's: with a ModelChoice as first input, called on the
    service of the model it names with the other inputs; otherwise called on the class with every input. A
    `stream` method yields (fraction done, outputs) and None in an output keeps the picture shown. `cost`: a
    classmethod that checks every input and the request's cost without loading anything, run before the request is
    queued (admission), together with a per-client limit."""
    api_name: str
    method: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    button: str
    stream: bool = False
    cost: str | None = None
    queue: str = "quick"
    limit: int = 1
    release: str | None = None    # the key of a slider whose release also runs the endpoint


CLASS_CHOICES = (("all classes, in turn", -1), *((name, k) for k, name in enumerate(FASHION_CLASSES)))


def seed_input(key: str = "seed", label: str = "seed", default: int = 0) -> Number:
    return Number(key, label, default, 0, MAX_SEED, box=True)


def count_input(default: int = 16, key: str = "n") -> Number:
    return Number(key, "number of images", default, 1, MAX_IMAGES)


def path_input(default: int = 10, key: str = "steps") -> Number:
    return Number(key, "images along the path", default, 2, MAX_PATH)


# ---------------------------------------------------------------------------------------------------- models
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


def model_config(spec, family: str) -> dict:
    """A model's config.json as a dict (nothing is loaded)."""
    try:
        config = read_config(resolve(checked_spec(spec, family), allow_local=False))   # a diffusers folder too
    except (CheckpointError, OSError, json.JSONDecodeError, TypeError) as exc:
        raise RequestError(f"cannot read the config of {spec!r}: {without_paths(exc)}") from exc
    return config if isinstance(config, dict) else {}


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@functools.lru_cache(maxsize=16)
def _service(cls: type["Service"], spec: str) -> "Service":
    """The service of one model, loaded once (a loading error is not cached: the next request tries again)."""
    family = cls.family
    try:
        model = load_model(spec, allow_local=False, max_bytes=None if spec in read_manifest() else MAX_HUB_BYTES)
    except (CheckpointError, OSError) as exc:
        raise RequestError(f"cannot load model {spec!r}: {without_paths(exc)}") from exc
    if not isinstance(model, FAMILIES[family]):
        raise RequestError(f"{spec!r} is a {type(model).__name__}; this needs a {FAMILIES[family].__name__}")
    return cls(model.eval().requires_grad_(False), spec)


class Service:
    """A loaded model and the requests one app tab makes of it. Subclasses set `family` (a key of core.families),
    `tab`, `about` (Markdown with LaTeX for the tab's About section) and `endpoints`."""
    family: ClassVar[str] = ""
    tab: ClassVar[str] = ""
    about: ClassVar[str] = ""
    endpoints: ClassVar[tuple[Endpoint, ...]] = ()

    def __init__(self, model: TrainableModel, name: str):
        self.model, self.name = model, name

    @classmethod
    def load(cls, spec) -> "Service":
        """The cached service of a manifest name or Hub repo id."""
        spec = checked_spec(spec, cls.family)
        with _locks_guard:
            lock = _locks.setdefault(spec, threading.Lock())
        if not lock.acquire(timeout=LOAD_WAIT_S):   # one load per model; other models load (and answer) meanwhile
            raise RequestError(f"model {spec!r} is still being loaded for another request; try again in a minute")
        try:
            return _service(cls, spec)
        finally:
            lock.release()

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        """What the tab's other widgets become when its model box shows `spec`: {input key: widget settings}."""
        return {}

    @classmethod
    def chart(cls) -> dict | None:
        """A line chart for the tab, from the model cards: {rows: [{x: .., y: .., colour: ..}], x, y, colour,
        title}; None: none."""
        return None

    @classmethod
    def model_names(cls) -> list[str]:
        return model_names(cls.family) if cls.family else []


def share_cores(workers: int) -> None:
    """Give each of `workers` model calls running side by side its share of the cores."""
    torch.set_num_threads(max(1, (os.cpu_count() or workers) // workers))


def label_or_none(value, model, name: str = "label") -> int | None:
    """-1 (or None) means every class in turn; otherwise a class index the model knows."""
    value = class_index(value)
    if value is None or value == -1:
        return None
    classes = model.config.num_classes
    if not classes:
        raise RequestError(f"this model is unconditional: {name} must be -1 (none)")
    return whole_number(value, name, -1, classes - 1)


def class_picker(config: dict) -> dict[str, dict]:
    """The class picker is live only for a conditional model (and shows "all classes" for the others)."""
    return {"label": {"interactive": True} if config.get("num_classes") else {"interactive": False, "value": -1}}


def class_and_temperature(spec, family: str, low: float, high: float) -> dict[str, dict]:
    """`Service.follow` of a tab with a class picker and a temperature slider from `low` to `high`: the picker is
    live for a class-conditional model, the slider starts at the model's own T (its config's "temperature", kept
    within the bounds). A model whose config cannot be read leaves the picker off and the slider as it is."""
    try:
        config = model_config(spec, family)
    except RequestError:
        config = {}
    settings = class_picker(config)
    t = config.get("temperature")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        settings["temperature"] = {"value": min(max(float(t), low), high)}
    return settings


class StepwiseSampling:
    """A tab whose sampler draws one unit at a time, a network step each (a PixelCNN's pixels, a VQ-VAE prior's
    codes), at a temperature and class: a request costs images x units, checked at admission by `work` (before
    anything loads, at the units per image of `admitted`) and again by the methods with the model's own count
    (`cost`); the class picker and the temperature slider follow the model. A subclass (before Service among its
    bases) sets `unit`, `admitted`, `max_work` and `temperatures`, the slider's bounds."""
    family: ClassVar[str] = ""
    unit: ClassVar[str] = ""                  # what one network step draws, e.g. "pixel"
    admitted: ClassVar[int] = 0               # units per image that admission assumes (Fashion-MNIST's size)
    max_work: ClassVar[int] = 0               # images x units per request
    temperatures: ClassVar[tuple[float, float]] = (0.0, 1.0)

    @classmethod
    def follow(cls, spec) -> dict[str, dict]:
        """The class picker is live for a class-conditional model; the slider starts at the model's own T."""
        return class_and_temperature(spec, cls.family, *cls.temperatures)

    @classmethod
    def work(cls, model, n, seed, temperature, label=-1) -> int:
        """The sampling endpoint's admission: the model named, and the request's cost. Loads nothing."""
        checked_spec(model, cls.family)
        return cls.cost(n, cls.admitted, seed, temperature)

    @classmethod
    def cost(cls, n, units: int, seed, temperature) -> int:
        """The checked cost of a request for n images of `units` each: images x units."""
        n, _ = whole_number(n, "n", 1, MAX_IMAGES), whole_number(seed, "seed", 0, MAX_SEED)
        real_number(temperature, "temperature", *cls.temperatures)
        if n * units > cls.max_work:
            raise RequestError(f"images x {cls.unit}s must be at most {cls.max_work:,} (each {cls.unit} is one "
                               f"network step), got {n} x {units:,} = {n * units:,}", "n")
        return n * units


# -------------------------------------------------------------------------------------------------- admission
MAX_PENDING_PER_CLIENT = 2     # expensive requests one client (session) may have queued or running


class Admission:
    """Expensive requests (those whose endpoint has a `cost`) per client, counted from admission (before queueing)
    to the end of the run, so one client cannot fill the queue. An entry whose run never started (the client left)
    expires after `expiry` seconds."""

    def __init__(self, limit: int = MAX_PENDING_PER_CLIENT, expiry: float = 600.0):
        self.limit, self.expiry = limit, expiry
        self._pending: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            alive = [t for t in self._pending.get(client, []) if now - t < self.expiry]
            if len(alive) >= self.limit:
                raise RequestError(f"you already have {len(alive)} slow requests (diffusion, PixelCNN, VQ-VAE or JEM "
                                   f"sampling) queued or running; at most {self.limit} at a time: wait for one to "
                                   f"finish")
            self._pending[client] = alive + [now]

    def release(self, client: str) -> None:
        with self._lock:
            pending = self._pending.get(client, [])
            if pending:
                pending.pop(0)
            if not pending:
                self._pending.pop(client, None)


# ---------------------------------------------------------------------------------------------- card figures
def card_figures(spec: str) -> dict:
    """The measured figures of a checkpoint (its eval.json), for the apps' About sections; {} if it has none."""
    try:
        path = resolve(spec, allow_local=False) / "eval.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    except (CheckpointError, OSError, json.JSONDecodeError):
        return {}


def figures_markdown(specs: list[str]) -> str:
    """The headline figures of each checkpoint's card as one Markdown table (a column per model)."""
    scores = {spec: card_figures(spec) for spec in specs}
    keys = [key for key in FIGURE_NAMES if any(isinstance(s.get(key), (int, float)) for s in scores.values())]
    if not keys:
        return ""
    cell = lambda v: "" if not isinstance(v, (int, float)) else f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    lines = ["| | " + " | ".join(f"`{spec}`" for spec in specs) + " |", "|---" * (len(specs) + 1) + "|"]
    lines += [f"| {FIGURE_NAMES[key]} | " + " | ".join(cell(scores[spec].get(key)) for spec in specs) + " |"
              for key in keys]
    return "\n".join(lines)
