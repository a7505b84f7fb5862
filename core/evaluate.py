"""Evaluate a checkpoint: `python -m core.evaluate CHECKPOINT [options]`.

For a classifier: test accuracy and the accuracy-vs-ε table under FGSM and PGD; with --reference, the metrics'
reference statistics of the test set (stored beside the classifier) and the real-vs-real FID floor (10k training
images against the test set). For a generator: FID/KID, precision/recall and class coverage (conditional accuracy
for a conditional model) of as many samples as test images (10k by default), on the classifier's features. With
--nll, only the test images' bits/dim under the model's own likelihood (core.likelihood's protocol: exact for a
PixelCNN, an upper bound for a flow or a VAE with a logistic decoder) with its standard error over images. --write
saves the figures to the checkpoint's eval.json and rewrites its model card.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from core import metrics
from core.attacks import ATTACKS, EPSILONS, robustness_curve
from core.config import PRECISIONS, THREADS_HELP, bounded, save_json
from core.data import DATASETS, load_dataset
from core.hub import CheckpointError, load_model, metric_yardstick, resolve, write_model_card
from core.images import save_grid
from core.likelihood import BitsPerDim


def markdown_table(curves: dict[str, dict[float, float]]) -> str:
    """| eps | fgsm | pgd | rows of accuracies in percent."""
    names = list(curves)
    rows = ["| ε | " + " | ".join(f"{n.upper()} accuracy" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for eps in next(iter(curves.values())):
        rows.append(f"| {eps:g} | " + " | ".join(f"{100 * curves[n][eps]:.2f}%" for n in names) + " |")
    return "\n".join(rows)


def evaluate_classifier(model, data, epsilons, attacks, pgd_steps: int) -> dict:
    curves = {attack: robustness_curve(model, data, list(epsilons), attack, pgd_steps=pgd_steps) for attack in attacks}
    title = (f"Test accuracy vs attack budget ε ({', '.join(attacks).upper()}"
             f"{f' with {pgd_steps} steps' if 'pgd' in attacks else ''}, {len(data)} test images)")
    result = {"tables": {title: markdown_table(curves)}}
    if len(data) == 10_000:          # scalar figures (model-index on the Hub) only for the whole test set
        result.update({f"{a}_accuracy_eps{e:g}" if e > 0 else "accuracy": acc
                       for a, curve in curves.items() for e, acc in curve.items()})
    return result


def test_bits_per_dim(model, data, batch_size: int = 100) -> dict:
    """Each test image's bits/dim by the model's own `bits_per_dim` (a flow's dequantization noise and a VAE's
    latents from one seeded generator), summarised with its standard error; prints "N.NNN bits/dim ..."."""
    kind, generator = getattr(model, "likelihood_kind", None), torch.Generator().manual_seed(0)
    try:
        if kind is None:
            raise ValueError("it has no likelihood of 8-bit images here")
        with torch.no_grad():
            bits = torch.cat([model.bits_per_dim(data.batch(slice(i, i + batch_size)).images, generator=generator)
                              for i in range(0, len(data), batch_size)])
    except ValueError as exc:
        sys.exit(f"error: --nll needs a flow, a PixelCNN or a VAE with a logistic decoder ({type(model).__name__}: "
                 f"{exc}); the DDPM's variational bound is bench/likelihood_table.py's")
    result = BitsPerDim.of(bits, kind)
    print(f"{result.mean:.3f} bits/dim ± {result.standard_error:.3f} ({kind}, {result.images} test images)")
    return {"bits_per_dim": result.mean, "bits_per_dim_stderr": result.standard_error, "bits_per_dim_kind": kind}


def reference_and_floor(model, folder: Path, dataset: str, data_dir: str | None) -> dict:
    """Store the test set's feature scales and thresholds beside the classifier; the real floor: every figure of
    10k training images against the test set (copies left out: these images are the training set)."""
    test, train = load_dataset(dataset, "test", data_dir), load_dataset(dataset, "train", data_dir)
    reference = metrics.compute_reference(model, test.batch(slice(None)).images, train.batch(slice(None)).images)
    metrics.save_reference(reference, folder)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:10_000]
    floor = metrics.sample_quality(model, reference, train.batch(pick).images)
    return {f"real_train10k_vs_test_{k}": v for k, v in floor.items()}


def extremes(yardstick: metrics.Yardstick, images: torch.Tensor, data, k: int, folder: Path) -> list[Path]:
    """Grids of the k least realistic samples (worst.png, least first) and the k most realistic (best.png)."""
    order = yardstick.realism(images, data).argsort()
    folder.mkdir(parents=True, exist_ok=True)
    return [save_grid(images[order[:k]], folder / "worst.png", scale=2),
            save_grid(images[order.flip(0)[:k]], folder / "best.png", scale=2)]


def arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[float], list[str]]:
    """The command line, checked: (options, attack budgets, attacks)."""
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder or Hub repo id")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="the test set (default: the one the checkpoint was trained on, from its training.json)")
    parser.add_argument("--data-dir", help="folder with the IDX files")
    parser.add_argument("--limit", type=bounded(int, 0), default=0, help="evaluate on the first N test images (0: all)")
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS),
                        help="comma-separated attack budgets, fractions of the pixel range")
    parser.add_argument("--attacks", default="fgsm,pgd", help=f"comma-separated, from {ATTACKS}")
    parser.add_argument("--pgd-steps", type=bounded(int, 1), default=10)
    parser.add_argument("--reference", action="store_true",
                        help="also compute the metrics' reference statistics and the real-vs-real FID floor")
    parser.add_argument("--nll", action="store_true",
                        help="only the test images' bits/dim under the model's own likelihood (exact or a bound)")
    parser.add_argument("--write", action="store_true", help="save to the checkpoint's eval.json and model card")
    parser.add_argument("--worst", type=bounded(int, 0), default=0, metavar="K",
                        help="generators: write worst.png and best.png, the K least and most realistic samples")
    parser.add_argument("--out", default=".", help="folder for worst.png and best.png (default: here)")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default="no",
                        help="generators: sample with the networks in this precision (the sampler app's diffusion "
                             "runs in bf16 where the CPU has bf16 instructions)")
    parser.add_argument("--threads", type=bounded(int, 0), default=0, help=THREADS_HELP)
    args = parser.parse_args(argv)
    try:
        epsilons = [float(e) for e in args.epsilons.split(",")]
    except ValueError:
        parser.error(f"--epsilons must be numbers, got {args.epsilons!r}")
    if any(not 0 <= e <= 1 for e in epsilons):
        parser.error("--epsilons are fractions of the pixel range, each in [0, 1]")
    attacks = args.attacks.split(",")
    if any(a not in ATTACKS for a in attacks):
        parser.error(f"--attacks must come from {ATTACKS}")
    if (args.reference or args.write) and not Path(args.checkpoint).is_dir():
        parser.error("--reference and --write need a local checkpoint folder")
    return args, epsilons, attacks


def trained_on(checkpoint: str) -> str | None:
    """The dataset a checkpoint was trained on (its training.json), or None where it does not say."""
    try:
        dataset = json.loads((resolve(checkpoint) / "training.json").read_text()).get("dataset")
    except (CheckpointError, OSError, ValueError, AttributeError):
        return None
    return dataset if dataset in DATASETS else None


def main(argv: list[str] | None = None) -> dict:
    args, epsilons, attacks = arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    trained = trained_on(args.checkpoint)
    if args.dataset and trained and args.dataset != trained:
        sys.exit(f"error: {args.checkpoint} was trained on {trained}, so --dataset {args.dataset} would measure it "
                 f"on images it does not model: leave --dataset out (or pass {trained})")
    args.dataset = args.dataset or trained or "fashion-mnist"
    try:
        model = load_model(args.checkpoint)
    except (CheckpointError, OSError) as exc:
        sys.exit(f"error: {exc}")
    data = load_dataset(args.dataset, "test", args.data_dir)
    if args.limit:
        data = data.select(torch.arange(min(args.limit, len(data))))
    folder = Path(args.checkpoint)
    if args.nll:
        result = test_bits_per_dim(model, data)
    elif model.pipeline_tag == "image-classification":
        result = evaluate_classifier(model, data, epsilons, attacks, args.pgd_steps)
        if args.reference:
            result.update(reference_and_floor(model, folder, args.dataset, args.data_dir))
    else:      # a generator: as many samples as test images, scored on the metric classifier's features
        model.set_precision(args.mixed_precision)
        samples, yardstick = model.evaluation_samples(len(data)), metric_yardstick()
        result = {**model.evaluate(data, yardstick, samples), "samples": len(data)}
        if args.worst and samples is not None:       # (a translation model has no samples of its own)
            print(*extremes(yardstick, samples[0], data, min(args.worst, len(data)), Path(args.out)), sep="\n")
    for title, table in result.get("tables", {}).items():
        print(f"{title}, {args.dataset}\n{table}\n")
    scalars = {k: v for k, v in result.items() if k != "tables"}
    if scalars:
        print(json.dumps(scalars, indent=2))
    if args.write:
        previous = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
        save_json({**previous, **result, "tables": {**previous.get("tables", {}), **result.get("tables", {})}},
                  folder / "eval.json")
        write_model_card(folder)
    return result


if __name__ == "__main__":
    main()
