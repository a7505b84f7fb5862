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
import os
from dataclasses import asdict, is_dataclass
from fnmatch import fnmatch
from pathlib import Path

import safetensors.torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError

WEIGHTS = "model.safetensors"
MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "index.json"
# what a download fetches: the model (config, weights, a DDPM's scheduler, the classifier's metric statistics) and
# its card with the card's figures; nothing else in a repo (least of all pickles) is downloaded
HUB_FILES = ["config.json", "model.safetensors", "scheduler_config.json", "reference_stats.safetensors",
             "README.md", "eval.json", "training.json", "*.png"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MODEL_CLASSES = {"Classifier": "core.models.classifier", "GAN": "core.models.gan", "DDPM": "core.models.ddpm",
                 "VAE": "core.models.vae", "CycleGAN": "core.models.cyclegan"}   # _class_name in config.json -> module that defines it


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


def split_spec(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """"user/model@v1" -> ("user/model", "v1"); an explicit `revision` wins over the one in the spec."""
    repo_id, _, pinned = str(spec).partition("@")
    return repo_id, revision or pinned or None


def read_manifest(path: str | Path | None = None) -> dict[str, dict]:
    """The shipped models by short name: {name: {family, folder, repo_id, revision}}. $GENLAB_MANIFEST overrides."""
    path = Path(path or os.environ.get("GENLAB_MANIFEST") or MANIFEST)
    try:
        entries = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read the model manifest {path}: {exc}") from exc
    return {entry["name"]: {**entry, "root": str(path.parent)} for entry in entries}


def resolve(spec: str | Path, revision: str | None = None, manifest: str | Path | None = None) -> Path:
    """A local folder holding the checkpoint named by `spec`: a manifest name, a folder, or `repo_id[@revision]`.

    A manifest entry resolves to its local folder if present, else to the Hub repo at its pinned revision, else to
    the Hub cache (offline, or the Hub unreachable); otherwise a CheckpointError lists every place tried. Hub
    downloads fetch only HUB_FILES, through huggingface_hub (cached, resumable, written to a temporary name and
    renamed, so a failed download never leaves a half-written file in use)."""
    folder = Path(spec)
    if folder.suffix in PICKLE_SUFFIXES or folder.suffix == ".safetensors":
        raise CheckpointError(f"{spec}: pass the checkpoint folder (config.json + {WEIGHTS}), not a weight file")
    entries = read_manifest(manifest) if "/" not in str(spec) else {}
    if str(spec) in entries:
        entry, tried = entries[str(spec)], []
        if entry.get("folder"):
            local = Path(entry["root"]) / entry["folder"]
            if (local / "config.json").is_file():
                return local
            tried.append(f"the local folder {local} (missing)")
        if not entry.get("repo_id"):
            raise CheckpointError(f"model {spec!r}: not found; tried {'; '.join(tried)}")
        return hub_snapshot(entry["repo_id"], revision or entry.get("revision"), tried)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} has no config.json, so it is not a genlab checkpoint folder")
        return folder
    repo_id, revision = split_spec(str(spec), revision)
    if folder.exists() or str(spec).startswith((".", "/")) or repo_id.count("/") != 1 or folder.parent.is_dir():
        known = f"; shipped models: {', '.join(sorted(entries))}" if entries else ""
        raise CheckpointError(f"{spec} is not a checkpoint folder, a shipped model name, nor a Hub repo id such as "
                              f"user/model{known}")
    return hub_snapshot(repo_id, revision, [])


def hub_snapshot(repo_id: str, revision: str | None, tried: list[str]) -> Path:
    """snapshot_download of HUB_FILES; on a network failure, the cached snapshot; else a clear error."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    name = f"{repo_id}@{revision or 'main'}"
    try:
        return check_snapshot(Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)), name)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:      # the Hub answered: no such repo/revision
        raise CheckpointError(f"could not fetch {name} from the Hugging Face Hub ({constants.ENDPOINT}): "
                              f"repository or revision not found ({type(exc).__name__})") from exc
    except CheckpointError:
        raise
    except Exception as exc:                 # offline, unreachable, server error: fall back to the cache
        tried.append(f"the Hugging Face Hub at {constants.ENDPOINT} ({type(exc).__name__}: "
                     f"{(str(exc).splitlines() or [''])[0][:160]})")
    try:
        cached = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=True)
        return check_snapshot(Path(cached), name)
    except CheckpointError:
        raise
    except Exception:
        tried.append(f"the local Hub cache {constants.HF_HUB_CACHE} (no copy of {name})")
    raise CheckpointError(f"could not fetch {name} from the Hugging Face Hub; tried " + "; ".join(tried))


def check_snapshot(folder: Path, name: str) -> Path:
    """A downloaded repo must hold config.json and safetensors weights; a pickle-only repo is refused by name."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{name} has no config.json, so it is not a genlab checkpoint")
    if not (folder / WEIGHTS).is_file():
        from huggingface_hub import HfApi
        try:
            files = HfApi().list_repo_files(name.split("@")[0], revision=name.split("@")[1])
        except Exception:
            files = []
        pickles = sorted(f for f in files if Path(f).suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{name} holds {', '.join(pickles)} but no {WEIGHTS}: genlab refuses to unpickle "
                                  "weights (a pickle can run code)")
        raise CheckpointError(f"{name} has no {WEIGHTS}")
    return folder


