"""Training throughput of the classifier and the share of step time spent drawing batches.

    python bench/classifier_throughput.py [--steps 200] [--batch-size 128] [--threads 2]

Runs the real loop (core.train.train) on Fashion-MNIST for a fixed number of steps and reads the figures the loop
itself logs (images_per_s, data_share), skipping the first logging window (warm-up). Run on a quiet machine.
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch

from core.config import TrainConfig
from core.models.classifier import Classifier, ClassifierConfig
from core.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--adversarial-eps", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, log_every=args.steps // 4, eval_size=1000,
                          checkpoint_every=0, runs_dir=runs, run_name="bench", threads=args.threads)
        torch.manual_seed(0)
        run_dir = train(Classifier(ClassifierConfig(adversarial_eps=args.adversarial_eps)), cfg, "classifier")
        lines = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        windows = [l for l in lines if "images_per_s" in l][1:]
    images_per_s = sum(w["images_per_s"] for w in windows) / len(windows)
    data_share = sum(w["data_share"] for w in windows) / len(windows)
    print(f"classifier (adversarial_eps={args.adversarial_eps}), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads: {images_per_s:.0f} images/s, "
          f"{100 * data_share:.2f}% of step time drawing batches")


if __name__ == "__main__":
    main()
