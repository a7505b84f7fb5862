"""Training images/s of each convolutional family in NCHW and in channels_last memory format, through the real loop.

    python bench/channels_last.py [--steps 30] [--threads 2] [--precision no,bf16] [--families gan,ddpm]
    python bench/channels_last.py --sampling          # the ddpm's sampling in NCHW and in channels_last

Each family trains with the options of its shipped checkpoint (the ones that shape the network and the batch) for
--steps steps from the same seed, once with its weights in NCHW and once in channels_last (`TrainableModel.
channels_last`, which the loop honours), side by side in one process; images/s is the loop's own figure, averaged
over its log windows after the first. A family whose class sets `channels_last = True` is one where this measured
faster at both precisions. Run on a quiet machine.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from core import train as loop
from core.families import FAMILIES
from core.hub import load_model

OPTIONS = {   # family -> the shipped checkpoint's network and batch options
    "gan": "--architecture dcgan --loss hinge --batch-size 64",
    "classifier": "--batch-size 128",
    "ddpm": "--prediction-type v_prediction --beta-schedule squaredcos_cap_v2 --batch-size 64",
    "vae": "--latent-dim 32 --batch-size 128",
    "cyclegan": "--classes 7,9 --width 16 --residual-blocks 6 --batch-size 16",
    "pix2pix": "--task edges --batch-size 64",
    "simclr": "--batch-size 512 --temperature 0.2 --min-crop 0.6",
    "stylegan": "--batch-size 64",
}


def images_per_s(family: str, steps: int, precision: str, channels_last: bool) -> float:
    cls = FAMILIES[family]
    before = cls.channels_last
    cls.channels_last = channels_last
    try:
        with tempfile.TemporaryDirectory() as runs:
            argv = [family, *OPTIONS[family].split(), "--dataset", "fashion-mnist", "--max-steps", str(steps),
                    "--log-every", "5", "--eval-every", "0", "--eval-size", "100", "--checkpoint-every", "0",
                    "--mixed-precision", precision, "--runs-dir", runs, "--run-name", "bench"]
            run_dir = loop.main(argv)
            windows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    finally:
        cls.channels_last = before
    rates = [w["images_per_s"] for w in windows if "images_per_s" in w][1:]
    return sum(rates) / len(rates)


def sampling_seconds(precision: str, channels_last: bool, repeats: int = 3) -> float:
    """Seconds for 64 images from the shipped ddpm with its own sampler at 20 steps, its U-Net in NCHW or in
    channels_last (`DDPM.channels_last`, which `denoise` honours as the loop does)."""
    model = load_model("ddpm").set_precision(precision)
    model.channels_last = channels_last
    model.sample(64, steps=20)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.sample(64, steps=20)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="no,bf16")
    parser.add_argument("--families", default=",".join(OPTIONS))
    parser.add_argument("--sampling", action="store_true", help="instead: the ddpm's sampling time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.sampling:
        for precision in args.precision.split(","):
            nchw, last = sampling_seconds(precision, False), sampling_seconds(precision, True)
            print(f"| ddpm, 64 images, 20 steps of its own sampler, {'bf16' if precision == 'bf16' else 'fp32'} | "
                  f"{nchw:.2f} s | {last:.2f} s | {last / nchw:.2f}x |", flush=True)
        return
    print("| family | precision | NCHW img/s | channels_last img/s | ratio | shipped setting |\n|---|---|---|---|---|---|")
    for family in args.families.split(","):
        for precision in args.precision.split(","):
            nchw = images_per_s(family, args.steps, precision, False)
            last = images_per_s(family, args.steps, precision, True)
            print(f"| {family} | {'bf16' if precision == 'bf16' else 'fp32'} | {nchw:.0f} | {last:.0f} | "
                  f"{last / nchw:.2f}x | {'channels_last' if FAMILIES[family].channels_last else 'NCHW'} |",
                  flush=True)


if __name__ == "__main__":
    main()
