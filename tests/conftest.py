import os
import socket
import tempfile


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# huggingface_hub freezes these at its first import (core.hub imports it), so they are set before anything else:
# the tests talk to a local Hub-compatible server (tests/test_hub_server.py) and never to huggingface.co.
HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="genlab-hf-home-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.config import TrainConfig
from core.data import load_dataset
from core.models.classifier import Classifier, ClassifierConfig

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


def require_fashion() -> Path:
    """The Debian package's files; CI installs them, so a missing file fails there instead of skipping."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        message = "Fashion-MNIST not installed: sudo apt-get install dataset-fashion-mnist"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return FASHION_DIR


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return require_fashion()


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", "test")


@pytest.fixture(scope="session")
def digits_classifier(digits):
    """A small classifier fitted to the 8x8 digits in a second (93% test accuracy): a judge for tiny generators
    and a target for attacks."""
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(width=8, hidden=32, dropout=0.0, augment=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for batch in list(digits.batches(128, seed=0, epoch=0)) * 4:
        loss = F.cross_entropy(model(batch.images), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def tiny_config(tmp_path) -> TrainConfig:
    """A few seconds of training on the 8x8 digits, with nothing written outside tmp_path."""
    return TrainConfig(dataset="digits", batch_size=32, max_steps=12, log_every=4, eval_every=0, eval_size=64,
                       checkpoint_every=6, runs_dir=str(tmp_path), run_name="run", lr=3e-3, cpu=True)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): models this small
    gain nothing from threads, and a busy machine makes two threads wait on each other (20x slower once while a
    training run held the other core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def start_sampler(extra_env: dict | None = None, log_dir: Path | None = None):
    """`python apps/sampler.py` as a user starts it (as the Dockerfile and Spaces do) on a free 127.0.0.1 port.
    Returns (process, url, log path) once its API answers."""
    import subprocess
    import sys
    import time
    import urllib.request
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           **(extra_env or {})}
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="genlab-sampler-log-")) / "server.log"
    log = open(log_path, "w+")
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "apps/sampler.py"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if urllib.request.urlopen(f"{url}/gradio_api/info", timeout=2).status == 200:
                break
        except OSError:
            pass
        if server.poll() is not None or time.perf_counter() - start > 120:
            pytest.fail(f"the sampler did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    print(f"\nsampler started in {time.perf_counter() - start:.2f} s")
    return server, url, log_path


@pytest.fixture(scope="session")
def sampler_server():
    """The sampler, once per session: (url, path of its log)."""
    server, url, log_path = start_sampler()
    yield url, log_path
    server.terminate()
    server.wait(timeout=30)
    print(log_path.read_text()[-2000:])


@pytest.fixture(scope="session")
def sampler_url(sampler_server) -> str:
    return sampler_server[0]
