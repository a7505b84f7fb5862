"""How good is a representation with few labels: linear probe and k-NN accuracy on the Fashion-MNIST test set with
1%, 10% and 100% of the training labels, for a SimCLR encoder against raw pixels, the same encoder with random
weights, and the supervised classifier's penultimate features (the ceiling).

    python bench/simclr_probe.py RUN/model [--fractions 0.01,0.1,1] [--threads 2]
    python bench/simclr_probe.py RUN/model --write checkpoints/simclr     # ship: gallery, figures, table, card

Label subsets are class-balanced and seeded (seed 0). The probe is multinomial logistic regression on standardised
features (full-batch L-BFGS, weight decay 1e-4); k-NN votes among the 20 nearest labelled training images by cosine.

--write FOLDER makes the shipped folder: the model with a gallery of GALLERY_PER_CLASS test images of each class (the
sampler searches it), its training.json, the table in eval.json, two figures (nearest.png: test images from outside
the gallery, one per class, each followed by its 8 nearest gallery images; plane.png: the gallery's representations
on their two principal axes) and the model card.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from core.data import load_dataset
from core.cards import write_model_card
from core.data import FASHION_CLASSES
from core.evaluate import metric_yardstick
from core.hub import load_model
from core.images import save_grid, scatter_plot
from core.models.simclr import SimCLR, knn_accuracy, principal_plane

GALLERY_PER_CLASS = 200


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for k in labels.unique():
        members = (labels == k).nonzero().flatten()
        count = max(1, round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(picked)


def linear_probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 weight_decay: float = 1e-4, iterations: int = 200) -> float:
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    classes = int(train_labels.max()) + 1
    layer = torch.nn.Linear(train.shape[1], classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(train), train_labels) + weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    with torch.no_grad():
        return float((layer(test).argmax(1) == test_labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--fractions", default="0.01,0.1,1")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write", metavar="FOLDER", help="write the shipped model folder (see above)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = (load_dataset("fashion-mnist", split).batch(slice(None)) for split in ("train", "test"))
    simclr = load_model(args.checkpoint)
    torch.manual_seed(0)
    random = SimCLR(simclr.config)
    classifier = metric_yardstick()
    features = {
        "raw pixels": lambda x: x.flatten(1),
        "random encoder": random.representations,
        "SimCLR encoder": simclr.representations,
        "supervised classifier (ceiling)": lambda x: torch.cat([classifier.features(x[i:i + 2000])[0]
                                                                for i in range(0, len(x), 2000)]),
    }
    fractions = [float(f) for f in args.fractions.split(",")]
    print("| features | " + " | ".join(f"linear probe, {f:.0%} labels | k-NN, {f:.0%} labels" for f in fractions)
          + " | seconds |")
    print("|---" * (2 * len(fractions) + 2) + "|")
    rows = []
    for name, extract in features.items():
        start = time.perf_counter()
        with torch.no_grad():
            train_features, test_features = extract(train.images), extract(test.images)
        cells = []
        for fraction in fractions:
            subset = balanced_subset(train.labels, fraction)
            probe = linear_probe(train_features[subset], train.labels[subset], test_features, test.labels)
            knn = knn_accuracy(test_features, test.labels, bank=train_features[subset],
                               bank_labels=train.labels[subset])
            cells += [f"{100 * probe:.1f}%", f"{100 * knn:.1f}%"]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} |")
        print(rows[-1], flush=True)
    if args.write:
        header = ("| features | " + " | ".join(f"linear probe, {f:.0%} labels | k-NN, {f:.0%} labels" for f in fractions)
                  + " | seconds |\n" + "|---" * (2 * len(fractions) + 2) + "|")
        write_folder(simclr, Path(args.checkpoint), Path(args.write), header + "\n" + "\n".join(rows), fractions)


def write_folder(simclr: SimCLR, run_model: Path, folder: Path, table: str, fractions: list[float]) -> None:
    test = load_dataset("fashion-mnist", "test")
    shipped = simclr.with_gallery(test, GALLERY_PER_CLASS)
    folder.mkdir(parents=True, exist_ok=True)
    shipped.save_pretrained(folder)
    shutil.copy(run_model / "training.json", folder / "training.json")
    outside = torch.cat([(test.labels == k).nonzero().flatten()[GALLERY_PER_CLASS:GALLERY_PER_CLASS + 1]
                         for k in range(10)])
    queries = test.batch(outside).images
    index, _ = shipped.nearest(queries, 8)
    gallery = shipped.gallery_images.float() / 127.5 - 1
    rows = torch.cat([torch.cat([queries[i:i + 1], gallery[index[i]]]) for i in range(10)])
    save_grid(rows, folder / "nearest.png", nrow=9, scale=2)
    bank = shipped.gallery_features()
    mean, basis = principal_plane(bank)
    plane = (bank - mean) @ basis
    scatter_plot(plane / plane.std(0), shipped.gallery_labels, list(FASHION_CLASSES), axes=("PC1", "PC2")).save(
        folder / "plane.png")
    previous = json.loads((run_model / "eval.json").read_text()) if (run_model / "eval.json").is_file() else {}
    labels = ", ".join(f"{f:.0%}" for f in fractions)
    previous["tables"] = {f"Linear probe and k-NN on the Fashion-MNIST test set with {labels} of the training labels "
                          "(class-balanced, seed 0): `python bench/simclr_probe.py RUN/model --fractions "
                          f"{','.join(map(str, fractions))}`": table}
    previous["figures"] = {"nearest.png": "Test images from outside the gallery (first column, one per class) and "
                                          "their 8 nearest gallery images in the representation",
                           "plane.png": f"The {len(bank):,} gallery images' representations on their two principal "
                                        "axes, coloured by class (no label was used in training)"}
    (folder / "eval.json").write_text(json.dumps(previous, indent=2) + "\n")
    write_model_card(folder)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
