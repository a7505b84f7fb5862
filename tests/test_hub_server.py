"""core.hub end to end against olah, a Hub-compatible server, serving git repositories from a local folder.

The server (`python -m olah.server` with `offline = true`) speaks the Hub's HTTP API to huggingface_hub exactly as
huggingface.co does for downloads: resolve, snapshot (revision API), tags, branches and commits. olah is read-only,
so publishing is tested at one seam, named here: `HfApi.create_repo/create_branch/create_commit/create_tag` are
replaced by functions that apply the client's commit operations to the server's git repositories; everything
around them (which files `core.hub.push` selects, the card it writes, the CLI) runs for real, and the pushed files
are downloaded back through the server.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, constants, hf_hub_download

from conftest import HUB_PORT, free_port
from core import hub
from core.hub import CheckpointError, load_model, resolve
from core.models.classifier import Classifier, ClassifierConfig
from core.models.ddpm import DDPM, DDPMConfig
from core.models.gan import GAN, GANConfig
from core.models.vae import VAE, VAEConfig

FAMILIES = {"classifier": lambda: Classifier(ClassifierConfig(width=8, hidden=16)),
            "gan": lambda: GAN(GANConfig(architecture="dcgan", image_size=8, feature_maps=8, latent_dim=8)),
            "ddpm": lambda: DDPM(DDPMConfig(image_size=8, widths="8,16", ema_decay=0.9)).exported(),
            "vae": lambda: VAE(VAEConfig(image_size=8, width=8, hidden=16, latent_dim=2))}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "genlab", "GIT_AUTHOR_EMAIL": "genlab@localhost",
           "GIT_COMMITTER_NAME": "genlab", "GIT_COMMITTER_EMAIL": "genlab@localhost"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


class Hub:
    """An olah server and the git repositories it serves (mirrors/models/<org>/<name>)."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.url = root, port, f"http://127.0.0.1:{port}"
        self.mirrors = root / "mirrors"
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        config = root / "olah.toml"
        config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
                          f'mirrors-path = ["{self.mirrors}"]\nmetadata-cache-ttl = 0\n\n[accessibility]\noffline = true\n')
        start = time.perf_counter()
        self.log = (root / "olah.log").open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(config)], cwd=root,
                                        stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                break
            except OSError as exc:
                if getattr(exc, "code", None):          # any HTTP answer means the server is up
                    break
                if self.process.poll() is not None or time.perf_counter() - start > 60:
                    raise RuntimeError(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}")
                time.sleep(0.05)
        self.start_seconds = time.perf_counter() - start

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()

    def repo(self, repo_id: str) -> Path:
        path = self.mirrors / "models" / repo_id
        if not (path / ".git").is_dir():
            path.mkdir(parents=True)
            git(path, "init", "-q", "-b", "main")
        return path

    def publish(self, repo_id: str, folder: Path, tag: str | None = None, message: str = "upload") -> str:
        """Commit the folder's files to the repo's current branch; return the commit id."""
        repo = self.repo(repo_id)
        for item in repo.iterdir():
            if item.name != ".git":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        for item in folder.iterdir():
            shutil.copy(item, repo / item.name)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", message)
        if tag:
            git(repo, "tag", tag)
        return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    hub_server = Hub(tmp_path_factory.mktemp("hub"), HUB_PORT)
    print(f"\nolah started in {hub_server.start_seconds:.2f} s")
    yield hub_server
    hub_server.stop()


