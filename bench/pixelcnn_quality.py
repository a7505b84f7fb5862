"""Test bits/dim (conditional and not), the sampling time and completions of a PixelCNN checkpoint, for its model
card (the judge-style figures of its samples come from `python -m core.evaluate`).

    python bench/pixelcnn_quality.py checkpoints/pixelcnn --from-run ~/genlab-runs/pixelcnn/h64-l8 --write
    python -m core.evaluate checkpoints/pixelcnn --write --worst 64 --out checkpoints/pixelcnn

--from-run first writes the run's newest checkpoint into the folder as a Hub folder (bench/run_export.py).
Bits/dim are exact: −log₂ p(x | y)/784 with each test image's label on all 10k test images, and the unconditional
−log₂ Σ_y p(x | y)/10 /784 (ten passes per image) on the first --unconditional test images; each with the standard
error of the mean over images. --write stores the figures in eval.json, writes the completion and sample grids and
rewrites the card; without it the figures are printed only.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_export import export, sampling_seconds  # noqa: E402
from core.config import save_json  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.hub import load_model, write_model_card  # noqa: E402
from core.images import save_grid  # noqa: E402

KNOWN_ROWS, PER_IMAGE = 14, 7           # the top half given; seven completions beside each original


def bits_per_dim(model, test, conditional: bool) -> tuple[float, float]:
    """Mean test bits/dim and its standard error over images."""
    values = []
    with torch.no_grad():
        for batch in test.batches(250, seed=0, epoch=0, drop_last=False):
            labels = batch.labels if conditional and model.config.num_classes else None
            values.append(model.bits_per_dim(batch.images, labels))
    values = torch.cat(values).double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def completions(model, test, path: Path) -> str:
    """The first test image of each class with its top half kept: the original, then PER_IMAGE completions."""
    first = torch.tensor([int(torch.nonzero(test.labels == c)[0]) for c in range(10)])
    batch = test.batch(first)
    done = model.complete(batch.images, KNOWN_ROWS, PER_IMAGE, seed=0,
                          labels=batch.labels if model.config.num_classes else None)
    rows = torch.cat([batch.images[:, None], done.view(10, PER_IMAGE, *done.shape[1:])], 1)
    save_grid(rows.flatten(0, 1), path, nrow=PER_IMAGE + 1, scale=2)
    return (f"Completions: the first test image of each class (left), then {PER_IMAGE} completions of its bottom "
            f"half given its top {KNOWN_ROWS} rows and its class")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--from-run", type=Path, help="first export this run's newest checkpoint into the folder")
    parser.add_argument("--unconditional", type=int, default=1000, help="test images for the unconditional figure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_run:
        export(args.from_run, args.checkpoint)
    model, test = load_model(args.checkpoint).eval(), load_dataset("fashion-mnist", "test")
    figures = {}
    figures["bits_per_dim"], figures["bits_per_dim_stderr"] = bits_per_dim(model, test, conditional=True)
    print(f"test bits/dim {figures['bits_per_dim']:.4f} ± {figures['bits_per_dim_stderr']:.4f} "
          f"({'p(x|y), ' if model.config.num_classes else ''}{len(test)} images)", flush=True)
    if model.config.num_classes:
        subset = test.select(torch.arange(min(args.unconditional, len(test))))
        mean, error = bits_per_dim(model, subset, conditional=False)
        figures[f"unconditional_bits_per_dim_first{args.unconditional}"] = mean
        figures[f"unconditional_bits_per_dim_first{args.unconditional}_stderr"] = error
        conditional, _ = bits_per_dim(model, subset, conditional=True)
        print(f"unconditional p(x) = Σ_y p(x|y)/10: {mean:.4f} ± {error:.4f} on the first {len(subset)} test images "
              f"(p(x|y) on the same images: {conditional:.4f})", flush=True)
    figures["sampling_seconds_64"] = sampling_seconds(model)
    print(f"64 samples in {figures['sampling_seconds_64']:.2f} s ({args.threads} thread)", flush=True)
    if not args.write:
        return
    folder = args.checkpoint
    save_grid(model.eval_images(test), folder / "samples.png", nrow=8, scale=2)
    pictures = {"completions.png": completions(model, test, folder / "completions.png"),
                "worst.png": "The 64 least realistic of the 10k evaluation samples (realism, core.metrics; least "
                             "first): what the off-manifold share counts"}
    path = folder / "eval.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    save_json({**previous, **figures, "figures": {**previous.get("figures", {}), **pictures}}, path)
    write_model_card(folder)


if __name__ == "__main__":
    main()
