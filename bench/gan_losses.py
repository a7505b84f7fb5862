"""Which adversarial loss trains the DCGAN best on this budget? Same architecture, data, steps and seed for each
loss (each with its paper's Adam betas), scored by FID/KID/precision/recall/coverage of 2000 samples.

    python bench/gan_losses.py [--steps 1500] [--losses bce,hinge,r3gan,wgan-gp] [--threads 1]

A short-budget comparison: it ranks the losses at `--steps`, not at convergence. Writes runs under runs/.
"""
import argparse
import json
from pathlib import Path

import torch

from core.config import TrainConfig
from core.models.gan import GAN, GANConfig
from core.train import train

SETTINGS = {   # loss -> GANConfig overrides (Adam betas and critic steps as in each loss's paper) and learning rate
    "bce": ({"beta1": 0.5, "beta2": 0.999}, 2e-4),          # Radford et al. 2015
    "hinge": ({"beta1": 0.5, "beta2": 0.999}, 2e-4),
    "r3gan": ({"beta1": 0.0, "beta2": 0.99, "r_gamma": 1.0}, 2e-4),   # Huang et al. 2024
    "wgan-gp": ({"beta1": 0.0, "beta2": 0.9, "critic_steps": 5}, 1e-4),   # Gulrajani et al. 2017, Alg. 1
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--losses", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    rows = ["| loss | FID | KID | precision | recall | classes covered | KL to uniform |", "|---" * 7 + "|"]
    for loss in args.losses.split(","):
        overrides, lr = SETTINGS[loss]
        cfg = TrainConfig(max_steps=args.steps, batch_size=64, lr=lr, eval_size=2000, checkpoint_every=0,
                          run_name=f"losses-{loss}", threads=args.threads)
        torch.manual_seed(0)
        run_dir = train(GAN(GANConfig(architecture="dcgan", loss=loss, **overrides)), cfg, "gan")
        final = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][-1]
        m = {k[5:]: v for k, v in final.items() if k.startswith("eval/")}
        rows.append(f"| {loss} | {m['fid']:.2f} | {m['kid']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                    f"{m['classes_covered']} | {m['kl_to_uniform']:.3f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
