"""The checkpoint format: a Hugging Face Hub repo folder, read and written through huggingface_hub.

    checkpoints/<name>/  config.json        constructor arguments + "_class_name" (which model class to build)
                         model.safetensors  the weights: the only weight format ever loaded
                         README.md          model card (YAML metadata for the Hub, then figures and images)

`HubModel` adds `save_pretrained` / `from_pretrained` / `push_to_hub` to a torch module through
`PyTorchModelHubMixin`, with two departures from the mixin's defaults: weights load with strict=True (a
mismatched checkpoint is an error, not silently half-loaded), and a folder or repo that holds only pickled weights
(.bin, .pt, .pth, .ckpt, .pkl) is refused instead of unpickled.
"""
from __future__ import annotations

import importlib
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
MODEL_CLASSES = {"Classifier": "core.models.classifier", "GAN": "core.models.gan", "DDPM": "core.models.ddpm",
                 "VAE": "core.models.vae"}   # _class_name in config.json -> module that defines it


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely: missing, corrupt, pickled, or not matching its class."""


class HubModel(nn.Module, PyTorchModelHubMixin, library_name="genlab", tags=["genlab", "from-scratch"]):
    """A torch module saved and loaded as a Hub repo folder. Subclasses take one dataclass argument, `config`."""

    def _save_pretrained(self, save_directory: Path) -> None:
        safetensors.torch.save_model(self, str(save_directory / WEIGHTS))
        config = {"_class_name": type(self).__name__, **self._hub_mixin_config_dict()}
        (save_directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def _hub_mixin_config_dict(self) -> dict:
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


def load_model(spec: str | Path, revision: str | None = None, **kwargs) -> HubModel:
    """Any genlab checkpoint, local folder or Hub repo id: config.json's _class_name picks the class."""
    folder = Path(spec)
    if folder.suffix in PICKLE_SUFFIXES or folder.suffix == ".safetensors":
        raise CheckpointError(f"{spec}: pass the checkpoint folder (config.json + {WEIGHTS}), not a weight file")
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{folder} has no config.json, so it is not a genlab checkpoint folder")
    elif folder.exists() or str(spec).startswith((".", "/")) or str(spec).count("/") != 1 or folder.parent.is_dir():
        raise CheckpointError(f"{spec} is not a checkpoint folder (nor a Hub repo id such as user/model)")
    else:
        try:
            config_file = Path(hf_hub_download(str(spec), "config.json", revision=revision))
        except Exception as exc:          # offline, unknown repo or revision, server error: say which, briefly
            raise CheckpointError(f"could not fetch {spec}{'@' + revision if revision else ''} from the Hugging Face "
                                  f"Hub: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    try:
        class_name = json.loads(config_file.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{config_file} is not a genlab config (no readable _class_name)") from exc
    if class_name not in MODEL_CLASSES:
        raise CheckpointError(f"{config_file}: unknown model class {class_name!r}; known: {sorted(MODEL_CLASSES)}")
    cls = getattr(importlib.import_module(MODEL_CLASSES[class_name]), class_name)
    return cls.from_pretrained(str(spec), revision=revision, **kwargs)


# ---------------------------------------------------------------------------------------------------- model cards
def write_model_card(folder: Path, repo_id: str | None = None) -> Path:
    """README.md from the folder's own files: config.json, training.json, eval.json and samples.png.

    The YAML header is Hub metadata (library, tags, dataset, pipeline tag, model-index results), so the Hub renders
    the card and lists the figures; the body states what the model is, how it was trained, and what it measures.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    read = lambda name: json.loads((folder / name).read_text()) if (folder / name).is_file() else {}
    config, training, evaluation = read("config.json"), read("training.json"), read("eval.json")
    cls = getattr(importlib.import_module(MODEL_CLASSES[config["_class_name"]]), config["_class_name"])
    dataset = training.get("dataset", "fashion-mnist")
    name = repo_id or f"genlab/{folder.name}"
    scores = {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
    results = [EvalResult(task_type=cls.pipeline_tag, dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                          metric_type=k, metric_name=k, metric_value=v) for k, v in scores.items()]
    data = ModelCardData(library_name="genlab", license="mit", pipeline_tag=cls.pipeline_tag, datasets=[dataset],
                         tags=["genlab", "pytorch", "from-scratch", training.get("family", "")],
                         model_name=name, eval_results=results or None)
    lines = [f"# {name}", "", cls.card_description.strip(), "", "## How it was trained", "",
             "| | |", "|---|---|"]
    for key in ("dataset", "steps", "seconds", "hardware", "images_per_s"):
        if training.get(key) is not None:
            lines.append(f"| {key.replace('_', ' ')} | {training[key]} |")
    if training.get("command"):
        lines += ["", "```bash", training["command"], "```"]
    if training.get("notes"):
        lines += ["", training["notes"]]
    if scores:
        lines += ["", f"## Evaluation ({dataset} test set)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in scores.items()]
    for title, table in evaluation.get("tables", {}).items():
        lines += ["", f"### {title}", "", table]
    if (folder / "samples.png").is_file():
        lines += ["", "## Samples", "", getattr(cls, "card_samples_caption", ""), "", "![samples](samples.png)"]
    lines += ["", "## Use", "", "```python", "from core.hub import load_model", "",
              f'model = load_model("{name}")  # or a local folder such as checkpoints/{folder.name}', "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(folder / "README.md")
    return folder / "README.md"
