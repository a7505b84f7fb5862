"""The checkpoint format: a Hugging Face Hub repo folder, read and written through huggingface_hub.

    checkpoints/<name>/  config.json        constructor arguments + "_class_name" (which model class to build)
                         model.safetensors  the weights: the only weight format ever loaded
                         README.md          model card (core.cards)

`HubModel` adds `save_pretrained` / `from_pretrained` / `push_to_hub` to a torch module through
`PyTorchModelHubMixin`, with two departures from the mixin's defaults: weights load with strict=True (a
mismatched checkpoint is an error, not silently half-loaded), and a folder or repo that holds only pickled weights
(.bin, .pt, .pth, .ckpt, .pkl) is refused instead of unpickled. This module knows no model family: finding a
checkpoint by name is core.hub's job, building the class that config.json names is core.families'.
"""
from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

import safetensors.torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError

WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely: missing, corrupt, pickled, or not matching its class."""


class HubModel(nn.Module, PyTorchModelHubMixin, library_name="genlab", tags=["genlab", "from-scratch"]):
    """A torch module saved and loaded as a Hub repo folder. Subclasses take one dataclass argument, `config`."""

    def _save_pretrained(self, save_directory: Path) -> None:
        safetensors.torch.save_model(self, str(save_directory / WEIGHTS))
        config = {"_class_name": type(self).__name__, **self.config_dict()}
        (save_directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def config_dict(self) -> dict:
        """The constructor's config as plain JSON values (what config.json holds besides _class_name)."""
        config = self._hub_mixin_config
        return asdict(config) if is_dataclass(config) else dict(config or {})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        model = cls(**model_kwargs)
        if Path(model_id).is_dir():
            weights = local_weights(Path(model_id))
        else:
            try:
                weights = hf_hub_download(model_id, WEIGHTS, revision=revision, cache_dir=cache_dir,
                                          force_download=force_download, token=token,
                                          local_files_only=local_files_only)
            except EntryNotFoundError as exc:
                raise CheckpointError(f"{model_id} has no {WEIGHTS}; genlab loads safetensors weights only "
                                      "and never unpickles .bin/.pt files") from exc
        try:
            missing, unexpected = safetensors.torch.load_model(model, weights, strict=False, device=map_location)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{weights} is not a readable safetensors file ({exc})") from exc
        except RuntimeError as exc:                              # shapes differ from what config.json builds
            raise CheckpointError(f"{weights} does not match {cls.__name__} built from its config.json: "
                                  f"{' '.join(str(exc).split())[:300]}") from exc
        if strict and (missing or unexpected):
            raise CheckpointError(f"{weights} does not match {cls.__name__}: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")
        return model.eval()


def local_weights(folder: Path) -> Path:
    """The folder's safetensors weights, or a clear refusal when it only holds pickles."""
    weights = folder / WEIGHTS
    if weights.is_file():
        return weights
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{folder} holds {', '.join(pickles)} but no {WEIGHTS}: genlab refuses to unpickle "
                              "weights (a pickle can run code). Convert them with safetensors.torch.save_file "
                              "in a process you trust.")
    raise CheckpointError(f"{folder} has no {WEIGHTS}")


def read_class_name(folder: Path) -> str:
    """The `_class_name` of a checkpoint folder's config.json."""
    config_file = Path(folder) / "config.json"
    try:
        return json.loads(config_file.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_file} is not a genlab config (no readable _class_name)") from exc
