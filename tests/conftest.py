import os
from pathlib import Path

import pytest
import torch

from core.config import TrainConfig
from core.data import load_dataset

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


@pytest.fixture
def tiny_config(tmp_path) -> TrainConfig:
    """A few seconds of training on the 8x8 digits, with nothing written outside tmp_path."""
    return TrainConfig(dataset="digits", batch_size=32, max_steps=12, log_every=4, eval_every=0, eval_size=64,
                       checkpoint_every=6, runs_dir=str(tmp_path), run_name="run", lr=3e-3, cpu=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
