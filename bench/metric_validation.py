"""Does the yardstick see what a person sees? Degraded real images scored against the real floor.

    python bench/metric_validation.py [--seeds 0,1] [--n 10000]
    python bench/metric_validation.py --speed          # seconds to score 10k samples on one thread

Each set holds N training images (never the test images the metrics compare against), degraded one way:
Gaussian noise (sd 0.05 and 0.2 of the pixel range), Gaussian blur (σ 0.7 and 1.5 pixels), speckle (5% of pixels
set to black or white), contrast saturation (every pixel pushed to black or white), a single class, two classes,
uniform noise, and the undegraded floor. Each is scored on the "stages" features (core.metrics) and on the old
penultimate-only features, with the test set as the reference. The checks the yardstick must pass are printed
under the table: every degradation scores worse than the floor on FID and precision, uniform noise has the worst
FID, speckle and saturation lose at least 0.2 precision, and the ranking by FID is the same for every seed.
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

from core.data import load_dataset
from core.evaluate import metric_yardstick

COLUMNS = ("fid", "precision", "recall", "off_manifold", "fid_penultimate", "precision_penultimate")


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur with replicated borders."""
    r = math.ceil(3 * sigma)
    kernel = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))


def degraded_sets(train, n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = train.batch(torch.randperm(len(train), generator=g)[:n]).images
    noise = lambda sd: (real + 2 * sd * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    speckled = torch.rand(real.shape, generator=g) < 0.05
    extreme = (torch.rand(real.shape, generator=g) < 0.5).float() * 2 - 1
    of_class = lambda k: (train.labels == k).nonzero().squeeze(1)
    pick = lambda index, m: index[torch.randint(len(index), (m,), generator=g)]
    return {"real floor": real, "noise sd 0.05": noise(0.05), "noise sd 0.2": noise(0.2), "blur σ 0.7": blur(real, 0.7),
            "blur σ 1.5": blur(real, 1.5), "speckle 5%": torch.where(speckled, extreme, real),
            "saturation": torch.where(real > 0, 1.0, -1.0), "one class": train.batch(pick(of_class(0), n)).images,
            "two classes": train.batch(torch.cat([pick(of_class(0), n // 2), pick(of_class(1), n - n // 2)])).images,
            "uniform noise": torch.rand(real.shape, generator=g) * 2 - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--speed", action="store_true")
    args = parser.parse_args()
    yardstick, test = metric_yardstick(), load_dataset("fashion-mnist", "test")
    train = load_dataset("fashion-mnist", "train")
    if args.speed:
        torch.set_num_threads(1)
        yardstick.reference_for(test)                       # the reference is computed once per process
        images = degraded_sets(train, args.n, 0)["speckle 5%"]
        began = time.perf_counter()
        scores = yardstick.score(images, data=test)
        print(f"{args.n} images: features, FID, KID, precision/recall, realism and copies (both feature sets) in "
              f"{time.perf_counter() - began:.1f} s on 1 thread; copies {scores['copies']:.4f}")
        return
    rankings = []
    for seed in (int(s) for s in args.seeds.split(",")):
        print(f"\n### seed {seed}, {args.n} images per set\n\n| set | " + " | ".join(COLUMNS) + " |\n" +
              "|---" * (len(COLUMNS) + 1) + "|")
        rows = {}
        for name, images in degraded_sets(train, args.n, seed).items():
            rows[name] = yardstick.score(images, data=test)
            print(f"| {name} | " + " | ".join(f"{rows[name][c]:.4g}" for c in COLUMNS) + " |", flush=True)
        floor = rows.pop("real floor")
        worse = all(r["fid"] > floor["fid"] and r["precision"] < floor["precision"] for r in rows.values())
        worst_fid = max(rows, key=lambda k: rows[k]["fid"])
        drops = {k: floor["precision"] - rows[k]["precision"] for k in ("speckle 5%", "saturation")}
        print(f"\nevery degradation worse than the floor on FID and precision: {worse}; worst FID: {worst_fid}; "
              f"precision lost by speckle {drops['speckle 5%']:.3f}, saturation {drops['saturation']:.3f}")
        rankings.append(sorted(rows, key=lambda k: rows[k]["fid"]))
    print(f"\nranking by FID the same for every seed: {all(r == rankings[0] for r in rankings)} ({rankings[0]})")


if __name__ == "__main__":
    main()