def saved(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    hub.write_model_card(folder, "test/model")
    return folder


def test_a_download_fetches_only_the_model_files(server, tmp_path):
    folder = saved(FAMILIES["gan"](), tmp_path / "gan")
    (folder / "optimizer.pt").write_bytes(b"not to be fetched")
    (folder / "notes.txt").write_text("not a model file")
    commit = server.publish("test/only-model-files", folder)
    snapshot = resolve("test/only-model-files")
    assert snapshot.name == commit and snapshot.is_relative_to(Path(constants.HF_HUB_CACHE))
    assert sorted(p.name for p in snapshot.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_round_trip_for_every_family(family, server, tmp_path):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    server.publish(f"test/{family}", saved(model, tmp_path / family))
    loaded = load_model(f"test/{family}")
    direct = type(model).from_pretrained(f"test/{family}")          # the mixin's own Hub path
    for a, b, c in zip(model.state_dict().values(), loaded.state_dict().values(), direct.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    if family == "ddpm":
        assert (resolve("test/ddpm") / "scheduler_config.json").is_file()
        torch.testing.assert_close(loaded.sample(2, steps=2, seed=3), model.sample(2, steps=2, seed=3))


def test_revision_pinning_by_tag_branch_and_commit(server, tmp_path):
    first = server.publish("test/pinned", saved(Classifier(ClassifierConfig(width=8)), tmp_path / "a"), tag="v1")
    repo = server.repo("test/pinned")
    git(repo, "branch", "dev")
    second = server.publish("test/pinned", saved(Classifier(ClassifierConfig(width=4)), tmp_path / "b"))
    width = lambda spec, revision=None: load_model(spec, revision=revision).config.width
    assert width("test/pinned") == 4 and width("test/pinned@main") == 4 and width(f"test/pinned@{second}") == 4
    assert width("test/pinned@v1") == 8 and width("test/pinned@dev") == 8 and width(f"test/pinned@{first}") == 8
    assert width("test/pinned", revision="v1") == 8
    assert resolve("test/pinned@v1").name == first


def test_manifest_entry_resolves_local_then_hub(server, tmp_path):
    folder = saved(FAMILIES["vae"](), tmp_path / "checkpoints" / "vae-local")
    commit = server.publish("test/manifest-vae", folder, tag="v3")
    manifest = tmp_path / "checkpoints" / "index.json"
    entry = {"name": "vae", "family": "vae", "folder": "vae-local", "repo_id": "test/manifest-vae", "revision": "v3"}
    manifest.write_text(json.dumps({"models": [entry]}))
    assert resolve("vae", manifest=manifest) == folder                  # 1. the local folder
    shutil.rmtree(folder)
    assert resolve("vae", manifest=manifest).name == commit             # 2. the Hub at the pinned revision
    assert load_model("vae", manifest=manifest).config.latent_dim == 2


def test_offline_reload_from_the_cache_after_the_server_stops(tmp_path, monkeypatch):
    """A second server, alone for this test: download through it, stop it, and load again from the cache."""
    own = Hub(tmp_path / "own-hub", free_port())
    monkeypatch.setattr(constants, "ENDPOINT", own.url)             # huggingface_hub builds URLs from both
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", own.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    try:
        model = FAMILIES["gan"]().eval()
        own.publish("test/offline", saved(model, tmp_path / "gan"), tag="v1")
        online = resolve("test/offline@v1")
    finally:
        own.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(own.url, timeout=2)                       # the server is gone
    assert resolve("test/offline@v1") == online
    assert torch.equal(load_model("test/offline@v1").sample(2, seed=1), model.sample(2, seed=1))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)             # HF_HUB_OFFLINE=1 reads the same cache
    assert resolve("test/offline@v1") == online
    with pytest.raises(CheckpointError, match=r"could not fetch test/never-downloaded@main .*tried the Hugging Face "
                                              r"Hub at .*; the local Hub cache"):
        resolve("test/never-downloaded")


def test_missing_repo_and_revision_give_clear_errors(server, tmp_path):
    server.publish("test/exists", saved(FAMILIES["classifier"](), tmp_path / "c"))
    with pytest.raises(CheckpointError, match="test/no-such-repo@main .*repository or revision not found"):
        load_model("test/no-such-repo")
    with pytest.raises(CheckpointError, match="test/exists@no-such-tag .*repository or revision not found"):
        load_model("test/exists@no-such-tag")


def test_broken_repos_give_errors_that_name_the_file(server, tmp_path):
    model = FAMILIES["classifier"]()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"_class_name": "Classifier", "width": 8, "hidden": 16}))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    server.publish("test/pickle-only", pickled)
    with pytest.raises(CheckpointError, match="pytorch_model.bin but no model.safetensors: genlab refuses to unpickle"):
        load_model("test/pickle-only")
    corrupt = saved(model, tmp_path / "corrupt")
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    server.publish("test/corrupt", corrupt)
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
        load_model("test/corrupt")
    mismatched = saved(model, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "hidden": 32}))
    server.publish("test/mismatched", mismatched)
    with pytest.raises(CheckpointError, match="model.safetensors does not match Classifier"):
        load_model("test/mismatched")


