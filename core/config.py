"""Configuration: frozen dataclasses, saved as JSON beside every run and checkpoint, and turned into CLI options.

Each field's help text lives in its metadata, so `python -m core.train <family> --help` documents every option
from the same place the defaults are set.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from core.data import DATASETS

PRECISIONS = ("no", "bf16")        # the forward-pass precision of a model: float32, or bf16 autocast (core.model)


def option(default, help: str, **kwargs):
    """A dataclass field with its CLI help text (and `choices`, or bounds `low`/`high`, checked at parse time)."""
    return field(default=default, metadata={"help": help, **kwargs})


THREADS_HELP = "torch intra-op threads per process (0: torch's default)"


def allowed(low=None, high=None) -> str:
    """"from 1 to 9", "at least 0", "at most 1" (what --help and the refusal both say)."""
    if low is not None and high is not None:
        return f"from {low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def bounded(kind: type, low=None, high=None):
    """An argparse type: `kind` of the text, within [low, high] (NaN is outside every range)."""
    def parse(text: str):
        value = kind(text)
        if (low is not None and not value >= low) or (high is not None and not value <= high):
            raise argparse.ArgumentTypeError(f"must be {allowed(low, high)}, got {text}")
        return value
    parse.__name__ = kind.__name__                # (argparse names the type in its own messages)
    return parse


@dataclass(frozen=True)
class TrainConfig:
    """Options of the one training loop (core.train), shared by every family."""
    dataset: str = option("fashion-mnist", "fashion-mnist, mnist, digits (sklearn's 8x8, for quick tries), or folder "
                          "(a CycleGAN folder pair: --data-dir holding trainA/ trainB/ testA/ testB/) or paired-folder "
                          "(the same, A and B files paired by name, for Pix2Pix)",
                          choices=DATASETS)
    data_dir: str | None = option(None, "folder with the IDX files (default: search, see core.data) or the folder pair")
    folder_image_size: int = option(28, "folder datasets: images are centred and resized to this side", low=8)
    folder_channels: int = option(1, "folder datasets: 1 (grey) or 3 (RGB)", choices=(1, 3))
    classes: str | None = option(None, "train on these classes only, comma separated names or indices")
    pad_to: int | None = option(None, "pad images to this size (e.g. 32 for U-Nets)", low=1)
    epochs: int = option(10, "passes over the training set (ignored when --max-steps is set)", low=1)
    max_steps: int = option(0, "stop after this many optimizer steps (0: use --epochs)", low=0)
    batch_size: int = option(128, "global batch size, split evenly across processes", low=1)
    lr: float = option(1e-3, "peak learning rate", low=0.0)
    lr_schedule: str = option("constant", "constant, cosine (decay to 0 over the run), or linear (constant for the first "
                              "half, then linearly to 0: CycleGAN's)", choices=("constant", "cosine", "linear"))
    warmup_steps: int = option(0, "linear warm-up steps", low=0)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW)", low=0.0)
    seed: int = option(0, "seed for weights, data order and noise", low=0)
    log_every: int = option(50, "write a metrics.jsonl line every N steps", low=1)
    eval_every: int = option(0, "evaluate and save an image grid every N steps (0: at the end only)", low=0)
    eval_size: int = option(10_000, "test images used by each evaluation", low=1)
    checkpoint_every: int = option(1000, "save a resumable checkpoint every N steps (0: at the end only)", low=0)
    keep_checkpoints: int = option(2, "resumable checkpoints kept in the run directory", low=1)
    runs_dir: str = option("runs", "parent folder of run directories")
    run_name: str = option("", "run directory name (default: <family>-<time>)")
    cpu: bool = option(False, "train on the CPU even when a GPU is present")
    mixed_precision: str = option("no", "bf16: autocast forward passes to bfloat16 (2x faster on CPUs with AMX/AVX512-BF16 "
                                  "and on GPUs); losses and optimizer stay float32", choices=PRECISIONS)
    threads: int = option(0, THREADS_HELP, low=0)
    perturb: float = option(0.0, "train a background model (Ren et al. 2019): each training pixel is replaced, with this "
                            "probability, by a uniformly drawn level (0: off; the paper takes 0.1 to 0.3)", low=0.0,
                            high=1.0)

    def __post_init__(self):
        check_bounds(self)


def check_bounds(config) -> None:
    """Every field's `choices` and `low`/`high` from its metadata (the CLI checks the same at parse time), for a
    config built in Python."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if value is None or isinstance(value, bool):
            continue
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{f.name} must be one of {meta['choices']}, got {value!r}")
        try:
            bounded(type(value), meta.get("low"), meta.get("high"))(value)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{f.name} {exc}") from None


def to_json(config) -> dict:
    return {"_class_name": type(config).__name__, **dataclasses.asdict(config)}


def from_json(cls, data: dict):
    """Build `cls` from a dict, ignoring keys it does not know (such as _class_name)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def save_json(data: dict, path: Path) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def add_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One --option per dataclass field, typed from its annotation, documented from its metadata."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        meta = f.metadata
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{meta.get('help', '')} (default: {f.default})")
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        checked = bounded(base, meta.get("low"), meta.get("high")) if base in (int, float) else base
        choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
        shown = "{" + ",".join(map(str, choices)) + "}" if choices else base.__name__.upper()   # --help lists them
        bounds = "" if low is None and high is None else f"; {allowed(low, high)}"
        group.add_argument(flag, type=checked, default=None, choices=choices, metavar=shown,
                           help=f"{meta.get('help', '')} (default: {f.default}{bounds})")


def pick_options(args: argparse.Namespace, cls, base=None):
    """The dataclass `cls` from parsed args: given options override `base` (or the defaults)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given) if base is not None else cls(**given)
