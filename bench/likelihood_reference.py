"""The test images' scores of each shipped likelihood model, kept in its folder for the Likelihood tab's verdicts.

For the first --images Fashion-MNIST test images, each model's bits/dim (core.services.likelihood.image_bits: the
flow with one seeded draw of dequantization noise per image, the class-conditional PixelCNN's exact p(x) =
Σ_y p(x | y)/10) and S = bits/dim − PNG bits/dim (core.likelihood.png_bits_per_dim) are stored as their 101
percentiles in checkpoints/MODEL/likelihood.json, with the command that made them. Run it again whenever a weight
file changes; tests/test_checkpoints.py re-scores a few images against the stored percentiles.

    python bench/likelihood_reference.py --models glow,vae-logistic,pixelcnn --images 1000 --threads 1
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import load_dataset  # noqa: E402
from core.hub import load_model, read_manifest  # noqa: E402
from core.likelihood import BitsPerDim, pixel_levels, percentiles, png_bits_per_dim  # noqa: E402
from core.services.likelihood import FAMILIES, REFERENCE, image_bits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIRST = 10                     # the first images' own figures are kept too: a check that file and weights agree


def scores(model, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """Bits/dim of each image, batch by batch, each batch's noise seeded by its first index."""
    return torch.cat([image_bits(model, images[start:start + batch_size], seed=start)
                      for start in range(0, len(images), batch_size)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="glow,vae-logistic,pixelcnn", help="comma-separated manifest names")
    parser.add_argument("--images", type=int, default=1000, help="the first N test images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest, command = read_manifest(), "python bench/likelihood_reference.py " + " ".join(sys.argv[1:])
    images = load_dataset("fashion-mnist", "test").batch(slice(0, args.images)).images
    png = png_bits_per_dim(pixel_levels(images))
    for name in args.models.split(","):
        family = manifest[name]["family"]
        if family not in FAMILIES:
            raise SystemExit(f"{name} is a {family} model; likelihood models: {', '.join(FAMILIES)}")
        start, model = time.perf_counter(), load_model(ROOT / "checkpoints" / name).eval()
        bits = scores(model, images)
        seconds = time.perf_counter() - start
        record = {"images": len(images), "split": "fashion-mnist test, the first N", "kind": model.likelihood_kind,
                  "bits_per_dim": percentiles(bits), "complexity": percentiles(bits - png),
                  "mean_bits_per_dim": float(bits.mean()), "mean_png_bits_per_dim": float(png.mean()),
                  "first_images": bits[:FIRST].tolist(),
                  "command": command}
        (ROOT / "checkpoints" / name / REFERENCE).write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {BitsPerDim.of(bits, model.likelihood_kind)}; S median {record['complexity'][50]:.3f}, "
              f"95th percentile {record['complexity'][95]:.3f}; {seconds:.0f} s")


if __name__ == "__main__":
    main()