@pytest.fixture
def intercepted_writes(server, monkeypatch):
    """The seam: the Hub's write endpoints, applied to the olah server's git repositories."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        server.repo(repo_id)

    def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
        calls.append(("create_branch", branch))
        repo = server.repo(repo_id)
        if branch not in git(repo, "branch", "--list", branch):
            git(repo, "branch", branch)

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
        calls.append(("create_commit", [op.path_in_repo for op in operations]))
        repo = server.repo(repo_id)
        if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo, capture_output=True).returncode == 0:
            git(repo, "checkout", "-q", revision or "main")          # (a new repo has no commit to check out)
        for op in operations:
            (repo / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)      # a diffusers folder's unet/
            shutil.copy(op.path_or_fileobj, repo / op.path_in_repo)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", commit_message)
        oid = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-q", "main")
        return CommitInfo(commit_url=f"{server.url}/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)

    def create_tag(self, repo_id, *, tag, revision=None, **kwargs):
        calls.append(("create_tag", tag))
        git(server.repo(repo_id), "tag", tag, revision)

    for name, function in [("create_repo", create_repo), ("create_branch", create_branch),
                           ("create_commit", create_commit), ("create_tag", create_tag)]:
        monkeypatch.setattr(HfApi, name, function)
    return calls


def test_push_publishes_a_checkpoint_that_downloads_back(intercepted_writes, tmp_path, capsys, monkeypatch):
    secret = "hf_thisIsNotARealTokenButMustNeverBePrinted"
    monkeypatch.setenv("HF_TOKEN", secret)
    folder = tmp_path / "dcgan"
    FAMILIES["gan"]().save_pretrained(folder)
    (folder / "eval.json").write_text(json.dumps({"fid": 12.5}))
    (folder / "optimizer.pt").write_bytes(b"training state is not published")
    hub.main(["push", str(folder), "someone/dcgan", "--tag", "v2"])
    printed = capsys.readouterr().out
    commit = printed.split("@")[1].split()[0]
    assert printed.startswith("someone/dcgan@") and "(tag v2)" in printed
    pushed = dict(intercepted_writes)["create_commit"]
    assert sorted(pushed) == ["README.md", "config.json", "eval.json", "model.safetensors"]
    snapshot = resolve("someone/dcgan@v2")
    assert snapshot.name == commit
    for name in pushed:
        assert (snapshot / name).read_bytes() == (folder / name).read_bytes()
    assert secret not in printed and secret not in (snapshot / "README.md").read_text()
    hub.main(["push", str(folder), "someone/dcgan", "--revision", "experiments"])
    assert ("create_branch", "experiments") in intercepted_writes
    assert resolve("someone/dcgan@experiments").name == capsys.readouterr().out.split("@")[1].strip()


def test_the_model_card_renders_with_hub_metadata(server, tmp_path):
    folder = tmp_path / "card"
    DDPM(DDPMConfig(image_size=8, widths="8,16", ema_decay=0.0)).save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"family": "ddpm", "dataset": "fashion-mnist", "steps": 5}))
    (folder / "eval.json").write_text(json.dumps({"fid": 7.25, "tables": {"By sampler": "| a |\n|---|"}}))
    hub.write_model_card(folder, "test/card")
    server.publish("test/card", folder)
    card = ModelCard.load("test/card")                     # fetched through the server and parsed as the Hub does
    assert card.data.library_name == "genlab" and card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.datasets == ["fashion-mnist"] and "ddpm" in card.data.tags
    assert card.data.eval_results[0].metric_type == "fid" and card.data.eval_results[0].metric_value == 7.25
    assert "# test/card" in card.text and "| fid | 7.25 |" in card.text and "### By sampler" in card.text
    assert hf_hub_download("test/card", "scheduler_config.json")


def test_push_all_pins_every_manifest_model_and_pull_fetches_them(intercepted_writes, server, tmp_path, capsys,
                                                                   monkeypatch):
    """push-all uploads each manifest model to NAMESPACE/<name>, tags it, and writes a manifest pinned to the new
    commits; with GENLAB_MANIFEST pointing at it, names resolve through the Hub (no local folders in it)."""
    root = tmp_path / "checkpoints"
    entries = []
    for name in ("gan", "vae"):
        FAMILIES[name]().save_pretrained(root / name)
        entries.append({"name": name, "family": name, "folder": name, "repo_id": f"genlab/{name}", "revision": "v1"})
    (root / "index.json").write_text(json.dumps({"models": entries}))
    monkeypatch.setenv("GENLAB_MANIFEST", str(root / "index.json"))
    pinned = tmp_path / "pinned.json"
    hub.main(["push-all", "alice", "--manifest-out", str(pinned)])
    printed = capsys.readouterr().out
    assert "gan: alice/gan@" in printed and "vae: alice/vae@" in printed
    monkeypatch.setenv("GENLAB_MANIFEST", str(pinned))
    for entry in json.loads(pinned.read_text())["models"]:
        assert "folder" not in entry and git(server.repo(entry["repo_id"]), "rev-parse", "v1") == entry["revision"]
        hub.main(["pull", entry["name"]])
        folder = Path(capsys.readouterr().out.strip())
        assert folder.name == entry["revision"] and (folder / "model.safetensors").is_file()
        assert (folder / "model.safetensors").read_bytes() == (root / entry["name"] / "model.safetensors").read_bytes()


def test_a_download_cap_refuses_large_repos_before_fetching(server, tmp_path):
    folder = saved(FAMILIES["gan"](), tmp_path / "gan")
    server.publish("test/capped", folder)
    size = sum((folder / name).stat().st_size for name in ("config.json", "model.safetensors", "README.md"))
    with pytest.raises(CheckpointError, match=r"test/capped@main holds 0\.\d MB of model files; at most 0 MB"):
        resolve("test/capped", max_bytes=size - 1)
    assert not list(Path(constants.HF_HUB_CACHE).glob("models--test--capped/snapshots/*/model.safetensors"))
    assert (resolve("test/capped", max_bytes=size) / "model.safetensors").is_file()


def test_export_diffusers_pushes_a_pipeline_that_loads_back_by_repo_id(intercepted_writes, tmp_path, capsys):
    """`export-diffusers --push` commits the whole DDPMPipeline folder (subfolders included); the repo id then loads
    as our DDPM through the download path the apps use (no local path), the weights equal, and the diffusion tab
    reads its config without loading it."""
    from core.services.diffusion import DiffusionService
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(image_size=8, widths="8,16", ema_decay=0.0, num_classes=3, eval_steps=7)).eval()
    folder = saved(model, tmp_path / "ddpm")
    hub.main(["export-diffusers", str(folder), str(tmp_path / "exported"), "--push", "someone/ddpm-diffusers"])
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("someone/ddpm-diffusers@")
    pushed = dict(intercepted_writes)["create_commit"]
    assert sorted(pushed) == ["README.md", "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                              "unet/diffusion_pytorch_model.safetensors"]
    snapshot = resolve("someone/ddpm-diffusers", allow_local=False)
    assert snapshot.name == printed.split("@")[1] and (snapshot / "unet" / "config.json").is_file()
    loaded = load_model("someone/ddpm-diffusers", allow_local=False, max_bytes=10**7)
    mine, theirs = model.denoiser.state_dict(), loaded.denoiser.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert loaded.config.num_classes == 3 and loaded.default_sampler == model.default_sampler
    follow = DiffusionService.follow("someone/ddpm-diffusers")
    assert follow["scheduler"]["value"] == model.default_sampler and follow["label"]["interactive"]
