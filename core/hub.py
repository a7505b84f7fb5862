"""Finding, loading and publishing checkpoints: shipped names, local folders and Hugging Face Hub repos.

A checkpoint is a Hub repo folder (core.checkpoint: config.json + model.safetensors + README.md). `resolve` turns a
manifest name (checkpoints/index.json), a folder or `owner/name[@revision]` into a local folder, downloading through
huggingface_hub; `load_model` builds the class config.json names (core.families); `push` publishes a folder;
`attach_guide` makes one diffusion checkpoint from a model and its autoguidance guide; `export_diffusers` writes a
diffusion model as a diffusers DDPMPipeline folder (and pushes it), and `load_model` reads such folders back as
DDPMs (core/models/diffusers_export.py); `python -m core.hub` is the command line for all of them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import functools
from fnmatch import fnmatch
from pathlib import Path

from core import metrics
from core.cards import write_model_card
from core.checkpoint import PICKLE_SUFFIXES, WEIGHTS, CheckpointError, HubModel, read_class_name
from core.data import load_dataset
from core.families import class_named
from core.models.diffusers_export import DIFFUSERS_WEIGHTS, ddpm_config, diffusers_folders, import_diffusers

MANIFEST = Path(__file__).resolve().parents[1] / "checkpoints" / "index.json"
METRIC_CLASSIFIER = MANIFEST.parent / "classifier"     # whose features every sample-quality figure uses
# what a download fetches: the model (config, weights, a DDPM's scheduler, the classifier's metric statistics) and
# its card with the card's figures; nothing else in a repo (least of all pickles) is downloaded
HUB_FILES = ["config.json", "model.safetensors", "scheduler_config.json", "reference_stats.safetensors",
             "README.md", "eval.json", "training.json", "*.png",
             "model_index.json", "unet/config.json", f"unet/{DIFFUSERS_WEIGHTS}", "scheduler/scheduler_config.json",
             DIFFUSERS_WEIGHTS]          # a diffusers UNet2DModel or pipeline folder (imported by `load_model`)
__all__ = ["CheckpointError", "attach_guide", "export_diffusers", "load_model", "push", "read_config", "read_manifest",
           "resolve", "write_model_card"]


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


def resolve(spec: str | Path, revision: str | None = None, manifest: str | Path | None = None,
            allow_local: bool = True, max_bytes: int | None = None) -> Path:
    """A local folder holding the checkpoint named by `spec`: a manifest name, a folder (unless `allow_local` is
    False, as for names that come from app requests), or `repo_id[@revision]`. A Hub repo whose model files add up
    to more than `max_bytes` is refused before anything is downloaded.

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
    if allow_local and folder.is_dir():
        if not (folder / "config.json").is_file() and not (folder / "model_index.json").is_file():
            raise CheckpointError(f"{folder} has no config.json, so it is not a genlab checkpoint folder")
        return folder
    repo_id, revision = split_spec(str(spec), revision)
    if str(spec).startswith((".", "/")) or repo_id.count("/") != 1 or (allow_local and (folder.exists() or
                                                                                          folder.parent.is_dir())):
        known = f"; shipped models: {', '.join(sorted(entries))}" if entries else ""
        raise CheckpointError(f"{spec} is not a checkpoint folder, a shipped model name, nor a Hub repo id such as "
                              f"user/model{known}")
    return hub_snapshot(repo_id, revision, [], max_bytes)


def download_size(repo_id: str, revision: str | None) -> int:
    """Bytes of the repo's HUB_FILES at `revision`, from the file list and one HEAD request per file."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    info = HfApi().model_info(repo_id, revision=revision or "main")
    names = [s.rfilename for s in info.siblings or [] if any(fnmatch(s.rfilename, p) for p in HUB_FILES)]
    return sum(get_hf_file_metadata(hf_hub_url(repo_id, name, revision=info.sha)).size or 0 for name in names)


def hub_snapshot(repo_id: str, revision: str | None, tried: list[str], max_bytes: int | None = None) -> Path:
    """snapshot_download of HUB_FILES; on a network failure, the cached snapshot; else a clear error."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    name = f"{repo_id}@{revision or 'main'}"
    try:
        if max_bytes is not None and (size := download_size(repo_id, revision)) > max_bytes:
            raise CheckpointError(f"{name} holds {size / 2**20:.1f} MB of model files; at most "
                                  f"{max_bytes / 2**20:.0f} MB are downloaded here")
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
    """A downloaded repo must hold config.json and safetensors weights (a diffusers folder: its own file names);
    a pickle-only repo is refused by name."""
    if not (folder / "config.json").is_file() and not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{name} has no config.json, so it is not a genlab checkpoint")
    layout = diffusers_folders(folder)
    weights = (layout[0] / DIFFUSERS_WEIGHTS) if layout else (folder / WEIGHTS)
    if not weights.is_file():
        from huggingface_hub import HfApi
        try:
            files = HfApi().list_repo_files(name.split("@")[0], revision=name.split("@")[1])
        except Exception:
            files = []
        pickles = sorted(f for f in files if Path(f).suffix in PICKLE_SUFFIXES)
        expected = weights.relative_to(folder).as_posix()
        if pickles:
            raise CheckpointError(f"{name} holds {', '.join(pickles)} but no {expected}: genlab refuses to unpickle "
                                  "weights (a pickle can run code)")
        raise CheckpointError(f"{name} has no {expected}")
    return folder


