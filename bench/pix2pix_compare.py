"""Pix2Pix models on the 10k Fashion-MNIST test pairs: what the adversarial term adds over an L1-only U-Net.

    python bench/pix2pix_compare.py checkpoints/pix2pix-edges RUN_L1/model [--out FOLDER] [--threads 2]

For each model folder: L1, PSNR and SSIM of the outputs against the targets; the metric classifier's accuracy on the
outputs with the source images' labels, and that as a share of its accuracy on the real test images (the issue's
target: at least 90%); FID, precision, recall and off-manifold share of the outputs against the test set (core.metrics,
the classifier's features at every depth); training steps and minutes from the folder's training.json. Each model is
measured with the dropout noise on (seed 0, as the paper samples) and off. Writes to --out: compare.png (rows: the inputs of two test images per class, each
model's outputs, the targets) and worst-<folder>.png (each model's 16 least realistic outputs, above their targets).
"""
import argparse
import json
from pathlib import Path

import torch

from core.data import load_dataset
from core.evaluate import metric_yardstick
from core.hub import load_model
from core.images import save_grid
from core.metrics import paired_figures

COLUMNS = ("model", "objective", "dropout at sampling", "training steps", "minutes", "L1", "PSNR (dB)", "SSIM", "classifier accuracy",
           "share of real accuracy", "FID", "precision", "recall", "off-manifold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--out", default=".")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist", "test")
    yardstick = metric_yardstick()
    _, real_logits = yardstick.features(data.batch(slice(None)).images)
    real_accuracy = float((real_logits.argmax(1) == data.labels).double().mean())
    shown = torch.cat([(data.labels == k).nonzero().flatten()[:2] for k in range(10)])     # two of each class
    rows, pictures = [], []
    for folder, dropout in ((Path(m), d) for m in args.models for d in (True, False)):
        model = load_model(folder)
        inputs, targets, labels = model.test_inputs(data)
        outputs = model.translate(inputs, seed=0, dropout=dropout)
        scores = {**paired_figures(outputs, targets), **yardstick.score(outputs, labels, data=data)}
        training = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
        objective = "L1 only" if model.config.adversarial_weight == 0 else f"cGAN + {model.config.l1_weight:g} L1"
        rows.append([folder.parent.name if folder.name == "model" else folder.name, objective,
                     "on (the paper)" if dropout else "off",
                     training.get("steps", "-"), f"{training['seconds'] / 60:.0f}" if "seconds" in training else "-",
                     f"{scores['l1']:.4f}", f"{scores['psnr']:.2f}", f"{scores['ssim']:.3f}",
                     f"{scores['conditional_accuracy']:.1%}", f"{scores['conditional_accuracy'] / real_accuracy:.1%}",
                     f"{scores['fid']:.2f}", f"{scores['precision']:.3f}", f"{scores['recall']:.3f}",
                     f"{scores['off_manifold']:.2%}"])
        print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
        if not dropout:
            continue
        if not pictures:
            pictures.append(inputs[shown])
        pictures.append(outputs[shown])
        worst = yardstick.realism(outputs, data).argsort()[:16]
        save_grid(torch.cat([outputs[worst], targets[worst]]), out / f"worst-{rows[-1][0]}.png", nrow=16, scale=2)
    pictures.append(data.batch(shown).images)
    save_grid(torch.cat(pictures), out / "compare.png", nrow=len(shown), scale=2)
    print(f"\nThe classifier's accuracy on the real test images: {real_accuracy:.1%}\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|---" * len(COLUMNS) + "|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
