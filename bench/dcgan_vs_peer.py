"""DCGAN training images/s: genlab's loop against the pytorch/examples DCGAN loop, at equal architecture.

    python bench/dcgan_vs_peer.py [--steps 60] [--threads 1,2]

The peer is the Radford et al. layout of pytorch/examples (dcgan/main.py) with ngf = ndf = 64, scaled to 32x32
(one transposed conv fewer in G, one strided conv fewer in D), with its training loop: BCE, Adam(2e-4, 0.5), D on
a real and a detached fake batch, then G through D. Ours trains the same two networks, put into genlab's GAN family
(`GAN.generator.net` / `GAN.discriminator.body + score`; D's last 4x4 valid conv is exactly a linear layer on the
flattened 4x4 features), through core.train.train with the BCE loss: the loop's overhead (batch transfer, learning
rate schedule, logging, checkpoint bookkeeping) counts against us. Same batches of Fashion-MNIST padded to 32, batch
64, fp32 and bf16 autocast for both, each configuration side by side in one process. Run on a quiet machine.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from core.config import TrainConfig
from core.data import load_dataset
from core.models.gan import GAN, GANConfig
from core.train import train

NZ, NGF, NDF, BATCH = 100, 64, 64, 64


def radford_generator() -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(NZ, NGF * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 4), nn.ReLU(True),
                         nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
                         nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
                         nn.ConvTranspose2d(NGF, 1, 4, 2, 1, bias=False), nn.Tanh())          # (B, 1, 32, 32)


def radford_features() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 4),
                         nn.LeakyReLU(0.2, True))                                              # (B, 4·NDF, 4, 4)


def peer_images_per_s(batches: list[torch.Tensor], bf16: bool) -> float:
    """pytorch/examples' loop, verbatim in structure (the last D conv with a sigmoid and BCELoss)."""
    torch.manual_seed(0)
    net_g = radford_generator()
    net_d = nn.Sequential(radford_features(), nn.Conv2d(NDF * 4, 1, 4, 1, 0, bias=False), nn.Sigmoid())
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    start = None
    for i, real in enumerate(batches):
        if i == 5:                                   # warm-up steps excluded, as the loop's first log window
            start = time.perf_counter()
        net_d.zero_grad()
        label = torch.full((len(real),), 1.0)
        with autocast():
            err_real = criterion(net_d(real).view(-1).float(), label)
        err_real.backward()
        noise = torch.randn(len(real), NZ, 1, 1)
        with autocast():
            fake = net_g(noise)
            err_fake = criterion(net_d(fake.detach()).view(-1).float(), label.fill_(0.0))
        err_fake.backward()
        opt_d.step()
        net_g.zero_grad()
        with autocast():
            err_g = criterion(net_d(fake).view(-1).float(), label.fill_(1.0))
        err_g.backward()
        opt_g.step()
    return BATCH * (len(batches) - 5) / (time.perf_counter() - start)


def ours_images_per_s(steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = GAN(GANConfig(architecture="dcgan", loss="bce", latent_dim=NZ, image_size=32, ema_decay=0.999))
    model.generator.net = nn.Sequential(nn.Unflatten(1, (NZ, 1, 1)), radford_generator())
    model.discriminator.body = nn.Sequential(radford_features(), nn.Flatten())
    model.discriminator.score = nn.Linear(NDF * 4 * 16, 1, bias=False)
    model.ema = type(model.ema)(model.generator, 0.999)
    model.evaluate = lambda data, yardstick: {}               # time training, not the metrics
    model.eval_images = lambda data: None
    with tempfile.TemporaryDirectory() as runs:
        cfg = TrainConfig(dataset="fashion-mnist", pad_to=32, max_steps=steps, batch_size=BATCH, log_every=5,
                          eval_size=100, checkpoint_every=0, runs_dir=runs, run_name="bench", lr=2e-4,
                          mixed_precision="bf16" if bf16 else "no")
        run_dir = train(model, cfg, "gan")
        windows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    rates = [w["images_per_s"] for w in windows if "images_per_s" in w][1:]   # the first window warms up
    return sum(rates) / len(rates)


def convolutions() -> list[tuple[nn.Module, tuple[int, ...], list[tuple[bool, bool]]]]:
    """Every convolution of one training step of the peer's networks: (layer, input shape, backward passes as
    (input gradient?, weight gradient?)). G runs forward once and backward once (no gradient for z). D runs forward
    three times (real, detached fake, fake for G's step); D's step needs weight gradients for both batches and input
    gradients past its first layer; G's step needs input gradients only (D frozen, as in our loop)."""
    layers = []
    g, d = radford_generator(), radford_features()
    shape = (BATCH, NZ, 1, 1)
    for i, conv in enumerate(m for m in g if isinstance(m, nn.ConvTranspose2d)):
        layers.append((conv, shape, [(i > 0, True)]))
        shape = tuple(conv(torch.zeros(shape)).shape)
    shape = (BATCH, 1, 32, 32)
    for i, conv in enumerate(m for m in d if isinstance(m, nn.Conv2d)):
        layers.append((conv, shape, [(i > 0, True), (i > 0, True), (True, False)]))
        shape = tuple(conv(torch.zeros(shape)).shape)
    return layers


def convolution_floor(bf16: bool, repeats: int = 5) -> float:
    """Seconds of one training step spent in its convolutions alone: each pass run in isolation through the same
    oneDNN kernels, in whichever memory format (NCHW or channels_last) is faster for it, forward passes counted once
    (G) or three times (D), backward passes as the step needs them. No step that keeps the architecture and the
    algorithm can be faster than this on this machine."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    total = 0.0
    for conv, shape, backwards in convolutions():
        transposed = isinstance(conv, nn.ConvTranspose2d)
        best_passes = None
        for memory_format in (torch.contiguous_format, torch.channels_last):
            weight = conv.weight.detach().to(dtype).contiguous(memory_format=memory_format)
            x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
            forward = lambda: torch.ops.aten.convolution(x, weight, None, conv.stride, conv.padding, conv.dilation,
                                                         transposed, conv.output_padding, conv.groups)
            grad = torch.randn_like(forward())
            passes = [forward] * (3 if len(backwards) == 3 else 1) + [
                lambda i=input_grad, w=weight_grad: torch.ops.aten.convolution_backward(
                    grad, x, weight, None, conv.stride, conv.padding, conv.dilation, transposed, conv.output_padding,
                    conv.groups, [i, w, False])
                for input_grad, weight_grad in backwards]
            seconds = []
            for run in passes:
                run()
                seconds.append(min(timed(run) for _ in range(repeats)))
            best_passes = seconds if best_passes is None else [min(a, b) for a, b in zip(best_passes, seconds)]
        total += sum(best_passes)
    return total


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", "train", pad_to=32)
    batches = [b.images for _, b in zip(range(args.steps), data.batches(BATCH, seed=0, epoch=0))]
    print("| threads | precision | genlab loop img/s | pytorch/examples loop img/s | ratio | convolutions alone img/s "
          "| the most any loop can reach |\n|---|---|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for bf16 in (False, True):
            peer = peer_images_per_s(batches, bf16)
            ours = ours_images_per_s(args.steps, bf16)
            ceiling = BATCH / convolution_floor(bf16)
            print(f"| {threads} | {'bf16' if bf16 else 'fp32'} | {ours:.0f} | {peer:.0f} | {ours / peer:.2f}x | "
                  f"{ceiling:.0f} | {ceiling / peer:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