def load_model(spec: str | Path, revision: str | None = None, manifest: str | Path | None = None,
               allow_local: bool = True, max_bytes: int | None = None, **kwargs) -> HubModel:
    """Any genlab checkpoint (see `resolve`): config.json's _class_name picks the class. A diffusers UNet2DModel or
    pipeline folder whose network and scheduler genlab can express loads as a DDPM (core/models/diffusers_export.py);
    one it cannot is refused with the key that has no genlab equal."""
    folder = resolve(spec, revision, manifest, allow_local, max_bytes)
    if diffusers_folders(folder):
        try:
            return import_diffusers(folder)
        except ValueError as exc:
            raise CheckpointError(f"{spec} (diffusers): {exc}") from None
    config_file = folder / "config.json"
    class_name = read_class_name(folder)
    try:
        cls = class_named(class_name)
    except CheckpointError as exc:
        raise CheckpointError(f"{config_file}: {exc}") from None
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except TypeError as exc:                                    # config.json names options the class does not have
        raise CheckpointError(f"{config_file} does not match {class_name}: {exc}") from exc


def read_config(folder: Path) -> dict:
    """A resolved folder's config as a dict, nothing loaded: config.json, or for a diffusers folder the DDPM config
    it loads as (with _class_name "DDPM")."""
    if diffusers_folders(folder):
        try:
            return {"_class_name": "DDPM", **dataclasses.asdict(ddpm_config(folder))}
        except ValueError as exc:
            raise CheckpointError(f"{folder.name} (diffusers): {exc}") from None
    return json.loads((folder / "config.json").read_text())


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


def attach_guide(model_folder: str | Path, guide_folder: str | Path, out: str | Path, scale: float,
                 sampler: str | None = None) -> Path:
    """Autoguidance (Karras et al. 2024): save the diffusion model of `model_folder` with the smaller, shorter-trained
    model of `guide_folder` attached as its guide at scale w (and `sampler` as its own scheduler, if given), as one
    checkpoint folder `out` (its card comes later, from core.evaluate --write)."""
    model, guide = load_model(model_folder), load_model(guide_folder)
    if not hasattr(model, "with_guide") or type(guide) is not type(model):
        raise CheckpointError(f"autoguidance pairs two diffusion models; got a {type(model).__name__} and a "
                              f"{type(guide).__name__}")
    try:
        guided = model.with_guide(guide, scale, sampler)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    guided.save_pretrained(out)
    return Path(out)


def export_diffusers(spec: str | Path, out: str | Path, sampler: str | None = None,
                     push_to: str | None = None) -> str:
    """A DDPM-family model as a folder that diffusers.DDPMPipeline.from_pretrained loads (core/models/
    diffusers_export.py); a model it cannot run is refused with the reason. With `push_to`, the folder is also
    committed to that Hub repo (every file, subfolders included); returns the folder, or `repo_id@commit`."""
    from core.models.diffusers_export import export_pipeline
    model = load_model(spec)
    try:
        folder = export_pipeline(model, out, source=str(spec), sampler=sampler)
    except ValueError as exc:
        raise CheckpointError(f"{spec}: {exc}") from None
    if not push_to:
        return str(folder)
    from huggingface_hub import CommitOperationAdd, HfApi
    api = HfApi()
    api.create_repo(push_to, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in sorted(folder.rglob("*")) if p.is_file()]
    commit = api.create_commit(push_to, operations, commit_message=f"genlab: {spec} as a diffusers DDPMPipeline")
    return f"{push_to}@{commit.oid}"


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
    p = sub.add_parser("guide", help="attach a smaller diffusion model as a trained one's autoguidance guide")
    p.add_argument("model", help="the trained diffusion model's folder")
    p.add_argument("guide", help="its guide: the same objective, a smaller U-Net trained for fewer steps")
    p.add_argument("out", help="the folder to write the guided model to")
    p.add_argument("--scale", type=float, default=1.5, help="the guidance scale w it samples with by default")
    p.add_argument("--sampler", help="the scheduler it samples with by default (e.g. dpm_solver_sde; default: the "
                                     "model's own)")
    p = sub.add_parser("export-diffusers", help="write a diffusion model as a diffusers DDPMPipeline folder")
    p.add_argument("model", help="manifest name, folder, repo_id or repo_id@revision of a DDPM-family model")
    p.add_argument("out_dir", help="the folder to write (model_index.json, unet/, scheduler/, README.md)")
    p.add_argument("--sampler", help="the scheduler to write, one of the model's samplers (default: its own)")
    p.add_argument("--push", metavar="REPO_ID", help="also push the folder to this Hub repo (created if missing)")
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
        elif args.command == "guide":
            print(attach_guide(args.model, args.guide, args.out, args.scale, args.sampler))
        elif args.command == "export-diffusers":
            print(export_diffusers(args.model, args.out_dir, args.sampler, args.push))
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


@functools.cache
def metric_yardstick(folder: Path = METRIC_CLASSIFIER) -> metrics.Yardstick:
    """The shipped Fashion-MNIST classifier whose features every genlab sample-quality figure uses, with the scales
    and thresholds stored beside it for the test set, and the training images for the copy figures (when the
    Fashion-MNIST files are on this machine)."""
    classifier = load_model(folder)
    stored = metrics.load_reference(folder) if (Path(folder) / metrics.REFERENCE_FILE).is_file() else None
    try:
        memory = load_dataset("fashion-mnist", "train").batch(slice(None)).images
    except FileNotFoundError:
        memory = None
    return metrics.Yardstick(classifier, stored, classifier.config.channels, memory)
