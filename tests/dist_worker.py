"""Run by test_train.py as `accelerate launch --multi_gpu --num_processes 2 tests/dist_worker.py RUNS_DIR`."""
import sys

import torch

from core.config import TrainConfig
from core.models.classifier import Classifier
from core.train import train

torch.manual_seed(0)
model = Classifier()
train(model, TrainConfig(dataset="digits", batch_size=32, max_steps=8, log_every=4, checkpoint_every=4, eval_size=64,
                         runs_dir=sys.argv[1], run_name="dist", threads=1), "classifier")
checksum = sum(p.double().sum().item() for p in model.parameters())
# one write of the whole line (print writes the newline separately, and unbuffered lines of two ranks interleave)
sys.stdout.write(f"rank {model.accelerator.process_index} of {model.accelerator.num_processes} "
                 f"checksum {checksum:.15e}\n")
sys.stdout.flush()
