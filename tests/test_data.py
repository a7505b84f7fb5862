import gzip

import numpy as np
import pytest
import torch

from core import data as data_module
from core.data import (FASHION_CLASSES, DatasetNotFound, ImageData, load_dataset, pad_images,
                       read_idx, write_idx)


def test_reads_the_real_fashion_mnist_files(fashion_dir):
    images = read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(fashion_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10          # the test set is balanced
    train = load_dataset("fashion-mnist", "train")
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.classes == FASHION_CLASSES


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) * 7 % 251).reshape(2, 3, 5).astype(dtype)
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and np.array_equal(back, array)
    if suffix:
        assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, {np.uint8: 8, np.int32: 0x0C, np.float32: 0x0D}[dtype], 3])


def test_idx_errors_are_clear(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    write_idx(tmp_path / "ok", np.zeros((4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-3])
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(tmp_path / "short")


def write_fake_mnist(folder, n=20):
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("t10k", n // 2)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.full((count, 28, 28), 255, np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))


def test_mnist_from_a_folder_the_user_names(tmp_path):
    write_fake_mnist(tmp_path / "m")
    train = load_dataset("mnist", "train", root=tmp_path / "m")
    test = load_dataset("mnist", "test", root=tmp_path / "m")
    assert len(train) == 20 and len(test) == 10 and train.classes[3] == "3"
    assert torch.all(train.batch(slice(0, 4)).images == 1.0)      # 255 -> +1


def test_offline_without_files_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "search_dirs", lambda name, root=None: [tmp_path / "nothing"])
    monkeypatch.setattr(data_module, "cache_dir", lambda name: tmp_path / "cache" / name)
    monkeypatch.setitem(data_module.MIRRORS, "fashion-mnist", "http://127.0.0.1:9/")   # nothing listens on port 9
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", "train")
    assert "download from http://127.0.0.1:9/ failed" in str(info.value)
    monkeypatch.setenv("GENLAB_OFFLINE", "1")
    with pytest.raises(DatasetNotFound, match="downloads are off"):
        load_dataset("fashion-mnist", "test")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar10")


def test_batches_scale_pad_and_cover_an_epoch_once(digits):
    batches = list(digits.batches(100, seed=1, epoch=0, drop_last=False))
    labels = torch.cat([b.labels for b in batches])
    assert len(labels) == len(digits) and torch.equal(labels.sort().values, digits.labels.sort().values)
    images = batches[0].images
    assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1 and images.max() == 1
    assert torch.equal(next(digits.batches(100, 1, 0)).labels, batches[0].labels)       # order fixed by seed+epoch
    assert not torch.equal(next(digits.batches(100, 1, 1)).labels, batches[0].labels)
    assert torch.equal(next(digits.batches(100, 1, 0, start=2)).labels, batches[2].labels)   # resume mid-epoch
    padded = pad_images(images, 12)
    assert padded.shape[-2:] == (12, 12) and torch.all(padded[..., :2, :] == -1)
    assert torch.equal(padded[..., 2:10, 2:10], images)


def test_processes_draw_disjoint_shards(digits):
    shards = [torch.cat([b.labels for b in digits.batches(10, 0, 0, rank=r, world_size=2)]) for r in (0, 1)]
    assert abs(len(shards[0]) - len(shards[1])) <= 10
    first = [next(digits.batches(10, 0, 0, rank=r, world_size=2)).images for r in (0, 1)]
    assert not torch.equal(first[0], first[1])


def test_class_subsets(fashion_dir):
    test = load_dataset("fashion-mnist", "test")
    sneakers = test.subset(["sneaker"])
    assert len(sneakers) == 1000 and torch.all(sneakers.labels == 7)
    both = load_dataset("fashion-mnist", "test", classes=["sneaker", 9], pad_to=32)
    assert set(both.labels.tolist()) == {7, 9} and both.image_shape == (1, 32, 32)
    with pytest.raises(ValueError, match="unknown class 'sandals'"):
        test.subset(["sandals"])


def test_image_data_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), ("a",))
    with pytest.raises(ValueError, match="labels"):
        ImageData(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ("a",))


def test_perturbed_replaces_the_given_share_of_pixels_by_uniform_levels():
    from core.data import perturbed
    images = torch.zeros(64, 1, 28, 28) - 1                                # all black
    seeded = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(perturbed(images, 0.0, seeded()), images)
    out = perturbed(images, 0.2, seeded())
    assert torch.equal(out, perturbed(images, 0.2, seeded()))
    assert abs(float((out != images).float().mean()) - 0.2 * 255 / 256) < 0.01
    levels = torch.round((perturbed(images, 1.0, seeded()) + 1) * 127.5).long().flatten()
    counts = torch.bincount(levels, minlength=256).double()
    assert levels.min() == 0 and levels.max() == 255
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())    # 255 degrees of freedom: mean 255, sd 22.6
    assert chi2 < 255 + 5 * 22.6
