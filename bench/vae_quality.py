"""Test-set likelihood bounds, sample quality and figures of a VAE-family checkpoint, for its model card.

    python bench/vae_quality.py checkpoints/vae [--limit 0] [--write]

VAE: −ELBO and the importance-weighted bound −L_100 (Burda et al. 2015) in nats per image over the Fashion-MNIST
test set; plain autoencoder: the reconstruction MSE. Both: FID/KID, precision/recall and class coverage of 10k decoded
prior samples z ~ p(z) on the features of checkpoints/classifier, and reconstructions.png (test images above their
reconstructions). A 2-D latent model also gets latent_grid.png (decoded N(0, 1)-quantile grid) and latent_scatter.png
(test-set means μ(x) coloured by class). --write stores figures and numbers in eval.json and rewrites the card.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from core.config import save_json
from core.data import load_dataset
from core.evaluate import metric_yardstick
from core.hub import load_model, write_model_card
from core.images import save_grid, scatter_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--limit", type=int, default=0, help="use the first N test images (0: all 10k)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    folder = Path(args.checkpoint)
    model = load_model(folder)
    test = load_dataset("fashion-mnist", "test")
    if args.limit:
        test = test.select(torch.arange(args.limit))
    torch.manual_seed(0)
    start = time.perf_counter()
    bounds = model.likelihood_bounds(test)
    print({k: round(v, 3) for k, v in bounds.items()}, f"{time.perf_counter() - start:.0f} s", flush=True)
    yardstick = metric_yardstick()
    samples = model.sample(len(test))
    quality = yardstick.score(samples, data=test)
    print({k: round(v, 4) for k, v in quality.items()})
    shares = torch.bincount(yardstick.features(samples)[1].argmax(1), minlength=len(test.classes))
    shares = (shares / len(samples)).tolist()
    shares_table = "\n".join(["| " + " | ".join(test.classes) + " |", "|---" * len(shares) + "|",
                              "| " + " | ".join(f"{100 * s:.1f}%" for s in shares) + " |"])
    print(shares_table)
    result = {**bounds, **quality, "samples": len(test)}
    if not args.write:
        return
    pick = torch.arange(0, 10 * 16, 10)                                      # 16 test images, mixed classes
    originals = test.batch(pick).images
    save_grid(torch.cat([originals, model.reconstruct(originals)]), folder / "reconstructions.png", nrow=16, scale=2)
    figures = {"reconstructions.png": "Test images (top) and their reconstructions decode(μ(x)) (bottom)"}
    if model.config.latent_dim == 2:
        save_grid(model.latent_grid(15), folder / "latent_grid.png", nrow=15)
        scatter_plot(model.encode_means(test), test.labels, test.classes).save(folder / "latent_scatter.png")
        figures["latent_grid.png"] = ("The latent plane: decoded z on a 15x15 grid of N(0, 1) quantiles 0.05..0.95 "
                                      "(z₁ left to right, z₂ bottom to top)")
        figures["latent_scatter.png"] = "Test-set encodings μ(x), coloured by class"
    previous = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
    title = f"Share of the {len(samples)} samples per class, as the classifier sees them (covered: at least 2.5%)"
    save_json({**result, "tables": {**previous.get("tables", {}), title: shares_table}, "figures": figures},
              folder / "eval.json")
    write_model_card(folder)


if __name__ == "__main__":
    main()
