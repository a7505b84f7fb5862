"""Write a PNG grid of samples from a generative checkpoint: `python -m core.sample CHECKPOINT --out grid.png`."""
from __future__ import annotations

import argparse
import sys

import torch

from core.config import THREADS_HELP, bounded
from core.hub import CheckpointError, load_model
from core.images import save_grid

MAX_SAMPLES = 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.sample", description=__doc__)
    parser.add_argument("checkpoint", help="checkpoint folder or Hub repo id")
    parser.add_argument("--n", type=bounded(int, 1, MAX_SAMPLES), default=64,
                        help=f"number of samples, 1 to {MAX_SAMPLES}")
    parser.add_argument("--seed", type=bounded(int, 0), default=0)
    parser.add_argument("--out", default="samples.png", help="PNG file to write")
    parser.add_argument("--scale", type=bounded(int, 1, 16), default=2, help="enlarge the grid by this factor, 1 to 16")
    parser.add_argument("--threads", type=bounded(int, 0), default=0, help=THREADS_HELP)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.checkpoint)
    except (CheckpointError, OSError) as exc:
        sys.exit(f"error: {exc}")
    if not hasattr(model, "sample"):
        sys.exit(f"error: {type(model).__name__} is not a generative model; it has nothing to sample")
    print(save_grid(model.sample(args.n, seed=args.seed), args.out, scale=args.scale))


if __name__ == "__main__":
    main()
