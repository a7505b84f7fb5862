"""Lossless image compression with a PixelCNN's exact likelihood (issue 44): the model's per-pixel categoricals drive
constriction's range coder (`constriction.stream.queue.RangeEncoder`, its `Categorical` entropy model; no home-made
coder).

The maths. A PixelCNN gives p(x) = Π_i p(k_i | k_<i) over the D = H·W pixel levels k_i ∈ {0, …, 255} of a grey
image, each factor a 256-way softmax. An entropy coder fed these distributions in raster order spends close to the
ideal code length
    L(x) = −log₂ p(x) = Σ_i −log₂ p(k_i | k_<i)  bits,
so bytes per image ≈ bits/dim · D / 8 (D = 784 for 28x28: 3.0 bits/dim is 294 bytes). The decoder runs the same
network pixel by pixel (core.models.autoregressive.raster_loop, the cached fast path): at pixel i it has decoded
k_<i, so it can compute the same p(· | k_<i) and decode k_i. The coder's overhead over Σ L(x):
  - quantisation: constriction's range coder represents each probability as an integer out of 2^24, every level
    getting at least 2^−24 (so a level of model probability ≈ 0 stays codable); the loss is a small fraction of a
    percent for a trained model's distributions;
  - termination: the stream is flushed to whole 32-bit words, at most one word or so per file;
  - the header below (tens of bytes plus each file name), which dominates for a single image.
All the images of a file share one stream, so the per-image termination cost is amortised.

Class-conditional models. p(x | y) needs the label, which the decoder does not know. The code is two-part: the
encoder picks y* = argmin_y −log₂ p(x | y) (one full forward pass per class, batched over the images) and codes y*
first with a uniform distribution over the K classes, then the pixels given y*:
    L(x) = log₂ K + min_y −log₂ p(x | y)  ≥  −log₂ p(x) = −log₂ Σ_y p(x | y)/K
The gap to the unconditional likelihood is log₂ K − log₂ (Σ_y p(x | y) / max_y p(x | y)) ∈ [0, log₂ K] bits per
image (bits-back coding would recover it; 3.3 bits for K = 10 at most, < 0.5 byte). The labels of all images are
coded at the start of the stream, then the pixels, batch by batch, pixel by pixel, the images of a batch interleaved.

Determinism. The decoder must reproduce the encoder's float probabilities bit for bit, or it decodes garbage. So the
encoder runs the very computation the decoder runs (the same pixel-by-pixel fast path on a zero canvas, not a full
forward pass; the same batch grouping; the same torch thread count, set explicitly while coding and restored after;
the model's own precision via `model.autocast()`), and the probabilities go to the coder as float64 softmaxes of the
logits. Float results can differ between torch builds, CPU kinds (instruction sets), thread counts and versions of
genlab's fast path (core/models/autoregressive.py): decoding needs the same torch build, genlab code and kind of CPU as
encoding (the file records the torch version, device type, batch
size and thread count; the decoder uses the recorded ones). A checksum of the images in the header catches a decode
that went astray on another machine, and a CRC-32 catches a corrupted or truncated file.

The file format (a header with the model's fingerprint, the names and the coded words, checked by a CRC-32) is in
core/compress_format.py.

Inputs: (N, S, S) uint8 levels with S the model's image side (28). The CLI reads 8-bit greyscale PNGs (Pillow mode
"L") only and refuses colour or 16-bit files instead of converting them, since a conversion would not be lossless.
PNG metadata (text chunks, gamma, ...) is not kept: decoding gives the same pixel levels, written as plain PNGs.

    python -m core.compress encode --model pixelcnn IN_DIR OUT_FILE
    python -m core.compress decode OUT_FILE OUT_DIR [--force]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.compress_format import HASH_BYTES, CompressedFileError, check_name, pack, read_header, unpack  # noqa: F401

DEFAULT_BATCH_SIZE = 200          # images per raster loop: 0.14 s/image at batch 200 vs 2.9 s alone, one thread
DEFAULT_THREADS = 1               # the same on every machine, so a file decodes wherever the CPU kind is the same


# ------------------------------------------------------------------------------------------------- helpers
def model_fingerprint(model) -> bytes:
    """8 bytes of SHA-256 over the model's config, precision and weights (names, dtypes, shapes, raw bytes)."""
    digest = hashlib.sha256()
    digest.update(repr(getattr(model, "config", None)).encode())
    digest.update(str(getattr(model, "precision", "fp32")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()[:HASH_BYTES]


def images_checksum(levels: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(levels, dtype=np.uint8).tobytes()).digest()[:HASH_BYTES]


def check_images(model, images, names) -> tuple[np.ndarray, list[str]]:
    """(N, S, S) uint8 levels (a (N, 1, S, S) array is accepted too) and N distinct plain names."""
    names = [check_name(name) for name in names]
    if len(set(names)) != len(names):
        raise ValueError("file names must be distinct")
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    side = model.config.image_size
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or len(array) != len(names):
        raise ValueError(f"images must be (N, {side}, {side}) grey levels with one name each, got shape "
                         f"{tuple(array.shape)} and {len(names)} names")
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 levels 0…255, got dtype {array.dtype}")
    if array.shape[1:] != (side, side):
        raise ValueError(f"{names[0] if names else 'images'}: {array.shape[2]}x{array.shape[1]}, the model codes "
                         f"{side}x{side} grey images")
    if not len(array):
        raise ValueError("no images to encode")
    return np.ascontiguousarray(array), names


@contextlib.contextmanager
def coding_state(model, threads: int):
    """torch's thread count set to `threads`, the model in eval mode, no autograd; all restored after."""
    if not isinstance(threads, int) or not 1 <= threads < 2 ** 16:
        raise ValueError(f"threads must be an integer ≥ 1, got {threads!r}")
    old_threads, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or not 1 <= batch_size < 2 ** 16:
        raise ValueError(f"batch_size must be an integer in [1, 65535], got {batch_size!r}")
    return batch_size


def classes(model) -> int:
    return int(getattr(model.config, "num_classes", 0) or 0)


# ------------------------------------------------------------------------------------------------- likelihood
@torch.no_grad()
def class_nats(model, levels: Tensor, batch_size: int) -> Tensor:
    """−ln p(x | y) for every class, (N, K) float64 (full forward passes; K = 1 column for an unconditional
    model)."""
    rows = []
    for start in range(0, len(levels), batch_size):
        part = levels[start:start + batch_size].to(model.device)
        with model.autocast():
            if classes(model):
                per_class = [model.nats(part, torch.full((len(part),), y, dtype=torch.long))
                             for y in range(classes(model))]
            else:
                per_class = [model.nats(part)]
        rows.append(torch.stack(per_class, 1).double().cpu())
    return torch.cat(rows)


def choose_labels(model, levels: Tensor, batch_size: int) -> Tensor | None:
    """y* = argmin_y −log p(x | y) per image, or None for an unconditional model."""
    return class_nats(model, levels, batch_size).argmin(1) if classes(model) else None


@torch.no_grad()
def code_length_bits(model, images, batch_size: int = DEFAULT_BATCH_SIZE,
                     threads: int = DEFAULT_THREADS) -> np.ndarray:
    """The ideal code length of each image in bits, (N,) float64: −log₂ p(x), or log₂ K + min_y −log₂ p(x | y) for
    a class-conditional model (the two-part code). Full forward passes; the reference the coded size is near."""
    array, _ = check_images(model, images, [f"{i}" for i in range(len(images))])
    with coding_state(model, threads):
        nats = class_nats(model, torch.from_numpy(array).long(), check_batch_size(batch_size))
    bits = nats.min(1).values / math.log(2)
    if classes(model):
        bits = bits + math.log2(classes(model))
    return bits.numpy()


# ------------------------------------------------------------------------------------------------- coding
def pixel_loop(model, count: int, labels: Tensor | None, batch_size: int, code) -> Tensor:
    """Run the cached raster loop over the images in batches of `batch_size`, on a zero canvas, the same way for the
    encoder and the decoder. `code(start, probabilities (n, 256) float64 ndarray, row, col)` codes the pixel of the
    images start … start + n − 1 and returns their levels (n,) as int64."""
    from core.models.autoregressive import raster_loop
    from core.models.pixelcnn import embed
    side, device, out = model.config.image_size, model.device, []
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        part = labels[start:start + n].to(device) if labels is not None else None

        def draw(logits: Tensor, row: int, col: int, start=start) -> Tensor:
            probabilities = torch.softmax(logits.double(), 1).cpu().numpy()
            return torch.from_numpy(code(start, probabilities, row, col)).to(device)

        with model.autocast():
            canvas = torch.zeros(n, side, side, dtype=torch.long, device=device)
            out.append(raster_loop(model.network, embed, canvas, part, draw).cpu())
    return torch.cat(out)


def uniform_labels_model(k: int):
    import constriction
    return constriction.stream.model.Categorical(np.full(k, 1.0 / k), perfect=False)


def encode(model, model_name: str, images, names, batch_size: int = DEFAULT_BATCH_SIZE,
           threads: int = DEFAULT_THREADS) -> bytes:
    """The compressed file of `images` (N, S, S) uint8 (numpy or torch) named `names`: header and range-coded
    words. `model_name` (a manifest name, folder or repo id) is recorded so that the CLI's decoder can load it."""
    import constriction
    array, names = check_images(model, images, names)
    batch_size = check_batch_size(batch_size)
    levels = torch.from_numpy(array).long()
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    with coding_state(model, threads):
        labels = choose_labels(model, levels, batch_size)
        if labels is not None:
            encoder.encode(labels.numpy().astype(np.int32), uniform_labels_model(classes(model)))

        def code(start, probabilities, row, col):
            known = array[start:start + len(probabilities), row, col].astype(np.int32)
            encoder.encode(known, family, probabilities)
            return known.astype(np.int64)

        pixel_loop(model, len(array), labels, batch_size, code)
    words = encoder.get_compressed().astype("<u4")
    header = {"fingerprint": model_fingerprint(model), "side": model.config.image_size, "classes": classes(model),
              "count": len(array), "batch_size": batch_size, "threads": threads,
              "checksum": images_checksum(array), "model": str(model_name), "device": model.device.type,
              "torch": torch.__version__, "names": names}
    return pack(header, words)


def decode(model, data: bytes, check_model: bool = True) -> tuple[np.ndarray, list[str]]:
    """(images (N, S, S) uint8, names) from a file written by `encode` with the same model (refused otherwise),
    decoded with the batch size and thread count the file records."""
    import constriction
    header, words = unpack(data)
    if check_model:
        check_model_matches(model, header)
    count, batch_size, k = header["count"], header["batch_size"], header["classes"]
    decoder = constriction.stream.queue.RangeDecoder(words.astype(np.uint32))
    family = constriction.stream.model.Categorical(perfect=False)
    try:
        with coding_state(model, header["threads"]):
            labels = torch.from_numpy(decoder.decode(uniform_labels_model(k), count).astype(np.int64)) if k else None

            def code(start, probabilities, row, col):
                return decoder.decode(family, probabilities).astype(np.int64)

            levels = pixel_loop(model, count, labels, batch_size, code)
    except (ValueError, RuntimeError, AssertionError) as exc:  # the coder refusing a stream it cannot decode
        raise CompressedFileError(f"the coded words do not decode: {exc}") from None
    images = levels.numpy().astype(np.uint8)
    if images_checksum(images) != header["checksum"]:
        raise CompressedFileError(
            "the decoded images do not match the encoder's checksum: decoding needs the same torch build, genlab "
            f"code, CPU kind, batch size and thread count as encoding (encoded with torch {header['torch']} on "
            f"{header['device']}, here torch {torch.__version__} on {model.device.type})")
    return images, header["names"]


def check_model_matches(model, header: dict) -> None:
    if header["fingerprint"] != model_fingerprint(model):
        raise CompressedFileError(
            f"the file was encoded with another model ({header['model']!r}, fingerprint "
            f"{header['fingerprint'].hex()}), not this one (fingerprint {model_fingerprint(model).hex()}): decode it "
            f"with the same weights")
    if header["side"] != model.config.image_size or header["classes"] != classes(model):
        raise CompressedFileError("the file's image side or class count differs from the model's")
    if header["device"] != model.device.type:
        raise CompressedFileError(f"the file was encoded on {header['device']}, the model is on "
                                  f"{model.device.type}: decode on the same device type")
    if header["torch"] != torch.__version__:
        warnings.warn(f"the file was encoded with torch {header['torch']}, this is {torch.__version__}: if its float "
                      f"results differ, decoding fails its checksum", stacklevel=3)


# ------------------------------------------------------------------------------------------------- CLI
def read_pngs(folder: Path, side: int) -> tuple[np.ndarray, list[str]]:
    """The *.png files of `folder` (sorted by name) as (N, side, side) uint8; 8-bit greyscale (mode L) only."""
    from PIL import Image
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"{folder}: no .png files")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                mode, size = image.mode, image.size
                array = np.asarray(image)
        except OSError as exc:
            raise ValueError(f"{path}: not a readable PNG ({exc})") from None
        if mode != "L":
            raise ValueError(f"{path}: mode {mode}, not 8-bit greyscale (mode L); converting it would not be "
                             f"lossless, so convert it yourself first (e.g. Pillow's .convert('L'))")
        if size != (side, side):
            raise ValueError(f"{path}: {size[0]}x{size[1]}, the model codes {side}x{side} grey images")
        images.append(array)
    return np.stack(images).astype(np.uint8), [p.name for p in files]


def write_pngs(folder: Path, images: np.ndarray, names: list[str], force: bool) -> list[Path]:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / check_name(name) for name in names]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ValueError(f"refusing to overwrite {len(existing)} existing file(s) ({', '.join(existing[:3])}"
                         f"{', …' if len(existing) > 3 else ''}); pass --force")
    for path, image in zip(paths, images):
        Image.fromarray(image, mode="L").save(path, format="PNG")
    return paths


