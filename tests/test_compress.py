"""core/compress.py: lossless coding with a PixelCNN's categoricals and constriction's range coder, on tiny random
models (a few seconds each): exact round trips, the coded size against the ideal code length, refused files, the
CLI."""
import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core import compress
from core.models.pixelcnn import PixelCNN, PixelCNNConfig

TINY = PixelCNNConfig(hidden=8, layers=2, kernel=3)          # 28x28, as the coder requires


def tiny(seed: int = 0, classes: int = 0) -> PixelCNN:
    torch.manual_seed(seed)
    return PixelCNN(dataclasses.replace(TINY, num_classes=classes))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def fashion(fashion_dir):
    from core.data import load_dataset
    data = load_dataset("fashion-mnist", "test")
    return data.images[:4, 0].numpy(), data.labels[:4]


@pytest.fixture(scope="module")
def coded():
    model, images = tiny(), random_images(3)
    return model, images, compress.encode(model, "tiny", images, ["a.png", "b.png", "c.png"], batch_size=2)


def test_random_images_round_trip_exactly(coded):
    model, images, data = coded
    decoded, names = compress.decode(model, data)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, images)
    assert names == ["a.png", "b.png", "c.png"]


def test_fashion_images_round_trip_exactly(fashion):
    model, (images, _) = tiny(1), fashion
    names = [f"{i:04d}.png" for i in range(len(images))]
    decoded, decoded_names = compress.decode(model, compress.encode(model, "tiny", images, names, batch_size=3))
    assert np.array_equal(decoded, images) and decoded_names == names


def test_the_coded_size_is_the_ideal_code_length(coded):
    model, images, data = coded
    _, words = compress.unpack(data)
    ideal = compress.code_length_bits(model, images).sum()             # −log₂ p(x) summed, full forward passes
    coded_bits = 32 * len(words)
    assert ideal - 1 <= coded_bits <= 1.01 * ideal + 64, (coded_bits, ideal)


def test_a_conditional_model_codes_its_best_label_first(fashion):
    model, (images, _) = tiny(2, classes=3), fashion
    names = [f"{i}.png" for i in range(len(images))]
    data = compress.encode(model, "tiny-cond", images, names, batch_size=4)
    decoded, decoded_names = compress.decode(model, data)
    assert np.array_equal(decoded, images) and decoded_names == names
    nats = compress.class_nats(model, torch.from_numpy(images).long(), 4)                      # (N, K)
    expected = (nats.min(1).values / np.log(2) + np.log2(3)).numpy()                       # two-part code length
    assert np.allclose(compress.code_length_bits(model, images), expected)
    assert 32 * len(compress.unpack(data)[1]) <= 1.01 * expected.sum() + 64


def test_corrupted_truncated_and_foreign_files_are_refused(coded):
    model, _, data = coded
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(compress.CompressedFileError, match="corrupted or truncated"):
        compress.decode(model, bytes(flipped))
    with pytest.raises(compress.CompressedFileError, match="corrupted or truncated"):
        compress.decode(model, data[:-9])
    with pytest.raises(compress.CompressedFileError, match="not a genlab compressed file"):
        compress.decode(model, b"\x89PNG\r\n" + data[6:])
    with pytest.raises(compress.CompressedFileError, match="another model"):
        compress.decode(tiny(seed=5), data)


def forged(data: bytes, **changes) -> bytes:
    """The file with header fields changed and a valid CRC: what a hostile or buggy writer could produce."""
    header, words = compress.unpack(data)
    return compress.pack({**header, **changes}, words)


def test_hostile_names_and_wrong_checksums_are_refused(coded):
    model, _, data = coded
    for name in ("../evil.png", "sub/x.png", "..", "a\\b.png"):
        with pytest.raises(compress.CompressedFileError, match="unsafe name"):
            compress.decode(model, forged(data, names=[name, "b.png", "c.png"]))
    with pytest.raises(compress.CompressedFileError, match="checksum"):
        compress.decode(model, forged(data, checksum=b"\0" * compress.HASH_BYTES))
    body = forged(data)[:-4] + b"\0"                                      # trailing byte, CRC recomputed
    with pytest.raises(compress.CompressedFileError, match="trailing"):
        compress.decode(model, body + struct.pack("<I", zlib.crc32(body)))


def test_bad_inputs_are_refused_with_the_file_named():
    model = tiny()
    with pytest.raises(ValueError, match="big.png.*28x28"):
        compress.encode(model, "tiny", np.zeros((1, 32, 32), np.uint8), ["big.png"])
    with pytest.raises(ValueError, match="uint8"):
        compress.encode(model, "tiny", np.zeros((1, 28, 28), np.int64), ["a.png"])
    with pytest.raises(ValueError, match="plain file name"):
        compress.encode(model, "tiny", np.zeros((1, 28, 28), np.uint8), ["../a.png"])


def test_the_cli_round_trips_a_folder_of_pngs(tmp_path, fashion):
    images, _ = fashion
    model_dir, in_dir, out_dir, packed = tmp_path / "model", tmp_path / "in", tmp_path / "out", tmp_path / "x.glpx"
    tiny(3).save_pretrained(model_dir)
    in_dir.mkdir()
    names = ["shirt.png", "bag.png", "z 1.png"]
    for name, image in zip(names, images):
        Image.fromarray(image, mode="L").save(in_dir / name)
    compress.main(["encode", "--model", str(model_dir), "--batch-size", "2", str(in_dir), str(packed)])
    compress.main(["decode", str(packed), str(out_dir)])
    for name, image in zip(names, images):
        with Image.open(out_dir / name) as decoded:
            assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), image)
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        compress.main(["decode", str(packed), str(out_dir)])
    compress.main(["decode", "--force", str(packed), str(out_dir)])
    hub_named = tmp_path / "hub.glpx"                     # a file alone never makes the decoder fetch a Hub repo
    hub_named.write_bytes(forged(packed.read_bytes(), model="someone/evil-model"))
    with pytest.raises(SystemExit, match="pass --model"):
        compress.main(["decode", str(hub_named), str(tmp_path / "elsewhere")])
    Image.fromarray(np.stack([images[0]] * 3, -1), mode="RGB").save(in_dir / "colour.png")
    with pytest.raises(SystemExit, match="colour.png: mode RGB"):
        compress.main(["encode", "--force", "--model", str(model_dir), str(in_dir), str(packed)])
