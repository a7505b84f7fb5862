"""Write a PNG grid of samples from a generative checkpoint: `python -m core.sample CHECKPOINT --out grid.png`."""
from __future__ import annotations

import argparse
import sys

from core.hub import CheckpointError, load_model
from core.images import save_grid

MAX_SAMPLES = 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.sample", description=__doc__)
    parser.add_argument("checkpoint", help="checkpoint folder or Hub repo id")
    parser.add_argument("--n", type=int, default=64, help=f"number of samples, 1 to {MAX_SAMPLES}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png", help="PNG file to write")
    parser.add_argument("--scale", type=int, default=2, help="enlarge the grid by this factor")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= MAX_SAMPLES:
        parser.error(f"--n must be between 1 and {MAX_SAMPLES}, got {args.n}")
    try:
        model = load_model(args.checkpoint)
    except (CheckpointError, OSError) as exc:
        sys.exit(f"error: {exc}")
    if not hasattr(model, "sample"):
        sys.exit(f"error: {type(model).__name__} is not a generative model; it has nothing to sample")
    print(save_grid(model.sample(args.n, seed=args.seed), args.out, scale=args.scale))


if __name__ == "__main__":
    main()