def load_model(spec: str | Path, revision: str | None = None, manifest: str | Path | None = None,
               **kwargs) -> HubModel:
    """Any genlab checkpoint (see `resolve`): config.json's _class_name picks the class."""
    folder = resolve(spec, revision, manifest)
    config_file = folder / "config.json"
    try:
        class_name = json.loads(config_file.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_file} is not a genlab config (no readable _class_name)") from exc
    if class_name not in MODEL_CLASSES:
        raise CheckpointError(f"{config_file}: unknown model class {class_name!r}; known: {sorted(MODEL_CLASSES)}")
    cls = getattr(importlib.import_module(MODEL_CLASSES[class_name]), class_name)
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except TypeError as exc:                                    # config.json names options the class does not have
        raise CheckpointError(f"{config_file} does not match {class_name}: {exc}") from exc


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
    for image, caption in evaluation.get("figures", {}).items():     # extra PNGs an evaluation script wrote
        if (folder / image).is_file():
            lines += ["", f"### {caption}", "", f"![{Path(image).stem}]({image})"]
    lines += ["", "## Use", "", "```python", "from core.hub import load_model", "",
              f'model = load_model("{name}")  # or a local folder such as checkpoints/{folder.name}', "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(folder / "README.md")
    return folder / "README.md"


# ----------------------------------------------------------------------------------------------- publishing (CLI)
def push(folder: str | Path, repo_id: str, revision: str | None = None, tag: str | None = None,
         private: bool = False, message: str | None = None) -> str:
    """Create `repo_id` if needed and commit the checkpoint folder's HUB_FILES in one commit; tag it if asked.
    Returns the commit id. The token comes from huggingface_hub's login or $HF_TOKEN and is never printed."""
    from huggingface_hub import CommitOperationAdd, HfApi
    folder = Path(folder)
    load_model(folder)                                   # refuse to publish what genlab itself cannot load
    if not (folder / "README.md").is_file():
        write_model_card(folder, repo_id)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    files = sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch(p.name, pat) for pat in HUB_FILES))
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    commit = api.create_commit(repo_id, operations, commit_message=message or f"genlab: upload {folder.name}",
                               revision=revision)
    if tag:
        api.create_tag(repo_id, tag=tag, revision=commit.oid, exist_ok=True)
    return commit.oid


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m core.hub", description="Publish and fetch genlab checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="upload one checkpoint folder to a Hub repo")
    p.add_argument("folder")
    p.add_argument("repo_id")
    p.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    p.add_argument("--tag", help="tag the new commit")
    p.add_argument("--private", action="store_true")
    p = sub.add_parser("push-all", help="upload every model of the manifest to NAMESPACE/<name>")
    p.add_argument("namespace", help="your Hub user or organisation")
    p.add_argument("--tag", default="v1", help="tag each commit (default v1)")
    p.add_argument("--manifest-out", help="write a manifest pinning the new repos (for GENLAB_MANIFEST)")
    p = sub.add_parser("pull", help="download (or find locally) a checkpoint and print its folder")
    p.add_argument("spec", help="manifest name, folder, repo_id or repo_id@revision")
    sub.add_parser("list", help="the models of the manifest")
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            commit = push(args.folder, args.repo_id, args.revision, args.tag, args.private)
            print(f"{args.repo_id}@{commit}" + (f" (tag {args.tag})" if args.tag else ""))
        elif args.command == "push-all":
            pinned = []
            for name, entry in read_manifest().items():
                repo_id = f"{args.namespace}/{name}"
                commit = push(Path(entry["root"]) / entry["folder"], repo_id, tag=args.tag)
                print(f"{name}: {repo_id}@{commit}", flush=True)
                pinned.append({"name": name, "family": entry["family"], "repo_id": repo_id, "revision": commit})
            if args.manifest_out:
                Path(args.manifest_out).write_text(json.dumps({"models": pinned}, indent=2) + "\n")
                print(f"wrote {args.manifest_out}: run the apps with GENLAB_MANIFEST={args.manifest_out}")
        elif args.command == "pull":
            print(resolve(args.spec))
        else:
            for name, entry in read_manifest().items():
                print(f"{name:16} {entry['family']:10} {entry.get('folder') or '-':16} "
                      f"{entry.get('repo_id')}@{entry.get('revision')}")
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
