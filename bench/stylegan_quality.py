"""StyleGAN checkpoints against GAN checkpoints (the DCGAN) on the same yardstick, and the smoothness of latent paths.

    python bench/stylegan_quality.py checkpoints/stylegan checkpoints/dcgan [RUN/checkpoints/step-N ...] [--n 10000]
    python bench/stylegan_quality.py checkpoints/stylegan --psi 1,0.7,0.5      # the truncation trade-off
    python bench/stylegan_quality.py checkpoints/stylegan --figures checkpoints/stylegan --n 0    # the card's pictures

Quality: FID, precision, recall, off-manifold share and class coverage of n samples (seed 0) against the Fashion-MNIST
test set (core.metrics, the classifier's features at every depth), with each model's training minutes from its
folder (training.json, or the run's metrics.jsonl for a training checkpoint).

Smoothness (a perceptual path length, Karras et al. 2019, Sec. 4.2, with the metric classifier's features φ in
place of VGG/LPIPS): for 2000 pairs of latents and t ~ U(0, 1),
    PPL = E[ ‖φ(g(path(t))) − φ(g(path(t + ε)))‖² / ε² ],   ε = 1e-2,
with path a straight line in W (StyleGAN), or a slerp in Z (StyleGAN's z before the mapping network, and the
DCGAN's z); as in the paper, the top and bottom 1% are dropped before the mean. Lower is smoother: an equal step along
the path changes the image by a more even amount. Noise inputs are fixed along each path.

--figures FOLDER writes the first StyleGAN's pictures: mixing.png (style mixing at crossovers 1, 3 and 5),
truncation.png (rows ψ = 1, 0.7, 0.5, 0, -0.5 for the same 10 seeds), noise.png (one w with 8 noise draws, the
image without noise and the per-pixel spread) and paths.png (4 paths: a line in W above a slerp in Z).
"""
import argparse
import json
from pathlib import Path

import torch

from core.data import load_dataset
from core.evaluate import metric_yardstick
from core.hub import load_model
from core.images import save_grid
from core.models.gan import GAN
from core.models.stylegan import StyleGAN
from core.nn import slerp

EPSILON = 1e-2
PAIRS = 2000


def minutes(folder: Path) -> str:
    if (folder / "training.json").is_file():
        return f"{json.loads((folder / 'training.json').read_text())['seconds'] / 60:.0f}"
    run = folder.parent.parent                                       # RUN/checkpoints/step-N: the run's own log
    step = int(folder.name.split("-")[-1])
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    before = [entry for entry in logged if entry["step"] <= step and "elapsed" in entry]
    return f"{before[-1]['elapsed'] / 60:.0f}" if before else "-"


def trimmed_mean(values: torch.Tensor) -> float:
    low, high = values.quantile(0.01), values.quantile(0.99)
    return float(values[(values >= low) & (values <= high)].mean())


@torch.no_grad()
def path_length(model, yardstick, space: str) -> float:
    generator = torch.Generator().manual_seed(1)
    z0, z1 = (torch.randn(PAIRS, model.config.latent_dim, generator=generator) for _ in range(2))
    t = torch.rand(PAIRS, generator=generator) * (1 - EPSILON)                     # one point on each path
    if isinstance(model, StyleGAN):
        if space == "w":
            w0, w1 = model.mapped(z0), model.mapped(z1)
            ends = [w0 + tt[:, None] * (w1 - w0) for tt in (t, t + EPSILON)]
        else:
            ends = [model.mapped(slerp(z0, z1, tt)) for tt in (t, t + EPSILON)]
        images = [model.synthesize(w, "random", noise_seed=2) for w in ends]
    else:
        images = [model.generate(slerp(z0, z1, tt)) for tt in (t, t + EPSILON)]
    a, b = (yardstick.features(x)[0] for x in images)
    return trimmed_mean((a - b).square().sum(1) / EPSILON ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--psi", default="1", help="truncation values for StyleGAN models, comma separated")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--figures", metavar="FOLDER", help="write the first StyleGAN's pictures there")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.figures:
        write_figures(load_model(args.models[0]), Path(args.figures))
    if args.n == 0:
        return
    data = load_dataset("fashion-mnist", "test")
    yardstick = metric_yardstick()
    columns = ("model", "ψ", "training minutes", "FID", "precision", "recall", "off-manifold", "classes covered",
               "smallest class share", "PPL in W", "PPL in Z")
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|", flush=True)
    for name in args.models:
        folder = Path(name)
        model = load_model(folder)
        for psi in ([float(p) for p in args.psi.split(",")] if isinstance(model, StyleGAN) else [1.0]):
            if isinstance(model, StyleGAN):
                samples = model.sample(args.n, seed=0, psi=psi)
                ppl = [f"{path_length(model, yardstick, s):.0f}" if psi == 1 else "-" for s in ("w", "z")]
            elif isinstance(model, GAN):
                samples, ppl = model.sample(args.n, seed=0), ["-", f"{path_length(model, yardstick, 'z'):.0f}"]
            else:
                raise SystemExit(f"{name} is neither a StyleGAN nor a GAN")
            s = yardstick.score(samples, data=data)
            step = folder.name.startswith("step-")                  # a training checkpoint: name it by its run
            label = f"{folder.parent.parent.name}/{folder.name}" if step else folder.name
            print(f"| {label} | {psi:g} | {minutes(folder)} | {s['fid']:.2f} | {s['precision']:.3f} | "
                  f"{s['recall']:.3f} | {s['off_manifold']:.2%} | {s['classes_covered']} | "
                  f"{s['smallest_class_share']:.1%} | {' | '.join(ppl)} |", flush=True)


def write_figures(model: StyleGAN, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sources_a, sources_b = [10, 11, 12, 13], [20, 21, 22, 23, 24]
    mixes = [model.style_mix(sources_a, sources_b, crossover) for crossover in (1, 3, 5)]
    save_grid(torch.cat(mixes), folder / "mixing.png", nrow=len(sources_b) + 1, scale=2)
    rows = [model.sample(10, seed=0, psi=psi) for psi in (1.0, 0.7, 0.5, 0.0, -0.5)]
    save_grid(torch.cat(rows), folder / "truncation.png", nrow=10, scale=2)
    variants, quiet, spread = model.noise_variants(seed=3)
    save_grid(torch.cat([variants, quiet, spread]), folder / "noise.png", nrow=10, scale=2)
    paths = [model.interpolate(a, b, 10, space) for a, b in ((1, 2), (3, 4)) for space in ("w", "z")]
    save_grid(torch.cat(paths), folder / "paths.png", nrow=10, scale=2)
    print(f"wrote {folder}/mixing.png, truncation.png, noise.png, paths.png")


if __name__ == "__main__":
    main()
