"""DCGAN speed on this machine: training images/s and data-loading share at batch 64 and 128, time to generate
64 images, and FLOPs per training step against the measured matmul peak (the fraction of peak we reach).

    python bench/gan_throughput.py [--steps 100] [--loss bce]

Training figures come from the real loop (core.train.train, as in bench/classifier_throughput.py); FLOPs are counted
by torch.utils.flop_counter on one training step (forward and backward of both networks). Run on a quiet machine.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.config import TrainConfig
from core.data import Batch
from core.models.gan import GAN, GANConfig
from core.train import train


def matmul_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size ** 3 * count / (time.perf_counter() - start) / 1e9


def training_speed(config: GANConfig, batch_size: int, steps: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as runs:
        cfg = TrainConfig(max_steps=steps, batch_size=batch_size, log_every=steps // 4, eval_size=100,
                          checkpoint_every=0, runs_dir=runs, run_name="bench", lr=2e-4)
        torch.manual_seed(0)
        model = GAN(config)
        model.evaluate = lambda data, yardstick: {}           # time training, not the metrics
        run_dir = train(model, cfg, "gan")
        windows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        windows = [w for w in windows if "images_per_s" in w][1:]
    return (sum(w["images_per_s"] for w in windows) / len(windows),
            sum(w["data_share"] for w in windows) / len(windows))


def step_flops(config: GANConfig, batch_size: int) -> int:
    model = GAN(config)
    model.configure_optimizers(TrainConfig(lr=2e-4))
    batch = Batch(torch.rand(batch_size, 1, config.image_size, config.image_size) * 2 - 1,
                  torch.arange(batch_size) % 10)
    with FlopCounterMode(display=False) as counter:
        model.training_step(batch, 0)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--loss", default="bce")
    args = parser.parse_args()
    config = GANConfig(architecture="dcgan", loss=args.loss)
    peak = matmul_gflops()
    print(f"matmul 1024x1024 float32: {peak:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    for batch_size in (64, 128):
        images_per_s, data_share = training_speed(config, batch_size, args.steps)
        flops = step_flops(config, batch_size)
        achieved = flops * images_per_s / batch_size / 1e9
        print(f"DCGAN ({args.loss}) batch {batch_size}: {images_per_s:.0f} images/s, {100 * data_share:.2f}% of step "
              f"time drawing batches, {flops / 1e9:.2f} GFLOP/step -> {achieved:.1f} GFLOP/s = "
              f"{100 * achieved / peak:.0f}% of the matmul peak")
    model = GAN(config).eval()
    model.sample(64, seed=0)
    start = time.perf_counter()
    for seed in range(5):
        model.sample(64, seed=seed)
    print(f"generate 64 images: {1000 * (time.perf_counter() - start) / 5:.1f} ms")


if __name__ == "__main__":
    main()
