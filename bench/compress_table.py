"""Lossless compression of the Fashion-MNIST test images (issue 44): the PixelCNN's range coder (core/compress.py)
against generic lossless codecs, in bytes per image:

    python bench/compress_table.py --threads 1 --limit 500          # the shipped pixelcnn, the first 500 test images

Rows:
- the model's coded file: all --limit images in one file (one stream: header and the stream's termination amortised
  over the images), its size / N; encode and decode seconds per image at --threads and --batch-size; the decoded
  images are checked equal to the originals;
- its ideal code length: log₂ K + min_y −log₂ p(x | y) for a class-conditional model (the two-part code the coder
  implements), −log₂ p(x) for an unconditional one; "× ideal" is the coded size over it;
- the model's −log₂ p(x) = −log₂ Σ_y p(x | y)/K (the bits/dim of docs/likelihood.md's protocol, × 784 / 8) and,
  for reference only, −log₂ p(x | true y) (not a code: the decoder does not know the label);
- PNG (Pillow, optimize=True), PNG (zlib level 9), WebP lossless and JPEG XL lossless (imagecodecs, strongest
  settings; bench/likelihood_table.py's codec_bits): each image encoded alone as its own file, container included,
  checked by decoding; their seconds are encode and decode together.
Seconds are CPU seconds of this process (time.process_time), which on one thread is the wall time of an idle machine
and stays meaningful on a shared one.
"""
import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core import compress  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.hub import load_model  # noqa: E402
from likelihood_table import codec_bits  # noqa: E402


def pillow_png_bytes(images: np.ndarray) -> np.ndarray:
    """File bytes of each image saved alone as a PNG by Pillow with optimize=True (checked by reading it back)."""
    from PIL import Image
    sizes = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG", optimize=True)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            if not np.array_equal(np.asarray(decoded), image):
                raise RuntimeError("Pillow's PNG did not round-trip an image")
        sizes.append(buffer.getbuffer().nbytes)
    return np.array(sizes, dtype=np.float64)


def row(name: str, bytes_per_image: float, ideal: float, encode_s: float | None, decode_s: float | None,
        note: str = "") -> str:
    bits = 8 * bytes_per_image / 784
    fmt = lambda s: "—" if s is None else f"{s:.4f}"
    return (f"| {name} | {bytes_per_image:.1f} | {bits:.3f} | {bytes_per_image / ideal:.3f} | {fmt(encode_s)} | "
            f"{fmt(decode_s)} | {note} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pixelcnn", help="manifest name, folder or repo id (default pixelcnn)")
    parser.add_argument("--limit", type=int, default=10000, help="first N test images (default all 10k)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while coding (default 1)")
    parser.add_argument("--batch-size", type=int, default=compress.DEFAULT_BATCH_SIZE,
                        help=f"images per pixel loop (default {compress.DEFAULT_BATCH_SIZE})")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", "test")
    images = data.images[:args.limit, 0].numpy()
    n, names = len(images), [f"{i:05d}.png" for i in range(len(images))]
    model = load_model(args.model).eval()

    start = time.process_time()
    coded = compress.encode(model, args.model, images, names, args.batch_size, args.threads)
    encode_s = (time.process_time() - start) / n
    start = time.process_time()
    decoded, decoded_names = compress.decode(model, coded)
    decode_s = (time.process_time() - start) / n
    if not np.array_equal(decoded, images) or decoded_names != names:
        raise RuntimeError("the model's code did not round-trip the images")
    header_bytes = len(coded) - 4 * len(compress.unpack(coded)[1])

    start = time.process_time()
    ideal_bits = compress.code_length_bits(model, images, args.batch_size, args.threads)          # (N,)
    label_s = (time.process_time() - start) / n          # the same K full passes as the encoder's choice of y*
    ideal = float(ideal_bits.mean()) / 8
    nats = compress.class_nats(model, torch.from_numpy(images).long(), args.batch_size)          # (N, K)
    k = nats.shape[1]
    mixture_bits = -(torch.logsumexp(-nats, 1) - math.log(k)) / math.log(2)                      # −log₂ p(x)
    lines = ["| coder | bytes/image | bits/dim | × ideal | encode s/image | decode s/image | note |",
             "|---|---|---|---|---|---|---|",
             row(f"{args.model} (range coder)", len(coded) / n, ideal, encode_s, decode_s,
                 f"one file of {n} images, {len(coded)} bytes, of them {header_bytes} header (names included); "
                 f"decoded = originals" + (f"; of the encode time, {label_s:.4f} s/image choose y* (K full "
                                            f"passes)" if model.config.num_classes else "")),
             row(f"{args.model} (range coder, coded words only)", (len(coded) - header_bytes) / n, ideal, None,
                 None, "the file less its header: the stream's own overhead over the ideal"),
             row(f"{args.model} ideal", ideal, ideal, None, None,
                 "log₂ K + min_y −log₂ p(x|y), the two-part code" if model.config.num_classes
                 else "−log₂ p(x)")]
    if model.config.num_classes:
        true_bits = nats.gather(1, data.labels[:n, None].long()).squeeze(1) / math.log(2)
        lines += [row(f"{args.model} −log₂ p(x)", float(mixture_bits.mean()) / 8, ideal, None, None,
                      "Σ_y p(x|y)/K: the bits/dim table's figure (bits-back coding would reach it)"),
                  row(f"{args.model} −log₂ p(x|y) at the true label", float(true_bits.mean()) / 8, ideal, None, None,
                      "not a code: the decoder does not know the label")]
    start = time.process_time()
    png = pillow_png_bytes(images)
    lines.append(row("PNG (Pillow, optimize=True)", float(png.mean()), ideal, (time.process_time() - start) / n,
                     None, "each image its own file; seconds: encode and decode together"))
    tensor = torch.from_numpy(images)[:, None]
    for codec, label in (("png", "PNG (zlib level 9)"), ("webp", "WebP lossless"), ("jpegxl", "JPEG XL lossless")):
        start = time.process_time()
        bits = codec_bits(tensor, codec)
        seconds = (time.process_time() - start) / n
        lines.append(row(label, float(bits.mean()) * 784 / 8, ideal, seconds, None,
                         "each image its own file; seconds: encode and decode together"))
    print(f"python bench/compress_table.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip())
    print(f"{n} Fashion-MNIST test images; torch threads {args.threads}, batch size {args.batch_size}, "
          f"{torch.__version__}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