def trusted_model_name(name: str) -> str:
    """The model a file names, if it is a manifest name or a local folder: a file alone never makes the decoder
    download a model from the Hub (pass --model for that)."""
    from core.hub import read_manifest
    if name in read_manifest() or Path(name).is_dir():
        return name
    raise ValueError(f"the file names the model {name!r}, neither a manifest name nor a local folder: pass --model "
                     f"to decode with it")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m core.compress",
        description="Lossless compression of 28x28 8-bit greyscale PNGs with a PixelCNN's exact likelihood and a "
                    "range coder (see core/compress.py's docstring for the maths and the file format).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("encode", help="compress the *.png files of a folder into one file")
    p.add_argument("in_dir", help="folder of 28x28 8-bit greyscale PNGs (other files are ignored)")
    p.add_argument("out_file", help="the compressed file to write")
    p.add_argument("--model", default="pixelcnn", help="manifest name, folder or repo id of a PixelCNN "
                                                       "(default pixelcnn); recorded in the file")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per pixel loop (default {DEFAULT_BATCH_SIZE}); recorded, the decoder uses it")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch threads while coding (default {DEFAULT_THREADS}); recorded, the decoder uses it")
    p.add_argument("--force", action="store_true", help="overwrite OUT_FILE if it exists")
    p = sub.add_parser("decode", help="decompress a file into PNGs under their original names")
    p.add_argument("in_file", help="a file written by encode")
    p.add_argument("out_dir", help="folder to write the PNGs to (created if missing)")
    p.add_argument("--model", help="the model to decode with (default: the one the file names); it must be the "
                                   "same weights")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    from core.checkpoint import CheckpointError
    from core.hub import load_model
    try:
        if args.command == "encode":
            out = Path(args.out_file)
            if out.exists() and not args.force:
                raise ValueError(f"refusing to overwrite {out}; pass --force")
            model = load_model(args.model)
            images, names = read_pngs(Path(args.in_dir), model.config.image_size)
            start = time.perf_counter()
            data = encode(model, args.model, images, names, args.batch_size, args.threads)
            seconds = time.perf_counter() - start
            out.write_bytes(data)
            ideal = float(code_length_bits(model, images, args.batch_size, args.threads).sum()) / 8
            print(f"{len(names)} images -> {out}: {len(data)} bytes, {len(data) / len(names):.1f} bytes/image "
                  f"({8 * len(data) / images.size:.3f} bits/dim; ideal {ideal / len(names):.1f} bytes/image), "
                  f"{seconds:.1f} s")
        else:
            data = Path(args.in_file).read_bytes()
            header = read_header(data)
            model = load_model(args.model or trusted_model_name(header["model"]))
            images, names = decode(model, data)
            paths = write_pngs(Path(args.out_dir), images, names, args.force)
            print(f"{len(paths)} images -> {args.out_dir}")
    except (ValueError, CheckpointError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
