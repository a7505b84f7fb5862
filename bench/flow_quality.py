"""Test bits/dim, the temperature table, sample grids, the sampling time and an interpolation of a normalizing-flow
checkpoint, for its model card (the judge-style figures at the default T come from `python -m core.evaluate`).

    python bench/flow_quality.py checkpoints/glow --from-run ~/genlab-runs/flow/glow-k8-h128 --write
    python -m core.evaluate checkpoints/glow --write --worst 64 --out checkpoints/glow

--from-run first writes the run's newest checkpoint (checkpoints/latest.json; --step N: its kept checkpoint of step N)
into the folder as a Hub folder: weights, config.json and training.json (steps, training seconds, hardware, median
images/s and the command that started the run, from the run's config.json and metrics.jsonl); a run that is still
training can be exported.
Bits/dim: Flow.bits_per_dim on every test image, one seeded draw of uniform dequantization noise each, with the
standard error of the mean over images. Temperatures: FID / precision / recall / off-manifold share / classes of
--samples samples at each T on genlab's metric classifier, and how many decoded to inf or NaN (Flow.to_images shows
them as black or white pixels). --write stores the figures in eval.json and rewrites
the card; without it the figures are printed only.
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
from core.hub import load_model, metric_yardstick, write_model_card  # noqa: E402
from core.images import save_grid  # noqa: E402

TEMPERATURES = (1.0, 0.85, 0.7)


def bits_per_dim(model, test) -> tuple[float, float]:
    """Mean test bits/dim and its standard error over images (seeded dequantization noise)."""
    generator, values = torch.Generator().manual_seed(0), []
    with torch.no_grad():
        for batch in test.batches(500, seed=0, epoch=0, drop_last=False):
            values.append(model.bits_per_dim(batch.images, None, generator))
    values = torch.cat(values).double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def draws(model, n: int, temperature: float, seed: int = 0, chunk: int = 500) -> tuple[torch.Tensor, int]:
    """model.sample(n, temperature, seed) (the same generator over the same chunks), and how many of its images
    decoded to a non-finite value before to_images turned them into black or white pixels."""
    generator, images, overflowed = torch.Generator().manual_seed(seed), [], 0
    with torch.no_grad():
        for start in range(0, n, chunk):
            y = model.decode([None] * len(model.levels), None, temperature, generator, n=min(chunk, n - start))
            overflowed += int((~torch.isfinite(y)).flatten(1).any(1).sum())
            images.append(model.to_images(y))
    return torch.cat(images), overflowed


def temperature_table(model, test, yardstick, n: int) -> tuple[str, dict[float, dict]]:
    rows = ["| T | FID | precision | recall | off-manifold | classes | overflowed decodes |", "|---" * 7 + "|"]
    scores = {}
    for t in TEMPERATURES:
        images, overflowed = draws(model, n, t)
        s = scores[t] = yardstick.score(images, data=test)
        rows.append(f"| {t:g} | {s['fid']:.1f} | {s['precision']:.3f} | {s['recall']:.3f} | {s['off_manifold']:.3f} "
                    f"| {s['classes_covered']} | {overflowed} of {n:,} |")
        print(rows[-1], flush=True)
    return "\n".join(rows), scores


def write_figures(model, test, folder: Path) -> dict[str, str]:
    """Sample grids at each T (the same seed: the same latent noise, scaled), and an interpolation strip."""
    figures = {}
    for t in TEMPERATURES:
        name = f"samples_t{t:g}.png"
        save_grid(model.sample(64, t, seed=1234), folder / name, nrow=8, scale=2)
        figures[name] = f"64 samples at T = {t:g} (seed 1234: the same noise at every T, scaled)"
    pairs = [(0, 1), (7, 9), (2, 8)]                                   # (class a, class b) of three test pairs
    first = {int(c): int(torch.nonzero(test.labels == c)[0]) for c in range(10)}
    rows = [model.interpolate(test.batch(torch.tensor([first[a]])).images[0],
                              test.batch(torch.tensor([first[b]])).images[0], 10) for a, b in pairs]
    save_grid(torch.cat(rows), folder / "interpolation.png", nrow=10, scale=2)
    figures["interpolation.png"] = ("Straight paths between the latents of two test images (the first t-shirt/trouser, "
                                    "sneaker/ankle boot, pullover/bag): the ends are the images themselves")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--from-run", type=Path, help="first export this run's newest checkpoint into the folder")
    parser.add_argument("--step", type=int, help="with --from-run: export its kept checkpoint of this step instead")
    parser.add_argument("--samples", type=int, default=10_000, help="samples per temperature")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_run:
        export(args.from_run, args.checkpoint, args.step)
    model, test = load_model(args.checkpoint).eval(), load_dataset("fashion-mnist", "test")
    bpd, error = bits_per_dim(model, test)
    seconds = sampling_seconds(model, repeats=5)
    print(f"test bits/dim {bpd:.4f} ± {error:.4f} (standard error, {len(test)} images); "
          f"64 samples in {seconds:.2f} s ({args.threads} thread)", flush=True)
    table, _ = temperature_table(model, test, metric_yardstick(), args.samples)
    if not args.write:
        return
    folder = args.checkpoint
    save_grid(model.eval_images(test), folder / "samples.png", nrow=8, scale=2)
    figures = write_figures(model, test, folder)
    figures["worst.png"] = ("The 64 least realistic of the 10k evaluation samples at the default T (realism, "
                            "core.metrics; least first): what the off-manifold share counts")
    path = folder / "eval.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    title = f"Sample quality against the temperature T ({args.samples:,} samples each, seed 0)"
    save_json({**previous, "bits_per_dim": bpd, "bits_per_dim_stderr": error, "sampling_seconds_64": seconds,
               "tables": {**previous.get("tables", {}), title: table},
               "figures": {**previous.get("figures", {}), **figures}}, path)
    write_model_card(folder)


if __name__ == "__main__":
    main()
