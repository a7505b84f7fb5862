"""One training run of an R3GAN (R1 + R2 penalties: a double backward) through the real loop, written to RUNS_DIR/NAME.
Run by tests/test_train.py twice over: as each of two nodes (`torchrun --nnodes 2 --node_rank 0|1`, one process
each, gloo over 127.0.0.1), and as one plain process; the global batch is the same, so one process sees the union
of the two nodes' shards at every step."""
import sys

import torch

from core.config import TrainConfig
from core.models.gan import GAN, GANConfig
from core.train import train


def paired_latent(self, real):
    """z as a fixed function of each real image, so a node's shard pairs its images with the same z as the whole
    batch does in one process (the loop's own noise differs per process, by design)."""
    projection = torch.randn(real[0].numel(), self.config.latent_dim, generator=torch.Generator().manual_seed(7))
    return real.flatten(1) @ projection.to(real.device) / real[0].numel() ** 0.5


GAN.training_latent = paired_latent              # in this worker process only
torch.manual_seed(0)
model = GAN(GANConfig(architecture="mlp", loss="r3gan", r_gamma=1.0, image_size=8, latent_dim=16, beta1=0.0, beta2=0.99))
model.evaluate = lambda data, yardstick: {}     # the weights are the point, not the metrics
train(model, TrainConfig(dataset="digits", batch_size=32, max_steps=6, log_every=3, checkpoint_every=3, eval_size=32,
                         runs_dir=sys.argv[1], run_name=sys.argv[2], threads=1, cpu=True, lr=1e-3), "gan")
